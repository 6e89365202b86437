"""The typed SDK `pulumi_vce` never drifts from the provider's schema: every resource and type
with its token, its inputs and outputs under the schema's names, what is required, the
descriptions; and the generated files are what `tools.pulumi_sdk` gives today."""

from __future__ import annotations

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
TYPES = sorted(SCHEMA["types"])
NONE = type(None)


def short(token: str) -> str:
    return token.rsplit(":", 1)[1]


def words(text: str | None) -> str:
    return " ".join((text or "").split())


def is_optional(hint: object) -> bool:
    return NONE in typing.get_args(hint)


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
def test_types_in_both_directions_are_the_schema_types(token):
    spec = SCHEMA["types"][token]
    required = set(spec.get("required", []))
    for cls in (getattr(vce, f"{short(token)}Args"), getattr(vce.outputs, short(token))):
        props = getters(cls)
        assert set(props) == set(spec["properties"]), cls
        for name, prop in props.items():
            hint = prop.fget.__annotations__["return"]
            assert is_optional(hint) == (name not in required), (cls, name)
            assert words(spec["properties"][name]["description"]) in words(prop.__doc__)
    params = inspect.signature(getattr(vce, f"{short(token)}Args").__init__).parameters
    assert {n for n, p in params.items() if p.default is inspect.Parameter.empty} - {"self"} == {
        pulumi_sdk.snake(n) for n in required
    }


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


def test_the_package_exports_every_class():
    expected = {short(t) for t in RESOURCES} | {f"{short(t)}Args" for t in RESOURCES}
    expected |= {f"{short(t)}Args" for t in TYPES} | {"Provider", "ProviderArgs"}
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
