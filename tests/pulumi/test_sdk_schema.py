"""The typed SDK `pulumi_vce` never drifts from the provider's schema: every resource, function
and type with its token, its inputs and outputs under the schema's names and types, what is
required, the descriptions; and the generated files are what `tools.pulumi_sdk` gives today."""

from __future__ import annotations

import ast
import asyncio
import collections.abc
import inspect
import json
import subprocess
import tomllib
import typing
from pathlib import Path

import pulumi
import pulumi_vce as vce
import pytest
from pulumi import _types  # the runtime's own reading of getter names and type hints
from pulumi_resource_vce.schema import SCHEMA_FILE

from tests.pulumi.sdk_mocks import run_program
from tools import pulumi_sdk

SCHEMA = json.loads(SCHEMA_FILE.read_text())
RESOURCES = sorted(SCHEMA["resources"])
FUNCTIONS = sorted(SCHEMA["functions"])
TYPES = sorted(SCHEMA["types"])
NONE = type(None)
SCALARS = {"string": str, "integer": int, "number": float, "boolean": bool}


def short(token: str) -> str:
    return token.rsplit(":", 1)[1]


def words(text: str | None) -> str:
    return " ".join((text or "").split())


def is_optional(hint: object) -> bool:
    return NONE in typing.get_args(hint)


def required_hint(hint: object) -> object:
    """`X | None` -> `X`."""
    if not is_optional(hint):
        return hint
    (inner,) = (arg for arg in typing.get_args(hint) if arg is not NONE)
    return inner


def holds(hint: object, spec: dict) -> bool:
    """Whether a plain output hint is the schema type `spec`: scalars, output classes, and
    sequences and mappings of them."""
    if "$ref" in spec:
        return hint is getattr(vce.outputs, short(spec["$ref"]))
    kind = spec["type"]
    if kind in SCALARS:
        return hint is SCALARS[kind]
    args = typing.get_args(hint)
    if kind == "array":
        return typing.get_origin(hint) is collections.abc.Sequence and holds(args[0], spec["items"])
    return (
        typing.get_origin(hint) is collections.abc.Mapping
        and args[0] is str
        and holds(args[1], spec["additionalProperties"])
    )


def type_refs(spec: dict) -> set[str]:
    """The type tokens a property spec holds, directly or inside arrays and maps."""
    if "$ref" in spec:
        return {spec["$ref"].removeprefix("#/types/")}
    inner = spec.get("items") or spec.get("additionalProperties")
    return type_refs(inner) if isinstance(inner, dict) else set()


def reachable(properties: list[dict]) -> set[str]:
    """The types the properties hold, and the types those hold."""
    found: set[str] = set()
    pending = [ref for spec in properties for ref in type_refs(spec)]
    while pending:
        token = pending.pop()
        if token not in found:
            found.add(token)
            pending += [
                r for s in SCHEMA["types"][token]["properties"].values() for r in type_refs(s)
            ]
    return found


INPUT_TYPES = reachable(
    [
        *(s for r in SCHEMA["resources"].values() for s in r["inputProperties"].values()),
        *SCHEMA["provider"]["inputProperties"].values(),
        *(s for f in SCHEMA["functions"].values() for s in f["inputs"]["properties"].values()),
    ]
)


def getters(cls: type) -> dict[str, property]:
    """The class's properties by schema name, as pulumi.getter declares them."""
    return {pulumi_name: prop for _python, pulumi_name, prop in _types._py_properties(cls)}


def example(spec: dict) -> object:
    """A value of the schema type `spec`, with the required fields of objects filled in."""
    if "$ref" in spec:
        token = spec["$ref"].removeprefix("#/types/")
        fields = SCHEMA["types"][token]["properties"]
        required = SCHEMA["types"][token].get("required", [])
        args = getattr(vce, f"{short(token)}Args")
        return args(**{pulumi_sdk.snake(n): example(fields[n]) for n in required})
    kind = spec["type"]
    return {"string": "x", "integer": 1, "number": 1.5, "boolean": True}.get(kind) or (
        [] if kind == "array" else {}
    )


@pytest.mark.parametrize("token", RESOURCES)
def test_resource_args_are_the_schema_inputs(token):
    spec = SCHEMA["resources"][token]
    args = getattr(vce, f"{short(token)}Args")
    props = getters(args)
    assert set(props) == set(spec["inputProperties"])
    for name, prop in props.items():
        schema_prop = spec["inputProperties"][name]
        assert words(schema_prop["description"]) in words(prop.__doc__), name
        assert is_optional(prop.fget.__annotations__["return"]) == (
            name not in spec["requiredInputs"]
        ), name


@pytest.mark.parametrize("token", RESOURCES)
def test_required_inputs_are_required(token):
    spec = SCHEMA["resources"][token]
    args = getattr(vce, f"{short(token)}Args")
    params = inspect.signature(args.__init__).parameters
    required = {
        n for n, p in params.items() if n != "self" and p.default is inspect.Parameter.empty
    }
    assert required == {pulumi_sdk.snake(n) for n in spec["requiredInputs"]}
    with pytest.raises(TypeError):
        args()


@pytest.mark.parametrize("token", RESOURCES)
def test_resource_outputs_cover_the_schema_properties(token):
    spec = SCHEMA["resources"][token]
    cls = getattr(vce, short(token))
    assert issubclass(cls, pulumi.CustomResource)
    props = getters(cls)
    assert set(props) == set(spec["properties"])
    for name, prop in props.items():
        hint = prop.fget.__annotations__["return"]
        assert typing.get_origin(hint) is pulumi.Output, name
        (inner,) = typing.get_args(hint)
        assert is_optional(inner) == (name not in spec["required"]), name
        assert words(spec["properties"][name]["description"]) in words(prop.__doc__), name
    assert words(spec["description"]) in words(cls.__doc__)


def test_each_resource_registers_under_its_token():
    def program():
        for token in RESOURCES:
            spec = SCHEMA["resources"][token]
            inputs = spec["inputProperties"]
            getattr(vce, short(token))(
                short(token).lower(),
                **{pulumi_sdk.snake(n): example(inputs[n]) for n in spec["requiredInputs"]},
            )

    run = run_program(program)
    assert {r.name: r.token for r in run.registrations.values()} == {
        short(t).lower(): t for t in RESOURCES
    }


@pytest.mark.parametrize("token", TYPES)
def test_types_are_the_schema_types_where_programs_meet_them(token):
    """Every type comes back as an output class; those a program passes in have Args too."""
    spec = SCHEMA["types"][token]
    required = set(spec.get("required", []))
    classes = [getattr(vce.outputs, short(token))]
    if token in INPUT_TYPES:
        classes.append(getattr(vce, f"{short(token)}Args"))
        params = inspect.signature(classes[-1].__init__).parameters
        assert {n for n, p in params.items() if p.default is inspect.Parameter.empty} - {
            "self"
        } == {pulumi_sdk.snake(n) for n in required}
    else:
        assert not hasattr(vce, f"{short(token)}Args"), "only outputs hold it"
    for cls in classes:
        props = getters(cls)
        assert set(props) == set(spec["properties"]), cls
        for name, prop in props.items():
            hint = prop.fget.__annotations__["return"]
            assert is_optional(hint) == (name not in required), (cls, name)
            assert words(spec["properties"][name]["description"]) in words(prop.__doc__)
    outputs = getters(classes[0])
    for name, prop in outputs.items():
        hint = required_hint(prop.fget.__annotations__["return"])
        assert holds(hint, spec["properties"][name]), (token, name, hint)


@pytest.mark.parametrize("token", FUNCTIONS)
def test_functions_take_the_schema_inputs(token):
    spec = SCHEMA["functions"][token]
    inputs = spec["inputs"]["properties"]
    required = set(spec["inputs"]["required"])
    python = pulumi_sdk.snake(short(token))
    for function in (getattr(vce, python), getattr(vce, f"{python}_output")):
        params = inspect.signature(function).parameters
        assert list(params)[-1] == "opts"
        assert set(params) - {"opts"} == {pulumi_sdk.snake(n) for n in inputs}, function
        assert {n for n, p in params.items() if p.default is inspect.Parameter.empty} == {
            pulumi_sdk.snake(n) for n in required
        }, function
        assert words(spec["description"]) in words(function.__doc__)
        for name, prop in inputs.items():
            assert words(prop["description"]) in words(function.__doc__), name


@pytest.mark.parametrize("token", FUNCTIONS)
def test_function_results_are_the_schema_outputs(token):
    spec = SCHEMA["functions"][token]["outputs"]
    name = short(token)
    result = getattr(vce, f"{name[0].upper()}{name[1:]}Result")
    python = pulumi_sdk.snake(name)
    props = getters(result)
    assert set(props) == set(spec["properties"])
    for field, prop in props.items():
        hint = prop.fget.__annotations__["return"]
        assert is_optional(hint) == (field not in spec["required"]), field
        assert holds(required_hint(hint), spec["properties"][field]), (field, hint)
        assert words(spec["properties"][field]["description"]) in words(prop.__doc__)
    plain = inspect.signature(getattr(vce, python)).return_annotation
    assert issubclass(plain, result) and plain.__name__ == f"Awaitable{result.__name__}"
    output = inspect.signature(getattr(vce, f"{python}_output")).return_annotation
    assert output == pulumi.Output[result]


@pytest.mark.parametrize("token", FUNCTIONS)
def test_a_plain_result_is_awaitable_as_itself(token):
    """Programs written for Pulumi's generated SDKs `await` a function's plain form."""
    name = short(token)
    awaitable = getattr(vce, f"Awaitable{name[0].upper()}{name[1:]}Result")
    values = {pulumi_sdk.snake(n): [] for n in SCHEMA["functions"][token]["outputs"]["properties"]}

    async def awaiting() -> object:
        return await awaitable(**values)

    result = asyncio.run(awaiting())
    # The plain result class itself, not the awaitable subclass that made it.
    assert result.__class__ is awaitable.__mro__[1]
    assert vars(result) == vars(awaitable(**values))


def test_each_function_invokes_its_token():
    def program():
        for token in FUNCTIONS:
            spec = SCHEMA["functions"][token]["inputs"]
            arguments = {pulumi_sdk.snake(n): "x" for n in spec["properties"]}
            getattr(vce, pulumi_sdk.snake(short(token)))(**arguments)

    run = run_program(program)
    assert [(i.token, sorted(i.args)) for i in run.invokes] == [
        (t, sorted(SCHEMA["functions"][t]["inputs"]["properties"])) for t in FUNCTIONS
    ]
    assert {i.version for i in run.invokes} == {SCHEMA["version"]}


def test_the_provider_takes_the_schema_configuration():
    spec = SCHEMA["provider"]
    assert issubclass(vce.Provider, pulumi.ProviderResource)
    props = getters(vce.ProviderArgs)
    assert set(props) == set(spec["inputProperties"])
    assert set(spec["inputProperties"]) == set(SCHEMA["config"]["variables"])
    params = inspect.signature(vce.ProviderArgs.__init__).parameters
    assert {n for n, p in params.items() if p.default is inspect.Parameter.empty} - {"self"} == {
        pulumi_sdk.snake(n) for n in spec["requiredInputs"]
    }
    for name in SCHEMA["config"]["variables"]:
        assert callable(getattr(vce.config, pulumi_sdk.snake(name))), name


def test_the_package_exports_every_class_and_function():
    expected = {short(t) for t in RESOURCES} | {f"{short(t)}Args" for t in RESOURCES}
    expected |= {f"{short(t)}Args" for t in INPUT_TYPES} | {"Provider", "ProviderArgs"}
    for token in FUNCTIONS:
        name = short(token)
        result = f"{name[0].upper()}{name[1:]}Result"
        python = pulumi_sdk.snake(name)
        expected |= {result, f"Awaitable{result}", python, f"{python}_output"}
    assert {short(t) for t in TYPES} <= set(dir(vce.outputs))
    assert expected <= set(vce.__all__)
    assert vce.__version__ == SCHEMA["version"]
    distribution = tomllib.loads((pulumi_sdk.SDK / "pyproject.toml").read_text())["project"]
    assert distribution["version"] == SCHEMA["version"]


def test_generated_files_say_so():
    package = Path(vce.__file__).parent
    for path in package.glob("*.py"):
        assert "Generated by tools/pulumi_sdk.py" in path.read_text().splitlines()[2], path.name
    assert (package / "py.typed").is_file()
    assert json.loads((package / "pulumi-plugin.json").read_text()) == {
        "resource": True,
        "name": SCHEMA["name"],
        "version": SCHEMA["version"],
    }


def test_the_files_on_disk_are_what_the_schema_gives(capsys):
    assert pulumi_sdk.main(["--check"]) == 0, capsys.readouterr().err


def test_check_fails_on_drift_and_regenerating_fixes_it(tmp_path, monkeypatch, capsys):
    schema = json.loads(SCHEMA_FILE.read_text())
    schema["resources"]["vce:index:Disk"]["inputProperties"]["label"] = {
        "type": "string",
        "description": "A label.",
    }
    changed = tmp_path / "schema.json"
    changed.write_text(json.dumps(schema))
    sdk = tmp_path / "sdk"
    monkeypatch.setattr(pulumi_sdk, "SDK", sdk)

    assert pulumi_sdk.main([]) == 0
    assert pulumi_sdk.main(["--check"]) == 0
    (sdk / "pulumi_vce" / "stray.py").write_text("")
    monkeypatch.setattr(pulumi_sdk, "SCHEMA", changed)
    capsys.readouterr()
    assert pulumi_sdk.main(["--check"]) == 1
    message = capsys.readouterr().err
    assert "disk.py" in message and "stray.py" in message
    assert "python -m tools.pulumi_sdk" in message
    assert pulumi_sdk.main([]) == 0
    assert pulumi_sdk.main(["--check"]) == 0
    assert not (sdk / "pulumi_vce" / "stray.py").exists()
    assert 'getter(name="label")' not in (sdk / "pulumi_vce" / "disk.py").read_text()
    assert "def label(self)" in (sdk / "pulumi_vce" / "disk.py").read_text()


def test_generated_code_is_ruff_clean_as_written():
    """The check compares text, so the generator writes what `ruff format` would."""
    ruff = pytest.importorskip("ruff.__main__")
    package = Path(vce.__file__).parent
    for command in (["format", "--check"], ["check"]):
        result = subprocess.run(
            [ruff.find_ruff_bin(), *command, str(package)],
            check=False,
            capture_output=True,
            text=True,
            cwd=Path(pulumi_sdk.ROOT),
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_a_function_with_required_and_object_inputs(tmp_path, monkeypatch):
    """Required inputs come first and take no default; object inputs take Args classes (plain)
    or inputs of them (output form); optional outputs may be None; the module is ruff-clean."""
    schema = json.loads(SCHEMA_FILE.read_text())
    schema["functions"]["vce:index:getThing"] = {
        "description": "A thing.",
        "inputs": {
            "properties": {
                "nic": {"$ref": "#/types/vce:index:VmNic", "description": "A NIC."},
                "vm": {"type": "string", "description": "The VM."},
            },
            "required": ["vm"],
        },
        "outputs": {
            "properties": {
                "things": {"type": "array", "items": {"type": "string"}, "description": "Things."},
                "note": {"type": "string", "description": "A note."},
            },
            "required": ["things"],
        },
    }
    changed = tmp_path / "schema.json"
    changed.write_text(json.dumps(schema))
    monkeypatch.setattr(pulumi_sdk, "SCHEMA", changed)
    monkeypatch.setattr(pulumi_sdk, "SDK", tmp_path / "sdk")
    assert pulumi_sdk.main([]) == 0
    package = tmp_path / "sdk" / "pulumi_vce"
    text = (package / "get_thing.py").read_text()
    tree = ast.parse(text)
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    hints = {
        name: [(a.arg, ast.unparse(a.annotation)) for a in function.args.args]
        for name, function in functions.items()
    }
    assert hints["get_thing"] == [
        ("vm", "str"),
        ("nic", "VmNicArgs | None"),
        ("opts", "pulumi.InvokeOptions | None"),
    ]
    assert hints["get_thing_output"] == [
        ("vm", "pulumi.Input[str]"),
        ("nic", "pulumi.Input[VmNicArgs] | None"),
        ("opts", "pulumi.InvokeOptions | pulumi.InvokeOutputOptions | None"),
    ]
    assert [len(f.args.defaults) for f in functions.values()] == [2, 2]
    assert "from ._inputs import VmNicArgs" in text
    assert "note: str | None = None," in text and "things: Sequence[str]," in text
    assert "get_thing_output" in (package / "__init__.py").read_text()
    ruff = pytest.importorskip("ruff.__main__")
    config = ["--config", str(pulumi_sdk.ROOT / "pyproject.toml")]
    for command in (["format", "--check"], ["check"]):
        result = subprocess.run(
            [ruff.find_ruff_bin(), *command, *config, str(package)],
            check=False,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr
