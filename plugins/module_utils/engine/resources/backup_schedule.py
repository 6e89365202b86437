# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup schedules on a KVM host: a systemd timer + service pair per schedule, and the JSON
config the runner (`vce-backup run`) reads.

Observe reads the tenant's schedule files on the host in one command; plan compares them with
what the declaration renders, checks the calendar (`systemd-analyze calendar`), the frequency
the tenant's plan allows, the target root, the VM and its disks, and verifies the rendered
units (`systemd-analyze verify`, both units) before anything is installed. The ledger keeps
one row per schedule so the `backup_schedules` quota counts every host.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ...core.backup_spec import (
    CALENDAR_ITERATIONS,
    DEFAULT_BACKUP_ROOT,
    ScheduleSpec,
    check_frequency,
    check_under_root,
    parse_calendar_output,
    parse_schedule,
)
from ...core.errors import ApplyError, SpecError, VceError, libvirt, libvirt_reason
from ...core.plan import Change, Plan
from ...core.result import Result
from ...core.spec import EnvironmentSpec
from ...core.validation import check_name, check_prefix
from ...host.connection import DEFAULT_URI, Host, TenantInventory, on_host_uri
from ...host.ownership import object_name
from ...host.shell import HostShell
from ...ledger.tenants import Ledger
from ...runner.backup import RunnerConfig, drop_schedule_checkpoints
from ...runner.repo import ScheduleRepo
from ..gate import Declaration, Gate
from ..run import Run, conclude

UNIT_PREFIX = "vce-backup-"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
DEFAULT_CONFIG_DIR = "/etc/vce-kvm/backup"
DEFAULT_RUNNER = "/usr/local/bin/vce-backup"
WANTS_DIR = "timers.target.wants"
# Paths go into unit files unquoted: plain characters only (no spaces, quotes or specifiers).
# Matched whole, with fullmatch: `$` would let a trailing newline start a new line in the unit.
SAFE_PATH = re.compile(r"/[A-Za-z0-9._/-]*")

# A calendar's next elapses, as systemd computed them, are reused for a minute: many tenants
# share a few calendars, and the frequency they give does not change in that time.
CALENDAR_REUSE_S = 60.0
_calendar_outputs: dict[tuple[tuple[str, ...], str], tuple[float, str]] = {}

# Run on the host with python3 (Ansible needs it there anyway): one command per step.
READ_SCRIPT = r"""
import glob, json, os, sys
unit_dir, config_dir, prefix = sys.argv[1:4]
files = {}
for pattern in (os.path.join(config_dir, prefix + "*.json"),
                os.path.join(unit_dir, prefix + "*.timer"),
                os.path.join(unit_dir, prefix + "*.service")):
    for path in glob.glob(pattern):
        with open(path) as handle:
            files[path] = handle.read()
wants = os.path.join(unit_dir, "timers.target.wants")
enabled = []
if os.path.isdir(wants):
    enabled = sorted(n for n in os.listdir(wants) if n.startswith(prefix))
print(json.dumps({"systemd": os.path.isdir("/run/systemd/system"), "files": files,
                  "enabled": enabled}))
"""

WRITE_SCRIPT = r"""
import json, os, shutil, sys
for op in json.load(sys.stdin):
    path = op["path"]
    if op["op"] == "write":
        os.makedirs(os.path.dirname(path), mode=op["dir_mode"], exist_ok=True)
        tmp = path + ".vce-tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)  # left by a killed run, maybe with a wider mode
        # Created with its mode: a config never exists wider than 0600, even for a moment.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, op["mode"])
        with os.fdopen(fd, "w") as handle:
            handle.write(op["content"])
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, op["mode"])
        os.replace(tmp, path)
    elif op["op"] == "link":
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(op["target"], path)
    elif op["op"] == "remove":
        if os.path.lexists(path):
            os.unlink(path)
    elif op["op"] == "rmtree":
        shutil.rmtree(path, ignore_errors=True)
"""

VERIFY_SCRIPT = r"""
import json, os, shutil, subprocess, sys, tempfile
units = json.load(sys.stdin)
staging = tempfile.mkdtemp(prefix="vce-backup-verify-")
try:
    paths = []
    for name, content in sorted(units.items()):
        paths.append(os.path.join(staging, name))
        with open(paths[-1], "w") as handle:
            handle.write(content)
    proc = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True,
                          text=True, timeout=60)
    output = (proc.stderr + proc.stdout).replace(staging + "/", "")
    print(json.dumps({"rc": proc.returncode, "output": output}))
finally:
    shutil.rmtree(staging)
"""


def check_host_path(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not SAFE_PATH.fullmatch(value) or "/../" in f"{value}/":
        raise SpecError(
            field_name,
            f"must be an absolute path of letters, digits and . _ - / only, got {value!r}",
        )
    return value.rstrip("/") or "/"


@dataclass(frozen=True)
class BackupHost:
    """Where and how schedules live on one KVM host."""

    uri: str
    shell: HostShell
    backup_root: str = DEFAULT_BACKUP_ROOT
    unit_dir: str = DEFAULT_UNIT_DIR
    config_dir: str = DEFAULT_CONFIG_DIR
    runner: str = DEFAULT_RUNNER
    ledger_url: str | None = None


def parse_backup_host(params: Mapping[str, Any]) -> BackupHost:
    def path(name: str, default: str) -> str:
        value = params.get(name)
        return check_host_path(default if value is None else value, name)

    return BackupHost(
        uri=params.get("uri") or DEFAULT_URI,
        shell=HostShell(check_prefix(params.get("host_command"))),
        backup_root=path("backup_root", DEFAULT_BACKUP_ROOT),
        unit_dir=path("unit_dir", DEFAULT_UNIT_DIR),
        config_dir=path("config_dir", DEFAULT_CONFIG_DIR),
        runner=path("runner", DEFAULT_RUNNER),
        ledger_url=params.get("ledger_url") or None,
    )


def read_host_schedules(where: BackupHost) -> dict[str, Any]:
    """Every tenant's schedule files on the host in one read (drift checks all tenants)."""
    return where.shell.json(
        ["python3", "-c", READ_SCRIPT, where.unit_dir, where.config_dir, UNIT_PREFIX],
        "read",
        f"the backup schedules on KVM host {where.uri}",
    )


def tenant_part(host_read: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """One tenant's share of read_host_schedules()."""
    files = {
        path: content
        for path, content in host_read.get("files", {}).items()
        if os.path.basename(path).startswith(prefix)
    }
    enabled = [name for name in host_read.get("enabled", []) if name.startswith(prefix)]
    return {"systemd": host_read.get("systemd"), "files": files, "enabled": enabled}


def unit_base(tenant: str, vm: str, schedule: str) -> str:
    # Declared names cannot contain "_", so the three parts never run into each other.
    return f"{UNIT_PREFIX}{tenant}_{vm}_{schedule}"


@dataclass
class Rendered:
    """A schedule's three files as the declaration makes them."""

    spec: ScheduleSpec
    frequency: str
    config: dict[str, Any]
    files: dict[str, str]  # path -> content
    timer: str  # unit names
    service: str


@dataclass
class Observed:
    systemd: bool
    files: dict[str, str]
    enabled: set[str]
    schedules: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


class BackupSchedulePlanner:
    def __init__(self, ledger: Ledger, host: Host, tenant: str, where: BackupHost) -> None:
        self.ledger = ledger
        self.host = host
        self.tenant = tenant
        self.where = where
        self.obj_host = f"KVM host {where.uri}"

    # -- observe --------------------------------------------------------------------------

    def observe(self, host_read: Mapping[str, Any] | None = None) -> Observed:
        """The tenant's schedule files on the host; from `host_read` (every tenant's, read
        once by read_host_schedules) when given."""
        prefix = f"{UNIT_PREFIX}{self.tenant}_"
        if host_read is not None:
            raw = tenant_part(host_read, prefix)
        else:
            raw = self.where.shell.json(
                ["python3", "-c", READ_SCRIPT, self.where.unit_dir, self.where.config_dir, prefix],
                "read",
                f"the backup schedules of tenant {self.tenant} on {self.obj_host}",
            )
        observed = Observed(bool(raw.get("systemd")), raw.get("files", {}), set(raw["enabled"]))
        for path, content in observed.files.items():
            if not path.endswith(".json"):
                continue
            try:
                config = json.loads(content)
                observed.schedules[(config["vm"], config["schedule"])] = config
            except (ValueError, KeyError, TypeError):
                continue  # not ours or damaged: the declared one is written over it
        return observed

    # -- plan -----------------------------------------------------------------------------

    def render(self, spec: ScheduleSpec, frequency: str, target: str) -> Rendered:
        base = unit_base(self.tenant, spec.vm, spec.name)
        timer, service = f"{base}.timer", f"{base}.service"
        config_path = f"{self.where.config_dir}/{base}.json"
        config = RunnerConfig(
            tenant=self.tenant,
            vm=spec.vm,
            domain=object_name(self.tenant, spec.vm),
            schedule=spec.name,
            uri=self.where.uri,
            root=target,
            disks=spec.disks,
            retention=spec.retention,
            ledger_url=self.where.ledger_url,
            timeout_s=spec.timeout_s,
            connect_uri=on_host_uri(self.where.uri),
        ).as_dict()
        config["calendar"] = spec.calendar
        config["frequency"] = frequency
        what = f"schedule {spec.name} of VM {spec.vm} (tenant {self.tenant})"
        timer_text = "\n".join(
            [
                "[Unit]",
                f"Description=vce.kvm backup timer: {what}",
                "",
                "[Timer]",
                f"OnCalendar={spec.calendar}",
                "Persistent=true",
                f"Unit={service}",
                "",
                "[Install]",
                "WantedBy=timers.target",
                "",
            ]
        )
        service_text = "\n".join(
            [
                "[Unit]",
                f"Description=vce.kvm backup: {what}",
                "After=libvirtd.service virtqemud.service",
                "",
                "[Service]",
                "Type=oneshot",
                f"ExecStart={self.where.runner} run --config {config_path}",
                f"TimeoutStartSec={spec.timeout_s + 300}",
                "Nice=10",
                "IOSchedulingClass=idle",
                "",
            ]
        )
        files = {
            config_path: json.dumps(config, indent=2, sort_keys=True) + "\n",
            f"{self.where.unit_dir}/{timer}": timer_text,
            f"{self.where.unit_dir}/{service}": service_text,
        }
        return Rendered(spec, frequency, config, files, timer, service)

    def allowed_frequencies(self) -> tuple[tuple[str, ...], str]:
        with self.ledger.store.read() as connection:
            record = self.ledger.require_tenant(connection, self.tenant)
            plan = self.ledger.tariff(connection, record.plan)
        if plan is None:
            raise VceError(f"tenant {self.tenant}: its plan {record.plan!r} is not in the ledger")
        return plan.backup_frequencies, plan.name

    def calendar_frequency(self, spec: ScheduleSpec, path: str) -> str:
        key = (tuple(self.where.shell.prefix), spec.calendar)
        known = _calendar_outputs.get(key)
        if known is not None and time.monotonic() - known[0] < CALENDAR_REUSE_S:
            output = known[1]
        else:
            argv = [
                "env", "TZ=UTC", "systemd-analyze", "calendar",
                f"--iterations={CALENDAR_ITERATIONS}", spec.calendar,
            ]  # fmt: skip
            try:
                output = self.where.shell.run(argv, "check", f"calendar {spec.calendar!r}")
            except ApplyError as error:
                reason = str(error).split(": ", 1)[-1]
                raise SpecError(
                    f"{path}calendar", f"invalid calendar expression: {reason}"
                ) from None
            _calendar_outputs[key] = (time.monotonic(), output)
        allowed, plan = self.allowed_frequencies()
        calendar = parse_calendar_output(spec.calendar, output)
        return check_frequency(calendar, allowed, plan, f"{path}calendar")

    def target_of(self, spec: ScheduleSpec, inventory: TenantInventory, path: str) -> str:
        if spec.pool is not None:
            pool_path = inventory.pools.get(spec.pool)
            if pool_path is None:
                raise SpecError(
                    f"{path}pool", f"no directory storage pool {spec.pool!r} on this host"
                )
            return check_under_root(pool_path, self.where.backup_root, f"{path}pool")
        target = spec.target or self.where.backup_root
        return check_under_root(target, self.where.backup_root, f"{path}target")

    def check_vm(
        self,
        spec: ScheduleSpec,
        inventory: TenantInventory,
        declared_disks: Mapping[str, Sequence[str]],
        path: str,
    ) -> None:
        """The VM must be the tenant's (on this host or declared in the same run), with the
        disks the schedule names."""
        libvirt_name = object_name(self.tenant, spec.vm)
        inventory.refuse_intruder("vm", libvirt_name)
        domain = inventory.domains.get(libvirt_name)
        if domain is not None:
            disks = [d.serial or d.target for d in domain.disks if d.device == "disk"]
        elif spec.vm in declared_disks:
            disks = list(declared_disks[spec.vm])
        else:
            raise SpecError(f"{path}vm", f"tenant {self.tenant} has no VM {spec.vm!r} on this host")
        for i, name in enumerate(spec.disks):
            if name not in disks:
                raise SpecError(
                    f"{path}disks[{i}]",
                    f"VM {spec.vm} has no disk {name!r} (it has {', '.join(disks) or 'none'})",
                )

    def verify(self, rendered: Rendered, path: str) -> None:
        units = {
            rendered.timer: rendered.files[f"{self.where.unit_dir}/{rendered.timer}"],
            rendered.service: rendered.files[f"{self.where.unit_dir}/{rendered.service}"],
        }
        outcome = self.where.shell.run(
            ["python3", "-c", VERIFY_SCRIPT],
            "verify",
            f"the units of backup schedule {rendered.spec.name}",
            stdin=json.dumps(units),
        )
        result = json.loads(outcome)
        if result["rc"] != 0:
            detail = result["output"].strip() or f"exit {result['rc']}"
            if "is not executable" in detail and self.where.runner in detail:
                detail = (
                    f"the backup runner {self.where.runner} is not installed on the host "
                    "(the kvm_host role installs it; or set runner)"
                )
            raise SpecError(
                path.rstrip(".") or "name", f"systemd-analyze verify refused the units: {detail}"
            )

    def plan_present(
        self,
        specs: Sequence[ScheduleSpec],
        inventory: TenantInventory,
        observed: Observed,
        declared_disks: Mapping[str, Sequence[str]] | None = None,
        paths: Sequence[str] = (),
    ) -> Plan:
        plan = Plan()
        wanted: list[Rendered] = []
        for i, spec in enumerate(specs):
            path = paths[i] if paths else ""
            self.check_vm(spec, inventory, declared_disks or {}, path)
            target = self.target_of(spec, inventory, path)
            frequency = self.calendar_frequency(spec, path)
            rendered = self.render(spec, frequency, target)
            if self.up_to_date(rendered, observed):
                continue
            self.verify(rendered, path)
            wanted.append(rendered)
        # A schedule new on this host is a "create": its quota is the gate's (check_counted).
        for rendered in wanted:
            before = observed.schedules.get((rendered.spec.vm, rendered.spec.name))
            install = partial(self.install, rendered, observed.systemd, bool(before))
            name = f"{rendered.spec.vm}/{rendered.spec.name}"
            if before and self.summary(before) == self.summary(rendered.config):
                # The schedule is as declared but its files are not: say which, so that the
                # operator knows what went (a timer removed by hand) before it is rewritten.
                files = self.file_drift(rendered, observed)
                clean = {"missing": [], "altered": [], "timer_enabled": True}
                plan.add(Change("backup_schedule", name, "update", field="files",
                                before=files, after=clean, run=install))  # fmt: skip
                continue
            plan.add(
                Change(
                    "backup_schedule",
                    name,
                    "update" if before else "create",
                    field="schedule",
                    before=self.summary(before) if before else None,
                    after=self.summary(rendered.config),
                    run=install,
                )
            )
        return plan

    @staticmethod
    def file_drift(rendered: Rendered, observed: Observed) -> dict[str, Any]:
        """Which of the schedule's files (timer, service, config) are missing or differ from
        the declaration, and whether the timer is enabled."""
        paths = sorted(rendered.files)
        return {
            "missing": [path for path in paths if path not in observed.files],
            "altered": [
                path
                for path in paths
                if path in observed.files and observed.files[path] != rendered.files[path]
            ],
            "timer_enabled": rendered.timer in observed.enabled,
        }

    @staticmethod
    def summary(config: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "calendar": config.get("calendar"),
            "frequency": config.get("frequency"),
            "retention": config.get("retention"),
            "disks": config.get("disks") or "all",
            "target": config.get("root"),
        }

    def up_to_date(self, rendered: Rendered, observed: Observed) -> bool:
        return (
            all(observed.files.get(path) == content for path, content in rendered.files.items())
            and rendered.timer in observed.enabled
        )

    def plan_absent(
        self, names: Sequence[tuple[str, str]], observed: Observed, purge: bool
    ) -> Plan:
        plan = Plan()
        recorded = self.recorded()
        for vm, name in names:
            config = observed.schedules.get((vm, name))
            if config is None and (vm, name) in recorded:
                config = json.loads(recorded[(vm, name)].config)
            if config is None:
                continue
            plan.add(
                Change(
                    "backup_schedule",
                    f"{vm}/{name}",
                    "delete",
                    field="schedule",
                    before=self.summary(config),
                    after=None,
                    run=partial(self.remove, vm, name, observed.systemd),
                )
            )
            if purge:
                root = config.get("root", self.where.backup_root)
                plan.add(
                    Change(
                        "backup_schedule",
                        f"{vm}/{name}",
                        "purge",
                        field="backups",
                        before=f"{root}/{self.tenant}/{vm}/{name}",
                        after=None,
                        run=partial(self.purge, vm, name, root),
                    )
                )
        return plan

    def recorded(self) -> dict[tuple[str, str], Any]:
        with self.ledger.store.read() as connection:
            rows = self.ledger.backup_schedule_rows(connection, self.tenant, self.where.uri)
        return {(vm, name): row for (_host, vm, name), row in rows.items()}

    # -- apply ----------------------------------------------------------------------------

    def write(self, ops: list[dict[str, Any]], what: str) -> None:
        self.where.shell.run(["python3", "-c", WRITE_SCRIPT], "write", what, stdin=json.dumps(ops))

    def modes(self, path: str) -> dict[str, int]:
        """A runner config holds the ledger URL with its password: root's alone, like its
        directory; systemd units are world-readable by design and hold no secret."""
        if path.startswith(f"{self.where.config_dir}/"):
            return {"mode": 0o600, "dir_mode": 0o700}
        return {"mode": 0o644, "dir_mode": 0o755}

    def systemctl(self, args: Sequence[str], what: str) -> None:
        self.where.shell.run(["systemctl", *args], "reload systemd for", what)

    def install(self, rendered: Rendered, systemd: bool, existed: bool) -> None:
        spec = rendered.spec
        what = f"backup schedule {spec.name} of VM {spec.vm}"
        with self.ledger.store.locked(self.tenant) as connection:
            ops: list[dict[str, Any]] = [
                {"op": "write", "path": path, "content": content, **self.modes(path)}
                for path, content in rendered.files.items()
            ]
            ops.append(
                {
                    "op": "link",
                    "path": f"{self.where.unit_dir}/{WANTS_DIR}/{rendered.timer}",
                    "target": f"../{rendered.timer}",
                }
            )
            self.write(ops, what)
            self.ledger.put_backup_schedule(
                connection, self.tenant, self.where.uri, spec.vm, spec.name,
                rendered.frequency, spec.calendar, rendered.config,
            )  # fmt: skip
            self.ledger.event(
                connection, self.tenant,
                "backup_schedule_updated" if existed else "backup_schedule_created",
                {"vm": spec.vm, "name": spec.name, "calendar": spec.calendar},
            )  # fmt: skip
        if systemd:
            self.systemctl(["daemon-reload"], what)
            self.systemctl(["enable", "--now", rendered.timer], what)
            if existed:
                self.systemctl(["restart", rendered.timer], what)

    def remove(self, vm: str, name: str, systemd: bool) -> None:
        base = unit_base(self.tenant, vm, name)
        what = f"backup schedule {name} of VM {vm}"
        if systemd:
            self.systemctl(["disable", "--now", f"{base}.timer"], what)
        self.write(
            [
                {"op": "remove", "path": f"{self.where.unit_dir}/{WANTS_DIR}/{base}.timer"},
                {"op": "remove", "path": f"{self.where.unit_dir}/{base}.timer"},
                {"op": "remove", "path": f"{self.where.unit_dir}/{base}.service"},
                {"op": "remove", "path": f"{self.where.config_dir}/{base}.json"},
            ],
            what,
        )
        if systemd:
            self.systemctl(["daemon-reload"], what)
        with self.ledger.store.locked(self.tenant) as connection:
            self.ledger.drop_backup_schedule(connection, self.tenant, self.where.uri, vm, name)
            self.ledger.event(
                connection, self.tenant, "backup_schedule_removed", {"vm": vm, "name": name}
            )

    def purge(self, vm: str, name: str, root: str) -> None:
        """Delete the schedule's backups and its checkpoints; the ledger marks them pruned."""
        repo = ScheduleRepo(root, self.tenant, vm, name)
        self.write([{"op": "rmtree", "path": str(repo.dir)}], f"the backups of schedule {name}")
        try:
            domain = self.host.conn.lookupByName(object_name(self.tenant, vm))
        except libvirt.libvirtError as error:
            if error.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise ApplyError(f"Failed to find VM {vm}: {libvirt_reason(error)}") from error
            domain = None  # a VM already gone took its checkpoints with it
        if domain is not None:
            drop_schedule_checkpoints(domain, name, None, f"VM {vm}")
        with self.ledger.store.locked(self.tenant) as connection:
            self.ledger.prune_backups(connection, self.tenant, self.where.uri, vm, name)

    def facts(self, observed: Observed) -> dict[str, Any]:
        result = {}
        for (vm, name), config in sorted(observed.schedules.items()):
            base = unit_base(self.tenant, vm, name)
            repo = ScheduleRepo(config.get("root", self.where.backup_root), self.tenant, vm, name)
            result[f"{vm}/{name}"] = {
                **self.summary(config),
                "vm": vm,
                "name": name,
                "timer": f"{base}.timer",
                "service": f"{base}.service",
                "enabled": f"{base}.timer" in observed.enabled,
                "backups": [m.backup_id for m in repo.backups()]
                if not self.where.shell.prefix
                else None,
            }
        return result


def read_backup_schedule(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The VM's backup schedule `name` as its host has it (units, config, backups), or None."""
    tenant = check_name(params.get("tenant"), "tenant")
    vm = check_name(params.get("vm"), "vm")
    name = check_name(params.get("name"), "name")
    where = parse_backup_host(params)
    engine = BackupSchedulePlanner(Ledger.open(where.ledger_url), Host(where.uri), tenant, where)
    return engine.facts(engine.observe()).get(f"{vm}/{name}") or None


def declared_schedule(params: Mapping[str, Any]) -> ScheduleSpec:
    """The schedule a module's (or a Pulumi resource's) parameters declare; the provider's
    Check reads them with this too, so a preview refuses what an apply would."""
    vm = check_name(params.get("vm"), "vm")
    raw = {
        k: params.get(k)
        for k in ("name", "calendar", "retention", "disks", "target", "pool", "timeout_minutes")
        if params.get(k) is not None
    }
    return parse_schedule(raw, "", vm)


def run_backup_schedule(params: Mapping[str, Any], check_mode: bool = False) -> Result:
    tenant = check_name(params.get("tenant"), "tenant")
    vm = check_name(params.get("vm"), "vm")
    name = check_name(params.get("name"), "name")
    where = parse_backup_host(params)
    host = Host(where.uri)
    ledger = Ledger.open(where.ledger_url)
    gate = Gate(ledger, host, tenant, Declaration())
    engine = BackupSchedulePlanner(ledger, host, tenant, where)
    observed = engine.observe()
    if params.get("state") == "absent":
        plan = engine.plan_absent([(vm, name)], observed, bool(params.get("purge_backups")))
    else:
        spec = declared_schedule(params)
        plan = engine.plan_present([spec], host.inventory(tenant), observed)

    def facts(_after: object, applied: bool) -> dict[str, Any]:
        found = engine.facts(engine.observe() if applied else observed)
        return {"backup_schedule": found.get(f"{vm}/{name}", {})}

    return conclude(Run(plan, facts, gate), check_mode)


def plan_environment_backups(
    spec: EnvironmentSpec | None,
    planner: BackupSchedulePlanner,
    inventory: TenantInventory,
    remove_undeclared: bool,
    host_read: Mapping[str, Any] | None = None,
) -> Plan:
    """The environment's schedules (their VMs may be declared in the same run). With prune or
    state absent (`spec` None), the tenant's other schedules on this host are removed;
    backups stay. `host_read`: every tenant's schedule files, already read
    (read_host_schedules)."""
    specs = spec.backup_schedules if spec else ()
    names = [(s.vm, s.name) for s in specs]
    observed = planner.observe(host_read)
    plan = Plan()
    if specs:
        declared_disks = {vm.name: ["boot", *vm.disks] for vm in spec.vms}
        paths = [f"backup_schedules[{i}]." for i in range(len(specs))]
        plan.extend(planner.plan_present(specs, inventory, observed, declared_disks, paths))
    undeclared = sorted((set(observed.schedules) | set(planner.recorded())) - set(names))
    if remove_undeclared:
        plan.extend(planner.plan_absent(undeclared, observed, purge=False))
    elif undeclared:
        plan.warnings.append(
            f"tenant {planner.tenant} has backup schedules no declaration mentions: "
            f"{', '.join(f'{vm}/{name}' for vm, name in undeclared)} "
            "(set prune: true to remove them)"
        )
    return plan
