# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Quotas and operator locks in every run: the gate between a plan and its apply.

Usage is counted from libvirt (the truth) per object; a run's delta is what the host would use
after the declaration minus what it uses now. Before any change the gate checks
used (this host, now) + the other hosts' last usage + other runs' reservations + delta against
the tenant's limits; at apply it does that again under the ledger's lock, against a fresh
reading of the host, and records the delta as a reservation until the changes are made.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..core import quota
from ..core.errors import VceError
from ..core.plan import Plan
from ..core.spec import DiskSpec, EnvironmentSpec, NetworkSpec, VmSpec
from ..host.connection import Host, TenantInventory
from ..ledger import intents
from ..ledger.metering import Meter, Metering, ResourceKey, UsageChange, host_meters
from ..ledger.tenants import Ledger, Tenant, key_of

ObjectKey = tuple[str, str]  # (kind, declared name)


def vm_usage(vcpus: int, memory_mib: int, boot_mib: int) -> quota.Usage:
    return {"vms": 1, "vcpus": vcpus, "ram_gib": memory_mib, "disk_gib": boot_mib}


def observed_objects(inventory: TenantInventory) -> dict[ObjectKey, quota.Usage]:
    """Each of the tenant's objects on the host with what it uses (VMs and volumes as
    metering reads them, plus networks)."""
    objects: dict[ObjectKey, quota.Usage] = {}
    for (kind, name), meter in host_meters(inventory).items():
        if kind == "vm":
            objects[(kind, name)] = vm_usage(meter.vcpus, meter.ram_mib, meter.disk_mib)
        else:
            objects[(kind, name)] = {"disk_gib": meter.disk_mib}
    for network in inventory.networks.values():
        if network.owner and network.owner.tenant == inventory.tenant:
            objects[("network", network.owner.name)] = {"networks": 1}
    return objects


# Change kinds of the host's own, not a tenant's objects (firewall tables every run keeps).
HOST_KINDS = ("firewall",)
# The kinds the ledger counts itself, and the change that adds one object of each.
COUNTED_CHANGES = {
    ("public_ip", "allocate"): "public_ips",
    ("zone_link", "allocate"): "zone_links",
    ("backup_schedule", "create"): "backup_schedules",
}


def counted_objects(plan: Plan) -> list[ObjectKey]:
    """The objects of ledger-counted kinds that the plan adds."""
    return [(c.kind, c.name) for c in plan.changes if (c.kind, c.action) in COUNTED_CHANGES]


def counted_delta(plan: Plan) -> quota.Usage:
    delta: dict[str, int] = {}
    for change in plan.changes:
        kind = COUNTED_CHANGES.get((change.kind, change.action))
        if kind is not None:
            delta[kind] = delta.get(kind, 0) + 1
    return delta


def check_counted(
    ledger: Ledger, connection: Any, record: Tenant, added: quota.Usage, others: quota.Usage
) -> None:
    """The one quota check of the ledger-counted kinds (public IPs, zone links, backup
    schedules), for every entry point and the Pulumi preview alike: the ledger's rows plus
    `others` (other runs' claims, a preview's pending resources) plus `added`."""
    if not added:
        return
    limits = ledger.limits(connection, record)
    used = quota.add(ledger.counted_usage(connection, record.name), others)
    found = quota.breaches(limits, used, added)
    if found:
        raise quota.QuotaExceeded(record.name, found)


def running_vms(inventory: TenantInventory) -> int:
    return sum(
        1
        for d in inventory.domains.values()
        if d.owner and d.owner.tenant == inventory.tenant and d.state in ("running", "paused")
    )


@dataclass
class Declaration:
    """What a run declares: objects with the usage they will have, and objects it removes."""

    objects: dict[ObjectKey, quota.Usage] = field(default_factory=dict)
    removed: set[ObjectKey] = field(default_factory=set)
    # Remove every object not declared (an environment with prune, or state absent).
    remove_undeclared: bool = False

    def project(self, observed: Mapping[ObjectKey, quota.Usage]) -> quota.Usage:
        """What the host will use once the declaration holds. Disks never shrink, so a declared
        size below the current one counts as the current one."""
        projected: dict[ObjectKey, quota.Usage] = {}
        for key, usage in observed.items():
            if key in self.removed or (self.remove_undeclared and key not in self.objects):
                continue
            projected[key] = usage
        for key, usage in self.objects.items():
            before = observed.get(key, {})
            projected[key] = {
                **usage,
                "disk_gib": max(usage.get("disk_gib", 0), before.get("disk_gib", 0)),
            }
        return quota.add(*projected.values())

    def identity(self) -> list[Any]:
        """A stable description: the same declaration gives the same reservation key."""
        return [
            sorted((list(k), sorted(v.items())) for k, v in self.objects.items()),
            sorted(list(k) for k in self.removed),
            self.remove_undeclared,
        ]


def declare_vm(spec: VmSpec) -> tuple[ObjectKey, quota.Usage]:
    boot_mib = spec.boot_disk.size_gib * 1024 if spec.boot_disk else 0
    return ("vm", spec.name), vm_usage(spec.vcpus, spec.memory_mib, boot_mib)


def declare_disk(spec: DiskSpec) -> tuple[ObjectKey, quota.Usage]:
    return ("disk", spec.name), {"disk_gib": spec.size_gib * 1024}


def declare_network(spec: NetworkSpec) -> tuple[ObjectKey, quota.Usage]:
    return ("network", spec.name), {"networks": 1}


def declare_environment(spec: EnvironmentSpec, prune: bool) -> Declaration:
    objects = dict(
        [declare_network(n) for n in spec.networks]
        + [declare_disk(d) for d in spec.disks]
        + [declare_vm(v) for v in spec.vms]
    )
    return Declaration(objects, remove_undeclared=prune)


def declare_one(key_and_usage: tuple[ObjectKey, quota.Usage]) -> Declaration:
    key, usage = key_and_usage
    return Declaration({key: usage})


def declare_removal(kind: str, name: str) -> Declaration:
    return Declaration(removed={(kind, name)})


class Gate:
    """Quotas and locks for one tenant's run on one host."""

    def __init__(
        self, ledger: Ledger, host: Host, tenant: str, declaration: Declaration,
        preview: bool = False,
    ) -> None:  # fmt: skip
        """`preview`: a check-mode run, which may be of a tenant not registered yet."""
        self.ledger = ledger
        self.host = host
        self.tenant = tenant
        self.declaration = declaration
        self.key = key_of("reservation", tenant, host.uri, declaration.identity())
        found = ledger.registered_tenant(tenant) if preview else ledger.current_tenant(tenant)
        self.limits: dict[str, int] = {}
        self.others: quota.Usage = {}
        if found is None:
            self.unregistered = True
            return
        self.unregistered = False
        self.record = found
        with ledger.store.read() as connection:
            self.limits = ledger.limits(connection, self.record)
            self.others = quota.add(
                ledger.known_usage(connection, tenant, except_host=host.uri),
                ledger.reserved(connection, tenant, except_key=self.key),
            )
            # A killed run's intents, for this run to confirm before it changes anything.
            self.pending = intents.has_pending(connection, tenant, host.uri)
        self.intents: list[intents.Intent] = []
        self.intent_keys: list[str] = []
        # Usage changes of killed runs this run recorded from their intents.
        self.recovered: list[UsageChange] = []

    # -- before apply --------------------------------------------------------------------

    def admit(self, plan: Plan, inventory: TenantInventory | None) -> None:
        """Refuse the plan before anything changes: closed or suspended tenants, blocked VMs,
        quotas. Check mode and previews fail here too. `inventory` is None for runs that
        change no libvirt-metered object (public IPs, zone links, backup schedules).

        A preview of a tenant not registered yet is shown with a warning instead: it has no
        plan, so no quotas to check; nothing of it can be applied (apply never gets here)."""
        if self.unregistered:
            plan.warnings.append(
                f"tenant {self.tenant!r} is not registered in the ledger at "
                f"{self.ledger.store.shown_url}: this plan cannot be applied until vce.kvm.tenant "
                "registers it (name, customer, plan), and it was not checked against quotas"
            )
            return
        self.hold_blocked_vms(plan)
        self.admit_state(plan)
        if inventory is not None:
            self.check(observed_objects(inventory), self.others)
        added = counted_delta(plan)
        if added:
            with self.ledger.store.read() as connection:
                check_counted(self.ledger, connection, self.record, added, self.others)

    def admit_state(self, plan: Plan) -> None:
        """Closed and suspended tenants change nothing of theirs; the host's own tables (its
        guard), which a tenant's run keeps too, are not the tenant's."""
        changed = any(change.kind not in HOST_KINDS for change in plan.changes)
        if self.record.state == "closed" and changed:
            raise VceError(f"tenant {self.tenant} is closed: its runs may change nothing")
        if self.record.state == "suspended" and changed:
            raise self.suspended_error()

    def hold_blocked_vms(self, plan: Plan) -> None:
        """A blocked VM stays paused whatever the declaration says, and nothing else changes it."""
        blocked = self.blocked_vms()
        if not blocked:
            return
        kept = []
        for change in plan.changes:
            if change.kind == "vm" and change.name in blocked:
                if change.action == "resume":
                    continue
                if self.record.state == "suspended":
                    raise self.suspended_error()
                raise VceError(
                    f"VM {change.name} of tenant {self.tenant} is blocked by the operator: "
                    f"it cannot be started or changed until the operator unblocks it "
                    f"(refused: {change.action}{' ' + change.field if change.field else ''})"
                )
            kept.append(change)
        if len(kept) != len(plan.changes):
            plan.warnings.append(
                f"VMs blocked by the operator stay paused: {', '.join(sorted(blocked))}"
            )
        plan.changes[:] = kept

    def suspended_error(self) -> VceError:
        return VceError(
            f"tenant {self.tenant} is suspended by the operator: its VMs stay paused and "
            "nothing can be changed until the operator resumes it"
        )

    def blocked_vms(self) -> set[str]:
        if self.record.state == "suspended":
            return {name for kind, name in self.declaration.objects if kind == "vm"} | set(
                self.record.blocked_vms
            )
        return set(self.record.blocked_vms)

    def check(
        self, observed: Mapping[ObjectKey, quota.Usage], others: Mapping[str, int]
    ) -> quota.Usage:
        """The positive delta of the declaration, or QuotaExceeded naming every quota it breaks."""
        here = quota.add(*observed.values())
        delta = quota.subtract(self.declaration.project(observed), here)
        found = quota.breaches(self.limits, quota.add(here, others), delta)
        if found:
            raise quota.QuotaExceeded(self.tenant, found)
        return {kind: amount for kind, amount in delta.items() if amount > 0}

    # -- apply ---------------------------------------------------------------------------

    @contextmanager
    def reservation(self, plan: Plan, metered: bool = True) -> Iterator[None]:
        """Reserve the delta under the lock (checked against a fresh reading), make the changes,
        then record the host's usage and drop the reservation; a failure drops it as well.
        `metered` False: the plan changes no libvirt-metered object, the host is not read."""
        claimed = False
        if plan.changed or self.pending:
            added = counted_delta(plan)
            if added:
                # Runs adding other ledger-counted objects claim apart from each other.
                self.key = key_of(
                    "reservation", self.tenant, self.host.uri, self.declaration.identity(),
                    sorted(counted_objects(plan)),
                )  # fmt: skip
            with self.ledger.store.locked(self.tenant) as connection:
                # The claims first, libvirt second: a run that finishes in between then counts
                # twice (its claim and its VM), never not at all (VM not yet defined when
                # read, claim already released when queried).
                others = quota.add(
                    self.ledger.known_usage(connection, self.tenant, except_host=self.host.uri),
                    self.ledger.reserved(connection, self.tenant, except_key=self.key),
                )
                inventory = self.host.inventory(self.tenant) if metered or self.pending else None
                if self.pending:
                    self.recover(connection, inventory, plan)
                if plan.changed:
                    claimed = self.claim(connection, plan, others, added, inventory)
        try:
            yield
        except BaseException:
            if claimed:
                with self.ledger.store.write() as connection:
                    self.ledger.release(connection, self.key)
            raise

    def claim(
        self,
        connection: Any,
        plan: Plan,
        others: quota.Usage,
        added: quota.Usage,
        inventory: TenantInventory | None,
    ) -> bool:
        """Check again and reserve the delta, and write the plan's intents in the same
        transaction, before libvirt is touched; whether a claim was written."""
        delta = self.check(observed_objects(inventory), others) if inventory is not None else {}
        check_counted(self.ledger, connection, self.record, added, others)
        self.intents = intents.intents_of(plan.changes)
        self.intent_keys = intents.write(
            connection, self.ledger, self.tenant, self.host.uri, self.intents
        )
        claim = {**delta, **added}
        if claim:
            self.ledger.reserve(connection, self.key, self.tenant, self.host.uri, claim)
        return bool(claim)

    def recover(self, connection: Any, inventory: TenantInventory | None, plan: Plan) -> None:
        """Confirm the intents killed runs left, from what libvirt shows now."""
        observed = host_meters(inventory or TenantInventory(self.tenant))
        self.recovered = intents.recover(
            connection, Metering(self.ledger), self.tenant, self.host.uri, observed
        )
        if self.recovered:
            runs = sorted({change.at.isoformat() for change in self.recovered})
            plan.warnings.append(
                f"recorded {len(self.recovered)} usage change(s) that a run interrupted before "
                f"recording them had made (dated {', '.join(runs)})"
            )

    def confirm(
        self, after: TenantInventory | None, before: Mapping[ResourceKey, Meter]
    ) -> intents.Confirmation:
        """After the changes (or a failure): record what libvirt shows of the objects the run
        intended to change (`before`: what it saw of them before), and resolve its intents."""
        if not self.intent_keys:
            return intents.Confirmation()
        inventory = after if after is not None else self.host.inventory(self.tenant)
        observed = host_meters(inventory)
        objects = [(intent.kind, intent.name) for intent in self.intents]
        at = self.ledger.now()
        with self.ledger.store.locked(self.tenant) as connection:
            done = intents.confirm(
                connection, Metering(self.ledger), (self.tenant, self.host.uri, objects),
                observed, at, self.ledger.run_id, before,
            )  # fmt: skip
            intents.resolve(connection, self.intent_keys, observed, done, (self.ledger.run_id, at))
        self.intent_keys = []
        return done

    def settle(self, after: TenantInventory | None, plan: Plan) -> None:
        """After the changes: record what the host now uses, drop the claim, start the trial
        clock at the first VM start, and recheck (a concurrent change outside the ledger can
        still break a quota; say so). `after` None: nothing metered changed, only the claim
        of ledger-counted objects (now rows of their own) is dropped."""
        if after is None:
            with self.ledger.store.write() as connection:
                self.ledger.release(connection, self.key)
            return
        observed = observed_objects(after)
        used = quota.add(*observed.values())
        running = running_vms(after)
        with self.ledger.store.write() as connection:
            self.ledger.record_host_usage(connection, self.tenant, self.host.uri, used, running)
            self.ledger.release(connection, self.key)
            if running:
                self.ledger.start_trial(connection, self.record)
            others = self.ledger.known_usage(connection, self.tenant, except_host=self.host.uri)
        total = quota.add(used, others)
        over = quota.below_usage(self.limits, total)
        if over and plan.changed:
            plan.warnings.append(
                f"tenant {self.tenant} is above its quotas after this run: {'; '.join(over)}"
            )


def checked_delta(
    ledger: Ledger, uri: str, tenant: str, declaration: Declaration, pending: quota.Usage
) -> quota.Usage:
    """What a declaration would add to the tenant's usage on the host at `uri` beyond what its
    objects use there now, checked against the tenant's quotas with `pending` (usage other
    declarations not applied yet will add) on top of the ledger's: QuotaExceeded naming every
    quota it breaks. Reads libvirt and the ledger, changes nothing (a preview's check)."""
    host = Host(uri)
    gate = Gate(ledger, host, tenant, declaration)
    observed = observed_objects(host.inventory(tenant))
    return gate.check(observed, quota.add(gate.others, pending))


def tenant_usage(ledger: Ledger, connection: Any, record: Tenant) -> quota.Usage:
    """What the ledger knows the tenant uses on every host, plus claims in flight."""
    return quota.add(
        ledger.known_usage(connection, record.name),
        ledger.reserved(connection, record.name),
        ledger.counted_usage(connection, record.name),
    )
