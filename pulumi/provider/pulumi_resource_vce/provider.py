# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vce provider: Check, Diff, Create, Read, Update and Delete over the engine.

Every libvirt and ledger call runs in a worker thread: the gRPC server's event loop serves
the engine's concurrent requests meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

from ansible_collections.vce.kvm.plugins.module_utils.core import quota
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.engine.gate import (
    Gate,
    check_counted,
    observed_objects,
)
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import Host
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
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
from .config import CONFIG, ProviderConfig, decoded, parse_config
from .props import Prop, camel_path, check_types, secret_paths, with_defaults
from .records import RunRecords
from .resources import KINDS, Kind
from .schema import SCHEMA_FILE

CONFIG_PREFIX = "vce:config:"


class ProviderError(Exception):
    """A failure to show the user as it is: no stack."""


class VceProvider(Provider):
    def __init__(self) -> None:
        self.config: ProviderConfig | None = None
        # Usage that checked-but-not-yet-applied resources will add, by URN: a preview of a
        # whole stack is refused at the first resource the tenant's quotas cannot hold.
        self.pending: dict[str, quota.Usage] = {}
        self.pending_lock = threading.Lock()
        self.records = RunRecords()

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
            except SpecError as error:
                failures.append(CheckFailure(camel_path(error.field), error.reason))
        return CheckResponse(inputs=request.new_inputs, failures=failures)

    async def configure(self, request: ConfigureRequest) -> ConfigureResponse:
        values = {
            key[len(CONFIG_PREFIX) :]: value
            for key, value in request.variables.items()
            if key.startswith(CONFIG_PREFIX)
        }
        given, _secrets = to_values(request.args)
        values.update({k: v for k, v in given.items() if v is not None})
        if not contains_unknown(values):
            try:
                self.config = parse_config(values)
            except SpecError as error:
                raise ProviderError(
                    f"vce provider: {camel_path(error.field)}: {error.reason}"
                ) from None
        return ConfigureResponse(accept_secrets=True, supports_preview=True, accept_outputs=False)

    def configured(self) -> ProviderConfig:
        if self.config is None:
            raise ProviderError("vce provider: configure tenant and zones first")
        return self.config

    # -- check and diff ---------------------------------------------------------------------

    async def check(self, request: CheckRequest) -> CheckResponse:
        kind = kind_of(request.urn)
        news, secrets = to_values(request.new_inputs)
        news = {k: v for k, v in news.items() if not k.startswith("__")}
        if news.get("name") is None and any(p.name == "name" for p in kind.inputs):
            news["name"] = request.name
        news = with_defaults(kind.inputs, news)
        failures = check_types(kind.inputs, news)
        olds = plain_values(request.old_inputs)
        if not failures and not contains_unknown(news):
            failures = await self.admit(kind, request.urn, olds, news)
        secrets |= secret_paths(kind.inputs, news)
        return CheckResponse(
            inputs=from_values(news, secrets),
            failures=[CheckFailure(path, reason) for path, reason in failures],
        )

    async def admit(
        self, kind: Kind, urn: str, olds: Mapping[str, Any], news: dict[str, Any]
    ) -> list[tuple[str, str]]:
        """The engine's own validation, then the tenant's quotas (skipped when nothing
        changed: a change that adds nothing never breaches a quota). Only the quota check
        reads the ledger and libvirt, so only it leaves the event loop."""
        try:
            params = kind.params(self.configured(), news)
            if kind.validate is not None:
                kind.validate(params)
            declaration = kind.declare(params) if kind.declare is not None else None
            if {k: v for k, v in olds.items() if not k.startswith("__")} == news:
                return []
            await asyncio.to_thread(self.check_quota, kind, urn, params, declaration, olds)
        except quota.QuotaExceeded as error:
            return [(quota_property(kind, b.kind), str(error)) for b in error.breaches[:1]]
        except SpecError as error:
            return [(camel_path(error.field), error.reason)]
        except VceError as error:
            return [("", str(error))]
        return []

    def check_quota(
        self, kind: Kind, urn: str, params: dict[str, Any], declaration: Any, olds: Mapping
    ) -> None:
        config = self.configured()
        ledger = Ledger.open(config.ledger_url)
        with self.pending_lock:
            self.pending.pop(urn, None)
            others_pending = quota.add(*self.pending.values())
        if declaration is not None:
            host = Host(params["uri"])
            gate = Gate(ledger, host, config.tenant, declaration)
            observed = observed_objects(host.inventory(config.tenant))
            delta = gate.check(observed, quota.add(gate.others, others_pending))
        else:
            if olds:
                return
            # Before the reading transaction: settling an ended trial takes the tenant's lock.
            record = ledger.current_tenant(config.tenant)
            delta = {kind.counted: 1}
            with ledger.store.read() as connection:
                others = quota.add(ledger.reserved(connection, config.tenant), others_pending)
                check_counted(ledger, connection, record, delta, others)
        if delta:
            with self.pending_lock:
                self.pending[urn] = delta

    async def diff(self, request: DiffRequest) -> DiffResponse:
        kind = kind_of(request.urn)
        olds = plain_values(request.old_state)
        news = plain_values(request.new_inputs)
        detailed: dict[str, PropertyDiff] = {}
        replaces: list[str] = []
        ignored = set(request.ignore_changes)
        for prop in kind.inputs:
            if prop.output_only or prop.name in ignored:
                continue
            for path, replace in changed_paths(prop, olds.get(prop.name), news.get(prop.name)):
                before = olds.get(prop.name)
                after = news.get(prop.name)
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
        config = self.configured()
        if request.preview:
            return CreateResponse(resource_id="", properties=preview_state(kind, inputs, secrets))
        outputs = await self.apply(kind, request.urn, inputs, present=True)
        return CreateResponse(
            resource_id=kind.id_of(config, inputs),
            properties=state(kind, inputs, outputs, secrets),
        )

    async def update(self, request: UpdateRequest) -> UpdateResponse:
        kind = kind_of(request.urn)
        news, secrets = to_values(request.news)
        if request.preview:
            return UpdateResponse(properties=preview_state(kind, news, secrets))
        outputs = await self.apply(kind, request.urn, news, present=True)
        return UpdateResponse(properties=state(kind, news, outputs, secrets))

    async def delete(self, request: DeleteRequest) -> None:
        kind = kind_of(request.urn)
        olds = plain_values(request.properties)
        inputs = {p.name: olds.get(p.name) for p in kind.inputs if olds.get(p.name) is not None}
        await self.apply(kind, request.urn, inputs, present=False)

    async def read(self, request: ReadRequest) -> ReadResponse:
        kind = kind_of(request.urn)
        config = self.configured()
        olds, secrets = to_values(request.properties)
        old_inputs, input_secrets = to_values(request.inputs)
        try:
            identity = kind.parse_id(config, request.resource_id)
        except SpecError as error:
            raise ProviderError(f"{kind.token} {request.resource_id!r}: {error.reason}") from None
        known = {**olds, **old_inputs, **identity}
        observed = await self.call(kind.observe, config, known)
        if observed is None:
            return ReadResponse(resource_id=None, properties={}, inputs={})
        declared = {p.name: old_inputs[p.name] for p in kind.inputs if p.name in old_inputs}
        inputs = refreshed(kind, declared, observed.inputs) if declared else observed.inputs
        secrets |= input_secrets | secret_paths(kind.inputs, inputs)
        return ReadResponse(
            resource_id=request.resource_id,
            properties=from_values({**inputs, **observed.outputs}, secrets),
            inputs=from_values(inputs, secrets),
        )

    async def apply(
        self, kind: Kind, urn: str, inputs: dict[str, Any], present: bool
    ) -> dict[str, Any]:
        """Run the engine; the computed outputs from the facts its run returns (no second
        reading of the host)."""
        config = self.configured()
        try:
            params = kind.params(config, inputs)
            steps = [params]
            if not present:
                if kind.detach_first and inputs.get("attachTo"):
                    steps.insert(0, {**params, "state": "detached"})
                steps[-1] = {
                    **params,
                    "state": "absent",
                    "purge_backups": bool(inputs.get("purgeBackups")),
                }
            for step in steps:
                result = await self.call(kind.run, step, False)
                await self.call(self.records.record, config, result.usage_changes)
        finally:
            with self.pending_lock:
                self.pending.pop(urn, None)
        if not present:
            return {}
        facts = result.facts.get(kind.facts_key)
        if not facts:
            raise ProviderError(f"{kind.token} {inputs.get('name')}: not found after applying it")
        return kind.outputs_of(facts)

    async def call(self, function: Any, *args: Any) -> Any:
        """A blocking engine call in a worker thread, its failures as the user sees them."""
        try:
            return await asyncio.to_thread(function, *args)
        except quota.QuotaExceeded as error:
            raise ProviderError(str(error)) from None
        except SpecError as error:
            raise ProviderError(f"{camel_path(error.field)}: {error.reason}") from None
        except VceError as error:
            raise ProviderError(str(error)) from None


def kind_of(urn: str) -> Kind:
    token = resource_type(urn)
    kind = KINDS.get(token)
    if kind is None:
        raise ProviderError(f"vce provider: unknown resource type {token}")
    return kind


def quota_property(kind: Kind, quota_kind: str) -> str:
    """The property a breached quota is reported on."""
    by_quota = {
        "vcpus": "vcpus",
        "ram_gib": "memoryMib",
        "disk_gib": "bootDisk.sizeGib" if kind.name == "Vm" else "sizeGib",
    }
    return by_quota.get(quota_kind, "name")


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
    """The declared inputs with what libvirt shows now for each declared property (an object's
    declared fields one by one), so drift shows in the next preview and nothing undeclared
    appears. Lists keep their declared shape while their live entries match it."""
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
