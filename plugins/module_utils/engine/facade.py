# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine's entry points: what every front end (Ansible, Pulumi, CLI) calls.

Each takes plain parameters, validates them, observes the host once, plans, and applies the
plan unless asked only to check. The result is plain data.
"""

from __future__ import annotations

from typing import Any

from ..core import fields
from ..core.errors import SpecError, VceError
from ..core.plan import Change, Plan
from ..core.result import Result
from ..core.spec import EnvironmentSpec, parse_disk, parse_environment, parse_network, parse_vm
from ..core.validation import check_choice, check_name
from ..core.zones import zone_of, zone_uplink
from ..host.connection import DEFAULT_URI, Host, Selection, TenantInventory
from ..host.facts import tenant_facts
from ..host.ownership import object_name, volume_name
from ..host.shell import host_shell
from ..host.xml import DiskDevice, disk_device_xml, free_disk_target
from ..ledger.tenants import Ledger
from .environment import EnvironmentPlanner, Failures, Options, planning
from .gate import (
    Declaration,
    Gate,
    declare_disk,
    declare_environment,
    declare_network,
    declare_one,
    declare_removal,
    declare_vm,
)
from .resources.backup_schedule import (
    BackupSchedulePlanner,
    parse_backup_host,
    plan_environment_backups,
)
from .resources.disk import DiskPlanner, attached_to, find_volume
from .resources.firewall import GuardPlanner, check_state, guard_facts, run_uplink, with_guard
from .resources.image import STATES as IMAGE_STATES
from .resources.image import (
    ImageRecordPlanner,
    ImageRecords,
    catalogue_facts,
    image_facts,
    image_sources,
    read_declared,
)
from .resources.network import NetworkPlanner
from .resources.public_ip import (
    PublicIpPlanner,
    bound_through,
    plan_environment_public_ips,
    planner_in,
)
from .resources.tenant import ledger_facts, run_block, run_tenant
from .resources.vm import Context, VmPlanner
from .resources.zone_link import plan_environment_links
from .run import Run, conclude, conclude_one, noting_new_ledger, tenant_report


def options_from(params: dict[str, Any]) -> Options:
    return Options(
        allow_restart=bool(params.get("allow_restart")),
        allow_replace=bool(params.get("allow_replace")),
        prune=bool(params.get("prune")),
        shutdown_timeout=float(params.get("shutdown_timeout") or 60),
    )


def open_gate(
    params: dict[str, Any], host: Host, tenant: str, declaration: Declaration, check_mode: bool
) -> Gate:
    """The run's gate; a check-mode run may preview a tenant not registered yet."""
    ledger = Ledger.open(params.get("ledger_url") or None)
    return Gate(ledger, host, tenant, declaration, preview=check_mode)


def run_environment(params: dict[str, Any], check_mode: bool = False) -> Result:
    state = params.get("state") or "present"
    default_pool = params.get("default_pool") or "default"
    options = options_from(params)
    spec = None
    if state == "absent":
        tenant = check_name(params.get("tenant"), "tenant")
        declaration = Declaration(remove_undeclared=True)
    else:
        spec = parse_environment(params, default_pool)
        tenant = spec.tenant
        declaration = declare_environment(spec, options.prune)
    host = Host(params.get("uri") or DEFAULT_URI, host_shell(params))
    gate = open_gate(params, host, tenant, declaration, check_mode)
    images = image_sources(params, gate.ledger, host.is_local)
    engine = EnvironmentPlanner(host, tenant, options, shell=host_shell(params), images=images)
    inventory = engine.observe()
    public_ips, plan = plan_environment(params, spec, gate.ledger, engine, inventory)
    plan = keeping_guard(params, host, gate.ledger, plan)
    report = tenant_report(gate, check_mode, public_ips=public_ips)
    flush = public_ips.flush if public_ips is not None else None  # one nft batch for the run
    return conclude(Run(plan, report, gate, inventory, flush), check_mode)


def run_registered_environment(params: dict[str, Any], check_mode: bool = False) -> Result:
    """run_environment, the tenant first registered (or kept) in the ledger as run_tenant
    does with `params["register"]` (customer, plan, plans, quotas), in the same run: one
    module process per tenant and host instead of two, the one that costs most of a no-op
    fleet run. One result with both plans; without `register`, run_environment alone."""
    registration = params.get("register")
    if registration is None:
        return run_environment(params, check_mode)
    if (params.get("state") or "present") != "present":
        raise SpecError("register", "registers a tenant whose environment is present only")
    if not isinstance(registration, dict):
        raise SpecError("register", f"must be a mapping, got {type(registration).__name__}")
    keys = ("customer", "plan", "plans", "quotas")
    tenant = run_tenant(
        {key: registration.get(key) for key in keys}
        | {key: params.get(key) for key in ("uri", "ledger_url")}
        | {"name": params.get("tenant")},
        check_mode,
    )
    return joined(tenant, run_environment(params, check_mode))


def joined(first: Result, then: Result) -> Result:
    """Two runs of one tenant reported as one: `first`'s changes before `then`'s."""
    return Result(
        changed=first.changed or then.changed,
        plan=first.plan + then.plan,
        diff={side: first.diff[side] | then.diff[side] for side in ("before", "after")},
        warnings=first.warnings + then.warnings,
        pending_restart=first.pending_restart + then.pending_restart,
        facts=first.facts | then.facts,
        usage_changes=first.usage_changes + then.usage_changes,
    )


def plan_environment(
    params: dict[str, Any],
    spec: EnvironmentSpec | None,
    ledger: Ledger,
    engine: EnvironmentPlanner,
    inventory: TenantInventory,
    failures: Failures | None = None,
    backup_read: dict[str, Any] | None = None,
) -> tuple[PublicIpPlanner | None, Plan]:
    """The whole tenant's plan on the engine's host: `spec` None means state absent.

    Links, public IPs and backup schedules go before the networks and VMs they use when those
    are removed, and after them when they are made. With `failures`, what cannot be planned
    is recorded there (a kind's whole group under the name "*") and the rest is planned.
    `backup_read`: the host's backup schedule files, already read for every tenant.
    """
    host = engine.host
    tenant = engine.tenant
    remove_undeclared = spec is None or engine.options.prune
    public_ips, plan, links, backups = None, Plan(), Plan(), Plan()
    with planning(failures, "public_ip", "*"):
        zone = spec.public_zone if spec else zone_of(params)
        public_ips = planner_in(zone, params, ledger, host, tenant) if zone else None
        plan = plan_environment_public_ips(spec, public_ips, inventory, remove_undeclared)
    with planning(failures, "zone_link", "*"):
        links = plan_environment_links(spec, ledger, tenant, host.uri, remove_undeclared)
    with planning(failures, "backup_schedule", "*"):
        schedules = BackupSchedulePlanner(ledger, host, tenant, parse_backup_host(params))
        backups = plan_environment_backups(
            spec, schedules, inventory, remove_undeclared, backup_read
        )
    if spec is None:
        backups.extend(links)
        backups.extend(plan)
        backups.extend(engine.plan_absent(inventory, failures))
        return public_ips, backups
    zone_name = spec.public_zone.name if spec.public_zone else ""
    declared = {(zone_name, item.name) for item in spec.public_ips}
    bound = bound_through(ledger, tenant, host.uri, declared)
    objects = engine.plan_present(spec, inventory, failures, bound)
    objects.extend(links)
    objects.extend(plan)
    objects.extend(backups)
    return public_ips, objects


def run_network(params: dict[str, Any], check_mode: bool = False) -> Result:
    tenant = check_name(params.get("tenant"), "tenant")
    name = check_name(params.get("name"), "name")
    host = Host(params.get("uri") or DEFAULT_URI, host_shell(params))
    engine = NetworkPlanner(host, tenant, host_shell(params))
    if params.get("state") == "absent":
        gate = open_gate(params, host, tenant, declare_removal("network", name), check_mode)
        inventory = host.inventory(tenant)
        plan = engine.plan_absent(name, inventory)
    else:
        spec = parse_network(fields.declared(fields.NETWORK, params), "", zone_uplink(params))
        gate = open_gate(params, host, tenant, declare_one(declare_network(spec)), check_mode)
        inventory = host.inventory(tenant)
        plan = engine.plan_present(spec, inventory, (), bool(params.get("allow_replace")))
    plan = keeping_guard(params, host, gate.ledger, plan)
    return conclude_one(plan, check_mode, gate, inventory, "networks", name)


def keeping_guard(params: dict[str, Any], host: Host, ledger: Ledger, plan: Plan) -> Plan:
    """A tenant run's plan with the host's guard table kept after its network changes (the
    uplink is the zone's, else the one the ledger records for this host)."""
    guard = GuardPlanner(host, host_shell(params), run_uplink(params, ledger, host.uri))
    return with_guard(plan, guard.plan_after(plan))


def run_firewall(params: dict[str, Any], check_mode: bool = False) -> Result:
    """The host's guard table (`inet vce_guard`) made to match the tenant networks on it, or
    removed (state absent). Without `uplink` or `zone_config` the uplink is the one the
    ledger's host record with this URI names, else the one the table names now."""
    state = check_state(params)
    host = Host(params.get("uri") or DEFAULT_URI, host_shell(params))
    ledger, warnings = None, []
    if state == "present" and params.get("uplink") is None and params.get("zone_config") is None:
        try:
            ledger = Ledger.open(params.get("ledger_url") or None)
        except VceError as error:
            warnings.append(f"no host record read for the guard's uplink: {error}")
    uplink = run_uplink(params, ledger, host.uri) if state == "present" else None
    engine = GuardPlanner(host, host_shell(params), uplink)
    if not engine.kept:
        raise SpecError(
            "host_command",
            f"the firewall of {host.uri} is changed with nft on that host: give the command "
            "that reaches it (e.g. [ssh, root@kvm1]); the test driver has no host",
        )
    plan = engine.plan_present() if state == "present" else engine.plan_absent()
    plan.warnings.extend(warnings)

    def facts(_after: object, applied: bool) -> dict[str, Any]:
        return {"firewall": guard_facts(engine, applied)}

    result = conclude(Run(plan, facts), check_mode)
    before, after = engine.listings
    result.diff = {"before": before or "", "after": after or ""} if plan.changed else {}
    return result


def run_disk(params: dict[str, Any], check_mode: bool = False) -> Result:
    tenant = check_name(params.get("tenant"), "tenant")
    host = Host(params.get("uri") or DEFAULT_URI, host_shell(params))
    state = params.get("state") or "present"
    name = check_name(params.get("name"), "name")
    if state == "absent":
        gate = open_gate(params, host, tenant, declare_removal("disk", name), check_mode)
        inventory = host.inventory(tenant)
        plan = DiskPlanner(host, tenant).plan_absent(name, inventory)
        return conclude_one(plan, check_mode, gate, inventory, "disks", name)
    spec = parse_disk(fields.declared(fields.DISK, params), "", params.get("pool") or "default")
    gate = open_gate(params, host, tenant, declare_one(declare_disk(spec)), check_mode)
    engine = DiskPlanner(host, tenant, image_sources(params, gate.ledger, host.is_local))
    inventory = host.inventory(tenant)
    plan = engine.plan_present(spec, inventory)
    if state == "attached":
        vm = check_name(params.get("attach_to"), "attach_to")
        plan.extend(plan_attach(host, tenant, spec.name, spec.format, vm, inventory, spec.pool))
    elif state == "detached":
        plan.extend(plan_detach(host, tenant, spec.name, inventory))
    return conclude_one(plan, check_mode, gate, inventory, "disks", name)


def disk_path(inventory: TenantInventory, tenant: str, name: str, fmt: str, pool: str) -> str:
    volume = find_volume(inventory, tenant, name)
    if volume is not None:
        return volume.path
    return f"{inventory.pools[pool].rstrip('/')}/{volume_name(tenant, name, fmt)}"


def plan_attach(
    host: Host, tenant: str, name: str, fmt: str, vm: str, inventory: TenantInventory, pool: str
) -> Plan:
    plan = Plan()
    path = disk_path(inventory, tenant, name, fmt, pool)
    current = attached_to(inventory, path)
    libvirt_name = object_name(tenant, vm)
    inventory.refuse_intruder("vm", libvirt_name)
    domain = inventory.domains.get(libvirt_name)
    if domain is None:
        raise SpecError("attach_to", f"unknown VM {vm!r} of tenant {tenant!r}")
    if current is not None and current.name == libvirt_name:
        return plan
    if current is not None:
        user = current.owner.name if current.owner else current.name
        raise SpecError("attach_to", f"disk {name!r} is attached to VM {user!r}; detach it first")
    target = free_disk_target({d.target for d in domain.disks})
    xml = disk_device_xml(DiskDevice(target, path, fmt, serial=name))
    vms = VmPlanner(host, tenant)
    running = domain.state in ("running", "paused")
    plan.add(
        Change(
            "disk",
            name,
            "attach",
            field="attached_to",
            after=vm,
            run=lambda: vms.attach(libvirt_name, xml, running),
        )
    )
    return plan


def plan_detach(host: Host, tenant: str, name: str, inventory: TenantInventory) -> Plan:
    plan = Plan()
    volume = find_volume(inventory, tenant, name)
    domain = attached_to(inventory, volume.path) if volume else None
    if domain is None:
        return plan
    inventory.refuse_intruder("vm", domain.name)
    device = next(d for d in domain.disks if d.path == volume.path)
    vms = VmPlanner(host, tenant)
    running = domain.state in ("running", "paused")
    vm_name = domain.owner.name if domain.owner else domain.name
    plan.add(
        Change(
            "disk",
            name,
            "detach",
            field="attached_to",
            before=vm_name,
            run=lambda: vms.detach(domain.name, disk_device_xml(device), running),
        )
    )
    return plan


def run_vm(params: dict[str, Any], check_mode: bool = False) -> Result:
    tenant = check_name(params.get("tenant"), "tenant")
    if params.get("blocked") is not None:
        return run_block(params, check_mode)
    name = check_name(params.get("name"), "name")
    host = Host(params.get("uri") or DEFAULT_URI, host_shell(params))
    timeout = float(params.get("shutdown_timeout") or 60)
    state = params.get("state") or "running"
    if state == "absent":
        gate = open_gate(params, host, tenant, declare_removal("vm", name), check_mode)
        inventory = host.inventory(tenant)
        plan = VmPlanner(host, tenant, timeout).plan_absent(name, inventory)
    else:
        raw = {**fields.declared(fields.VM, params), "state": state}
        spec = parse_vm(raw, "", tenant, params.get("default_pool") or "default")
        gate = open_gate(params, host, tenant, declare_one(declare_vm(spec)), check_mode)
        images = image_sources(params, gate.ledger, host.is_local)
        engine = VmPlanner(host, tenant, timeout, images)
        inventory = host.inventory(tenant)
        bound = bound_through(gate.ledger, tenant, host.uri)
        ctx = Context(allow_restart=bool(params.get("allow_restart")), public_ips=bound)
        plan = engine.plan_present(spec, inventory, ctx)
    return conclude_one(plan, check_mode, gate, inventory, "vms", name)


def run_image(params: dict[str, Any], check_mode: bool = False) -> Result:
    """Register (or remove) one base image of a zone's catalogue. The file is read on the host
    (qemu-img and its checksum) before the ledger is locked: a large image takes a while."""
    state = check_choice(params.get("state") or "present", "state", IMAGE_STATES)
    zone = check_name(params.get("zone"), "zone")
    name = check_name(params.get("name"), "name")
    values = read_declared(params) if state == "present" else None
    # Registering an image is one of the ways a ledger comes to be (store.py).
    ledger = Ledger.open(params.get("ledger_url") or None, create=True)
    lock = f"(image {zone}/{name})"
    transaction = ledger.store.read() if check_mode else ledger.store.locked(lock)
    with transaction as connection:
        engine = ImageRecordPlanner(ImageRecords(ledger), connection, zone, name)
        row = engine.observe()
        plan = engine.plan_absent(row) if values is None else engine.plan_present(values, row)

        def facts(_after: object, _applied: bool) -> dict[str, Any]:
            return {"image": image_facts(row if check_mode else engine.observe())}

        return noting_new_ledger(conclude(Run(plan, facts), check_mode), ledger.store)


def read_object(params: dict[str, Any], section: str) -> dict[str, Any] | None:
    """One of the tenant's libvirt objects (`section`: "vms", "disks" or "networks") as the
    engine reports it, or None. A VM's facts carry its boot disk's under `boot_disk`."""
    tenant = check_name(params.get("tenant"), "tenant")
    name = check_name(params.get("name"), "name")
    host = Host(params.get("uri") or DEFAULT_URI, host_shell(params))
    inventory = host.inventory(tenant, object_selection(host, tenant, section, name))
    facts = tenant_facts(host, tenant, inventory)
    found = facts[section].get(name)
    if found is None or section != "vms":
        return found
    return {**found, "boot_disk": facts["disks"].get(f"{name}.boot", {})}


def object_selection(host: Host, tenant: str, section: str, name: str) -> Selection:
    """What one object's facts need of the tenant's inventory: a network alone; a disk's
    volume and the domains (which of them has it attached); a VM's domain, the networks of its
    NICs (their names and leases give its addresses) and its boot disk's volume. A refresh of
    N objects reads N objects, not N inventories."""
    nothing: frozenset[str] = frozenset()
    if section == "networks":
        return Selection(domains=nothing, networks=frozenset({name}), volumes=nothing)
    if section == "disks":
        return Selection(networks=nothing, volumes=frozenset({name}))
    domain = host.inventory(
        tenant, Selection(domains=frozenset({name}), networks=nothing, volumes=nothing)
    ).domains.get(object_name(tenant, name))
    prefix = object_name(tenant, "")
    networks = frozenset(
        nic.network[len(prefix) :]
        for nic in (domain.nics if domain is not None else ())
        if nic.network.startswith(prefix)
    )
    return Selection(
        domains=frozenset({name}), networks=networks, volumes=frozenset({f"{name}.boot"})
    )


def run_info(params: dict[str, Any]) -> dict[str, Any]:
    tenant = check_name(params.get("tenant"), "tenant")
    facts = tenant_facts(Host(params.get("uri") or DEFAULT_URI), tenant)
    ledger = Ledger.open(params.get("ledger_url") or None)
    facts["ledger"] = ledger_facts(ledger, tenant)
    facts["images"] = catalogue_facts(ledger)
    return facts
