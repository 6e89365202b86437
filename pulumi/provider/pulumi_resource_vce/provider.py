# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vce provider: a client of the control plane (`vce serve`). Check asks the API to
validate a declaration and count it against the tenant's quotas, Diff stays local,
Create/Update/Delete submit actions and wait for them, Read reads the object back."""

from __future__ import annotations

import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from pulumi.provider.experimental.property_value import PropertyValue
from pulumi.provider.experimental.provider import (
    CheckFailure,
    CheckRequest,
    CheckResponse,
    ConfigureRequest,
    ConfigureResponse,
    CreateRequest,
    CreateResponse,
    DeleteRequest,
    DiffRequest,
    DiffResponse,
    GetSchemaRequest,
    GetSchemaResponse,
    InvokeRequest,
    InvokeResponse,
    PropertyDiff,
    PropertyDiffKind,
    Provider,
    ReadRequest,
    ReadResponse,
    UpdateRequest,
    UpdateResponse,
)

from .adapter import (
    UNKNOWN,
    contains_unknown,
    from_values,
    plain_values,
    resource_type,
    to_values,
)
from .client import ApiFailure, Client, key_of
from .config import CONFIG, ConfigError, ProviderConfig, decoded, parse_config
from .functions import FUNCTIONS, Function
from .progress import EngineLog
from .props import Prop, camel_path, check_types, secret_paths, with_defaults
from .resources import KINDS, NAME, IdError, Kind
from .schema import SCHEMA_FILE

CONFIG_PREFIX = "vce:config:"
# How long a change may take when the program sets no customTimeouts.
DEFAULT_TIMEOUT = 20 * 60.0


class ProviderError(Exception):
    """A failure to show the user as it is: no stack."""


class VceProvider(Provider):
    def __init__(self, engine_address: str = "") -> None:
        self.config: ProviderConfig | None = None
        self.client: Client | None = None
        # Usage that checked-but-not-yet-applied resources will add, by URN: sent with each
        # check, so a preview of a whole stack is refused at the first resource the tenant's
        # quotas cannot hold.
        self.pending: dict[str, Mapping[str, Any]] = {}
        self.log = EngineLog(engine_address)

    # -- provider ---------------------------------------------------------------------------

    async def get_schema(self, request: GetSchemaRequest) -> GetSchemaResponse:
        return GetSchemaResponse(schema=SCHEMA_FILE.read_text())

    async def check_config(self, request: CheckRequest) -> CheckResponse:
        values, _secrets = to_values(request.new_inputs)
        values = {
            k: decoded(v) for k, v in values.items() if not k.startswith("__") and k != "version"
        }
        failures = [CheckFailure(path, reason) for path, reason in check_types(CONFIG, values)]
        if not failures and not contains_unknown(values):
            try:
                parse_config(values)
            except ConfigError as error:
                failures.append(CheckFailure(error.field, error.reason))
        # The token is a secret from the program to the state, whoever set it.
        inputs = {
            key: PropertyValue(value.value, is_secret=True) if key == "token" else value
            for key, value in request.new_inputs.items()
        }
        return CheckResponse(inputs=inputs, failures=failures)

    async def configure(self, request: ConfigureRequest) -> ConfigureResponse:
        values = {
            key[len(CONFIG_PREFIX) :]: value
            for key, value in request.variables.items()
            if key.startswith(CONFIG_PREFIX)
        }
        given, _secrets = to_values(request.args)
        values.update({k: v for k, v in given.items() if v is not None and not k.startswith("__")})
        values.pop("version", None)
        if not contains_unknown(values):
            try:
                config = parse_config(values)
            except ConfigError as error:
                raise ProviderError(f"vce provider: {error.field}: {error.reason}") from None
            if self.client is not None:
                await self.client.close()
            self.config, self.client = config, Client(config)
        return ConfigureResponse(accept_secrets=True, supports_preview=True, accept_outputs=False)

    def api(self) -> Client:
        if self.client is None:
            raise ProviderError("vce provider: set vce:endpoint and vce:token first")
        return self.client

    # -- check and diff ---------------------------------------------------------------------

    async def check(self, request: CheckRequest) -> CheckResponse:
        kind = kind_of(request.urn)
        news, secrets = to_values(request.new_inputs)
        news = {k: v for k, v in news.items() if not k.startswith("__")}
        if news.get("name") is None and any(p.name == "name" for p in kind.inputs):
            news["name"] = request.name
        news = with_defaults(kind.inputs, news)
        failures = check_types(kind.inputs, news)
        olds = {k: v for k, v in plain_values(request.old_inputs).items() if not k.startswith("__")}
        if not failures and not contains_unknown(news) and olds != news:
            # A change that adds nothing never breaches a quota: unchanged inputs skip the API.
            failures = await self.admit(kind, request.urn, news)
        secrets |= secret_paths(kind.inputs, news)
        return CheckResponse(
            inputs=from_values(news, secrets),
            failures=[CheckFailure(path, reason) for path, reason in failures],
        )

    async def admit(self, kind: Kind, urn: str, news: dict[str, Any]) -> list[tuple[str, str]]:
        """The control plane's verdict on the declaration: its validation (the engine's
        parsers, the field paths of the modules) and the tenant's quotas with what the other
        checked resources of this run will add."""
        name = news.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            return [("name", "must be 1-32 of a-z, 0-9 and '-', starting and ending alphanumeric")]
        self.pending.pop(urn, None)
        body = {"declaration": kind.body(news), "pending": added(self.pending.values())}
        try:
            verdict = await self.api().post(f"{kind.path(name)}/check", body)
        except ApiFailure as failure:
            if failure.status in (409, 422) and failure.fields:
                return [(camel_path(path), reason) for path, reason in failure.fields]
            if failure.status in (409, 422):
                return [("", failure.message)]
            raise ProviderError(f"{kind.token} {name}: {failure.message}") from None
        if verdict.get("usage"):
            self.pending[urn] = verdict["usage"]
        return []

    async def diff(self, request: DiffRequest) -> DiffResponse:
        kind = kind_of(request.urn)
        olds = plain_values(request.old_state)
        news = plain_values(request.new_inputs)
        detailed: dict[str, PropertyDiff] = {}
        replaces: list[str] = []
        ignored = set(request.ignore_changes)
        # A program that names no zone means the control plane's only zone (Check refuses it
        # when there are several): the zone an object was read back with (an import) is it.
        if news.get("zone") is None:
            ignored.add("zone")
        elif olds.get("zone") is None and kind.zoned:
            olds["zone"] = zone_of(kind, request.resource_id)  # created without naming it
        for prop in kind.inputs:
            if prop.output_only or prop.name in ignored:
                continue
            before, after = olds.get(prop.name), news.get(prop.name)
            if after is None and prop.kept:
                continue  # left out, the control plane keeps what the object has
            if settled(prop, before) == settled(prop, after) and not contains_unknown(after):
                continue
            for path, replace in changed_paths(prop, before, after):
                detailed[path] = PropertyDiff(diff_kind(before, after, replace), True)
                if replace:
                    replaces.append(path)
        return DiffResponse(
            changes=bool(detailed),
            replaces=replaces,
            delete_before_replace=bool(replaces),  # names are identities: free it first
            diffs=sorted({path.split(".")[0].split("[")[0] for path in detailed}),
            detailed_diff=detailed,
        )

    # -- create, read, update, delete ---------------------------------------------------------

    async def create(self, request: CreateRequest) -> CreateResponse:
        kind = kind_of(request.urn)
        inputs, secrets = to_values(request.properties)
        if request.preview:
            return CreateResponse(resource_id="", properties=preview_state(kind, inputs, secrets))
        view = await self.put(kind, request.urn, "create", inputs, request.timeout)
        outputs = kind.observe(view, inputs).outputs
        return CreateResponse(
            resource_id=kind.id_of(inputs, view.get("zone")),
            properties=state(kind, inputs, outputs, secrets),
        )

    async def update(self, request: UpdateRequest) -> UpdateResponse:
        kind = kind_of(request.urn)
        news, secrets = to_values(request.news)
        if request.preview:
            return UpdateResponse(properties=preview_state(kind, news, secrets))
        view = await self.put(kind, request.urn, "update", news, request.timeout)
        outputs = kind.observe(view, news).outputs
        return UpdateResponse(properties=state(kind, news, outputs, secrets))

    async def delete(self, request: DeleteRequest) -> None:
        kind = kind_of(request.urn)
        olds = plain_values(request.properties)
        name = str(olds.get("name") or "")
        zone = olds.get("zone") or zone_of(kind, request.resource_id)
        target = {"name": name, "zone": zone}
        try:
            action = await self.api().submit(
                "DELETE",
                kind.path(name),
                key_of("delete", request.urn, target),
                params={"zone": zone},
            )
        except ApiFailure as failure:
            if failure.status == 404:
                return  # already gone: what a delete wants
            raise self.failed(kind, name, failure) from None
        await self.finish(kind, name, request.urn, action, request.timeout)

    async def read(self, request: ReadRequest) -> ReadResponse:
        kind = kind_of(request.urn)
        olds, secrets = to_values(request.properties)
        old_inputs, input_secrets = to_values(request.inputs)
        try:
            identity = kind.parse_id(request.resource_id)
        except IdError as error:
            raise ProviderError(f"{kind.token} {request.resource_id!r}: {error}") from None
        view = await self.view(kind, identity)
        if view is None:
            return ReadResponse(resource_id=None, properties={}, inputs={})
        observed = kind.observe(view, {**olds, **old_inputs, **identity})
        declared = {p.name: old_inputs[p.name] for p in kind.inputs if p.name in old_inputs}
        inputs = refreshed(kind, declared, observed.inputs) if declared else observed.inputs
        inputs = {k: v for k, v in inputs.items() if v is not None}
        secrets |= input_secrets | secret_paths(kind.inputs, inputs)
        return ReadResponse(
            resource_id=kind.id_of(inputs, view.get("zone")),
            properties=from_values({**inputs, **observed.outputs}, secrets),
            inputs=from_values(inputs, secrets),
        )

    async def view(self, kind: Kind, identity: Mapping[str, Any]) -> dict[str, Any] | None:
        """The object as the API shows it now; None when the tenant has none of that name."""
        name = identity["name"]
        try:
            view = (await self.api().get(kind.path(name), zone=identity.get("zone")))["object"]
        except ApiFailure as failure:
            if failure.status == 404:
                return None
            raise self.failed(kind, name, failure) from None
        if identity.get("vm") and view.get("vm") not in (None, identity["vm"]):
            return None  # a schedule of that name, but another VM's: not this resource
        return view

    async def put(
        self, kind: Kind, urn: str, operation: str, inputs: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """The declaration made true by an action; the object as the action left it."""
        name = str(inputs.get("name"))
        body = kind.body(inputs)
        try:
            action = await self.api().submit(
                "PUT", kind.path(name), key_of(operation, urn, body), body=body
            )
        except ApiFailure as failure:
            raise self.failed(kind, name, failure) from None
        finally:
            self.pending.pop(urn, None)
        action = await self.finish(kind, name, urn, action, timeout)
        view = (action.get("result") or {}).get("object")
        if not view:
            raise ProviderError(f"{kind.token} {name}: not found after applying it")
        return view

    async def finish(
        self, kind: Kind, name: str, urn: str, action: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """The action once it has succeeded, its progress shown; its error otherwise."""
        deadline = time.monotonic() + (timeout or DEFAULT_TIMEOUT)

        async def progress(step: str) -> None:
            await self.log.info(urn, step)

        try:
            action = await self.api().wait(action, deadline, progress)
        except ApiFailure as failure:
            raise self.failed(kind, name, failure) from None
        if action["status"] != "succeeded":
            raise ProviderError(action_error(kind, name, action))
        for warning in (action.get("result") or {}).get("warnings") or []:
            await self.log.warning(urn, str(warning))
        return action

    def failed(self, kind: Kind, name: str, failure: ApiFailure) -> ProviderError:
        if failure.fields:
            fields = "; ".join(f"{camel_path(path)}: {reason}" for path, reason in failure.fields)
            return ProviderError(f"{kind.token} {name}: {fields}")
        return ProviderError(f"{kind.token} {name}: {failure.message}")

    # -- functions ----------------------------------------------------------------------------

    async def invoke(self, request: InvokeRequest) -> InvokeResponse:
        function = function_of(request.tok)
        args = {k: v for k, v in plain_values(request.args).items() if not k.startswith("__")}
        failures = check_types(function.inputs, args)
        if failures:
            return InvokeResponse(failures=[CheckFailure(p, r) for p, r in failures])
        try:
            result = await function.call(self.api(), args)
        except ApiFailure as failure:
            raise ProviderError(f"{function.token}: {failure.message}") from None
        return InvokeResponse(return_value=from_values(result))


def kind_of(urn: str) -> Kind:
    token = resource_type(urn)
    kind = KINDS.get(token)
    if kind is None:
        raise ProviderError(f"vce provider: unknown resource type {token}")
    return kind


def function_of(token: str) -> Function:
    for function in FUNCTIONS:
        if function.token == token:
            return function
    raise ProviderError(f"vce provider: unknown function {token}")


def zone_of(kind: Kind, resource_id: str) -> str | None:
    try:
        return kind.parse_id(resource_id).get("zone")
    except IdError:
        return None


def added(usages: Any) -> dict[str, str]:
    """The sum of checked resources' usage, by quota kind (exact: GiB arrive as decimal
    strings)."""
    total: dict[str, Decimal] = {}
    for usage in usages:
        for quota, amount in usage.items():
            total[quota] = total.get(quota, Decimal(0)) + Decimal(str(amount))
    return {quota: str(amount) for quota, amount in sorted(total.items())}


def action_error(kind: Kind, name: str, action: Mapping[str, Any]) -> str:
    """A failed action's error as the user reads it: field paths in the program's spelling."""
    error = action.get("error") or {}
    fields = [f for f in error.get("fields") or [] if isinstance(f, Mapping)]
    if fields:
        text = "; ".join(f"{camel_path(str(f.get('path')))}: {f.get('reason')}" for f in fields)
    else:
        text = str(error.get("message") or action["status"])
    return f"{kind.token} {name}: {text} (action {action['id']}, {action['status']})"


def changed_paths(prop: Prop, before: Any, after: Any) -> list[tuple[str, bool]]:
    """The property's changed paths and whether each forces a replacement; an object's fields
    are compared one by one, so only the fields that differ show (and decide replacement)."""
    if before == after and not contains_unknown(after):
        return []
    if prop.type == "object" and isinstance(before, Mapping) and isinstance(after, Mapping):
        found = []
        for field in prop.fields:
            old, new = before.get(field.name), after.get(field.name)
            if old != new or contains_unknown(new):
                found.append((f"{prop.name}.{field.name}", prop.replace or field.replace))
        return found
    return [(prop.name, prop.replace)]


def settled(prop: Prop, value: Any) -> Any:
    """What a property is when a declaration leaves it out: its default, or an empty list.
    A state read back by an import has no `allowRestart`, a program no `disks: []`; neither
    is a change."""
    if value is None and prop.default is not None:
        return prop.default
    if value is None and prop.type == "array":
        return []
    return value


def diff_kind(before: Any, after: Any, replace: bool) -> PropertyDiffKind:
    if before is None:
        return PropertyDiffKind.ADD_REPLACE if replace else PropertyDiffKind.ADD
    if after is None:
        return PropertyDiffKind.DELETE_REPLACE if replace else PropertyDiffKind.DELETE
    return PropertyDiffKind.UPDATE_REPLACE if replace else PropertyDiffKind.UPDATE


def preview_state(kind: Kind, inputs: dict[str, Any], secrets: set[str]) -> dict[str, Any]:
    """What a preview knows: the inputs, with every computed output unknown until applied."""
    unknown = {prop.name: UNKNOWN for prop in kind.outputs}
    return from_values({**inputs, **unknown}, secrets | secret_paths(kind.inputs, inputs))


def state(
    kind: Kind, inputs: dict[str, Any], outputs: dict[str, Any], secrets: set[str]
) -> dict[str, Any]:
    return from_values({**inputs, **outputs}, secrets | secret_paths(kind.inputs, inputs))


def refreshed(kind: Kind, declared: dict[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    """The declared inputs with what the host shows now for each declared property (an
    object's declared fields one by one), so drift shows in the next preview and nothing
    undeclared appears. Lists keep their declared shape while their live entries match it."""
    result = dict(declared)
    for prop in kind.inputs:
        if prop.name not in declared or prop.name not in live:
            continue
        old, new = declared[prop.name], live[prop.name]
        if prop.type == "object" and isinstance(old, Mapping) and isinstance(new, Mapping):
            result[prop.name] = {k: new.get(k, v) for k, v in old.items()}
        elif prop.name == "nics" and isinstance(old, list) and isinstance(new, list):
            same = [n.get("network") for n in old] == [n.get("network") for n in new]
            result[prop.name] = old if same else new
        else:
            result[prop.name] = new
    return result
