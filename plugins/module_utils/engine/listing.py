# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every tenant VM on several hosts, with its addresses, state and (from the ledger) plan,
public IPs and block: what the dynamic inventory lists. Read-only."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import SpecError, VceError
from ..core.validation import check_name
from ..host.connection import Host
from ..host.facts import tenant_facts
from ..ledger import schema as ledger_schema
from ..ledger.store import open_store

HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # matched whole, with fullmatch
HOST_KEYS = ("name", "uri", "zone")


@dataclass(frozen=True)
class HostSource:
    """One KVM host as the inventory source declares it."""

    name: str
    uri: str
    zone: str | None = None


@dataclass
class Listing:
    """The VMs found (one dict per VM, JSON-serialisable for the cache), and what was not
    listed: `complete` is false when a host or the ledger could not be read."""

    vms: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.warnings


def parse_hosts(raw: Any) -> list[HostSource]:
    if not isinstance(raw, list) or not raw:
        raise SpecError("hosts", "must be a non-empty list of {name, uri, zone}")
    sources = [parse_source(item, f"hosts[{index}]") for index, item in enumerate(raw)]
    for key in ("name", "uri"):
        repeated = sorted(k for k, n in Counter(getattr(s, key) for s in sources).items() if n > 1)
        if repeated:
            raise SpecError(f"hosts[].{key}", f"must be unique, {repeated[0]!r} is listed twice")
    return sources


def parse_source(item: Any, path: str) -> HostSource:
    if not isinstance(item, Mapping):
        raise SpecError(path, "must be a mapping with name, uri and (optionally) zone")
    unknown = sorted(set(item) - set(HOST_KEYS))
    if unknown:
        raise SpecError(f"{path}.{unknown[0]}", f"unknown key; use {', '.join(HOST_KEYS)}")
    name, uri, zone = item.get("name"), item.get("uri"), item.get("zone")
    if not isinstance(name, str) or not HOST_NAME.fullmatch(name):
        raise SpecError(
            f"{path}.name", f"must be 1-63 letters, digits, '.', '_' or '-', got {name!r}"
        )
    if not isinstance(uri, str) or "://" not in uri:
        raise SpecError(f"{path}.uri", f"must be a libvirt URI such as qemu:///system, got {uri!r}")
    if zone is not None and (not isinstance(zone, str) or not HOST_NAME.fullmatch(zone)):
        raise SpecError(
            f"{path}.zone", f"must be 1-63 letters, digits, '.', '_' or '-', got {zone!r}"
        )
    return HostSource(name, uri, zone)


def parse_tenants(raw: Any) -> frozenset[str] | None:
    """The tenants to list; None lists every tenant."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise SpecError("tenants", "must be a list of tenant names")
    return frozenset(check_name(name, f"tenants[{index}]") for index, name in enumerate(raw))


def host_vms(source: HostSource, only: frozenset[str] | None) -> list[dict[str, Any]]:
    """The tenant VMs on one host, read in one pass over its objects."""
    host = Host(source.uri)
    found = []
    for tenant, inventory in sorted(host.inventories().items()):
        if only is not None and tenant not in only:
            continue
        for vm, facts in sorted(tenant_facts(host, tenant, inventory)["vms"].items()):
            found.append(vm_record(source, tenant, vm, facts))
    return found


def vm_record(source: HostSource, tenant: str, vm: str, facts: Mapping[str, Any]) -> dict:
    return {
        "tenant": tenant,
        "vm": vm,
        "zone": source.zone,
        "host": source.name,
        "uri": source.uri,
        "state": facts["state"],
        "vcpus": facts["vcpus"],
        "memory_mib": facts["memory_mib"],
        "private_ips": [nic["ip"] for nic in facts["nics"] if nic["ip"]],
    }


@dataclass
class LedgerView:
    """What the ledger adds to the VMs: each tenant's plan, blocked VMs, public IPs."""

    plans: dict[str, str]
    blocked: set[tuple[str, str]]
    addresses: dict[tuple[str, str], list[Any]]  # (tenant, vm) -> public_ips rows

    def annotate(self, record: dict[str, Any], uris: set[str]) -> None:
        key = (record["tenant"], record["vm"])
        record["plan"] = self.plans.get(record["tenant"])
        record["blocked"] = key in self.blocked
        rows = self.addresses.get(key, [])
        record["public_ips"] = sorted(r.address for r in rows if self.on_host(r, record, uris))

    @staticmethod
    def on_host(row: Any, record: Mapping[str, Any], uris: set[str]) -> bool:
        """An address is the VM's on the host whose URI the binding run used; a run that
        reached the host under another URI is matched by the host's zone instead."""
        if row.host in uris:
            return row.host == record["uri"]
        return row.zone == record["zone"]


def read_ledger(url: str) -> LedgerView:
    store = open_store(url)  # raises when SQLAlchemy is missing: the tables exist after it
    schema, select = ledger_schema, ledger_schema.sa.select
    with store.read() as connection:
        plans = dict(connection.execute(select(schema.tenants.c.name, schema.tenants.c.plan)).all())
        blocks = schema.blocks
        blocked = connection.execute(
            select(blocks.c.tenant, blocks.c.vm).where(blocks.c.vm != "")
        ).all()
        rows = connection.execute(select(schema.public_ips)).all()
    addresses: dict[tuple[str, str], list[Any]] = {}
    for row in rows:
        addresses.setdefault((row.tenant, row.vm), []).append(row)
    return LedgerView(plans, {(row.tenant, row.vm) for row in blocked}, addresses)


def list_tenant_vms(
    sources: Sequence[HostSource],
    only: frozenset[str] | None = None,
    ledger_url: str | None = None,
    strict: bool = False,
) -> Listing:
    """Every tenant VM on `sources`. A host (or the ledger) that cannot be read is an error
    with `strict`, else a warning in the listing and the rest is still listed."""
    listing = Listing()
    for source in sources:
        try:
            listing.vms.extend(host_vms(source, only))
        except VceError as error:
            what = f"Failed to list the tenant VMs of host {source.name}"
            if source.uri not in str(error):
                what += f" ({source.uri})"
            report(listing, strict, what, error)
    if ledger_url:
        try:
            view = read_ledger(ledger_url)
        except VceError as error:
            report(listing, strict, "Failed to read plans and public IPs from the ledger", error)
        else:
            uris = {source.uri for source in sources}
            for record in listing.vms:
                view.annotate(record, uris)
    return listing


def report(listing: Listing, strict: bool, what: str, error: VceError) -> None:
    message = f"{what}: {error}"
    if strict:
        raise VceError(message) from None
    listing.warnings.append(message)


def inventory_names(vms: Iterable[Mapping[str, Any]]) -> list[str]:
    """`<tenant>.<vm>`, unique: a tenant VM name found on several hosts is listed once per host
    as `<tenant>.<vm>.<host>`, so no copy hides another whatever the order of the hosts."""
    vms = list(vms)
    seen = Counter((vm["tenant"], vm["vm"]) for vm in vms)
    return [
        f"{vm['tenant']}.{vm['vm']}"
        + (f".{vm['host']}" if seen[(vm["tenant"], vm["vm"])] > 1 else "")
        for vm in vms
    ]


def host_vars(vm: Mapping[str, Any]) -> dict[str, Any]:
    """The VM's inventory variables; the ledger's are there only when a ledger was read."""
    public = vm.get("public_ips") or []
    private = vm["private_ips"]
    result = {f"vce_{key}": value for key, value in vm.items()}
    address = (public or private or [None])[0]
    if address:
        result["ansible_host"] = address
    return result
