"""The control plane reaching its KVM hosts over SSH with a key of its own: a real `vce serve`
and a lab of two hosts (two zones, tools/multihost.py), each with its own sshd. The host
records hold qemu+ssh URIs and ssh host commands through the server's own `ssh` wrapper (its
key, its pinned known_hosts; never the operator's key).

Through the API a customer declares a network and a VM: the VM runs on the tenant's host
(libvirt read over SSH with the operator's key agrees), and the cabinet's console shows the
guest's boot lines through qemu+ssh. A backup schedule's units and config are written on the
host through ssh (read back through the host), the unit's runner takes a backup, which is
restored as a new disk (its files read and written on the host through ssh), and a unit
edited on the host is written back by the same declaration again. A host whose sshd is killed
answers 503 `host_unavailable` with Retry-After (an outage, not a refusal), naming no host
detail, for a read and for an action, and works again once sshd is back. No reply,
action, cabinet page or console notice shows the URI, the key, the wrapper or the host."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from vce_server.errors import HOST_RETRY_AFTER
from vce_server.identity import Identity

from tests.support.cabinet import PASSWORD
from tests.support.console import Browser
from tests.support.images import catalogued_guest
from tests.support.ledger import forget_stores, register
from tests.support.server import (
    Server,
    admin_token,
    apply,
    backup_settings,
    error_of,
    running_server,
    succeeded,
    wait_action,
)
from tests.support.ssh_hosts import SshIdentity, register_over_ssh, server_identity
from tools.multihost import LabHost, MultiHostLab, new_lab_dir

pytestmark = [pytest.mark.server, pytest.mark.multihost, pytest.mark.guest]
BOOT_SECONDS = 90  # the guest's first line; ~5 s is usual under TCG
TENANT = f"ssh{os.getpid() % 10000}"
SUBNET = "10.215.7"  # a lab host's own libvirtd: no other test's networks are there
ZONE = "zone-a"
OTHER_ZONE = "zone-b"
FAR = {"cidr": "10.215.9.0/24", "mode": "isolated", "zone": OTHER_ZONE}
SCHEDULE = {"vm": "box", "zone": ZONE, "calendar": "*-*-* 02:30", "retention": {"keep_daily": 7}}
UNIT_BASE = f"vce-backup-{TENANT}_box_nightly"


@dataclass
class SshFleet:
    """The lab, the server's SSH identity, the ledger and everything the customer saw."""

    lab: MultiHostLab
    identity: SshIdentity
    ledger_url: str
    host_dirs: dict[str, Path]
    seen: list[str] = field(default_factory=list)

    @property
    def host(self) -> LabHost:
        """The tenant's host: the only one of its zone."""
        return next(h for h in self.lab.hosts.values() if h.zone == ZONE)

    def secrets(self) -> list[str]:
        """What no customer may see: how the server reaches its hosts, and the hosts."""
        found = [str(self.identity.directory), str(self.lab.base_dir), "qemu+ssh", "command=",
                 "root@", "id_ed25519", "ssh_config", "known_hosts"]  # fmt: skip
        for host in self.lab.hosts.values():
            found += [host.name, host.mgmt_ip, host.netns, str(host.socket_path)]
        return found

    def leaks(self) -> list[tuple[str, str]]:
        return [(s, text) for text in self.seen for s in self.secrets() if s in text]


@pytest.fixture(scope="module")
def ssh_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshFleet]:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    base = new_lab_dir()
    lab = MultiHostLab(base)
    try:
        lab.start()
        state = tmp_path_factory.mktemp("serve-ssh")
        identity = server_identity(state / "ssh", lab)
        url = f"sqlite:///{state / 'ledger.sqlite3'}"
        Ledger.open(url, create=True)
        host_dirs = {name: base / name / "host-files" for name in lab.hosts}
        for name, host in lab.hosts.items():
            register_over_ssh(url, host, identity, backup_settings(host_dirs[name]))
        catalogued_guest(url, *lab.zones)
        register(url, TENANT, backup_frequencies=["daily", "weekly"])
        Identity(Ledger.open(url)).create_user(f"{TENANT}-user", PASSWORD, "customer", TENANT)
        yield SshFleet(lab, identity, url, host_dirs)
    finally:
        forget_stores()
        lab.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """os.environ with `values` set (for the server process to inherit), restored after."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def server(ssh_fleet: SshFleet) -> Iterator[Server]:
    # The server defines the VMs: their console logs where the hosts' libvirtd may write (the
    # domain type it asks of each host through its ssh host command).
    settings = environment(VCE_CONSOLE_LOG_DIR=str(ssh_fleet.host.log_dir / "qemu"))
    log = ssh_fleet.lab.base_dir / "serve.log"
    with settings, running_server(ssh_fleet.ledger_url, log) as started:
        yield started


@pytest.fixture(scope="module")
def api(server: Server, ssh_fleet: SshFleet) -> Iterator[httpx.Client]:
    """The customer's client; every reply's text is kept for the leak check."""

    def keep(reply: httpx.Response) -> None:
        reply.read()
        ssh_fleet.seen.append(reply.text)

    token = admin_token(ssh_fleet.ledger_url, TENANT)
    with server.client(token, event_hooks={"response": [keep]}) as client:
        yield client


@pytest.fixture(scope="module")
def box(api: httpx.Client, ssh_fleet: SshFleet) -> str:
    """The tenant's network and its VM `box` booting the tiny guest, declared through the API."""
    succeeded(api, "/v1/networks/lan", {"cidr": f"{SUBNET}.0/24", "mode": "isolated", "zone": ZONE})
    vm = {
        "vcpus": 1,
        "memory_mib": 160,
        "zone": ZONE,
        "boot_disk": {"image": "tinyguest", "size_gib": 1},
        "nics": [{"network": "lan", "ip": f"{SUBNET}.42"}],
    }
    succeeded(api, "/v1/networks/far", FAR)  # on the other zone's host
    # Last: the console test reads the guest's boot lines, which pass once (~5 s under TCG).
    succeeded(api, "/v1/vms/box", vm)
    return f"{TENANT}_box"


def fingerprint(key: Path) -> str:
    """The key's SHA256 fingerprint, as sshd logs it."""
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(key)], capture_output=True, text=True, check=True
    )
    return listed.stdout.split()[1]


def on_host(host: LabHost, argv: list[str]) -> str:
    """argv's output on the host, run over SSH as the operator (the lab's key)."""
    done = host.ssh(argv)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_vm_declared_through_the_api_runs_on_its_host_and_shows_its_console(
    server: Server, api: httpx.Client, ssh_fleet: SshFleet, box: str
) -> None:
    # libvirt read over SSH, with the operator's key: the VM runs on the tenant's host of
    # zone-a, the network `far` is on the host of zone-b.
    for host in ssh_fleet.lab.hosts.values():
        conn = libvirt.open(host.ssh_uri)
        try:
            domains = {d.name(): d.isActive() for d in conn.listAllDomains(0)}
            networks = {n.name() for n in conn.listAllNetworks(0)}
        finally:
            conn.close()
        ours = host is ssh_fleet.host
        assert domains == ({box: 1} if ours else {}), host.name
        assert networks == ({f"{TENANT}_lan"} if ours else {f"{TENANT}_far"}), host.name
    shown = api.get("/v1/vms/box").json()["object"]
    assert (shown["state"], shown["zone"]) == ("running", ZONE), shown
    # The server logged in with its own key.
    sshd_log = (ssh_fleet.host.sshd_dir / "sshd.log").read_text()
    assert f"Accepted publickey for root from {ssh_fleet.lab.controller_ip}" in sshd_log
    assert fingerprint(ssh_fleet.identity.key) in sshd_log

    customer = Browser(server.url, f"{TENANT}-user")
    with contextlib.closing(customer), customer.open(customer.ticket_url("box")) as console:
        console.read_until(b"VCE-GUEST: ready", BOOT_SECONDS)
        ssh_fleet.seen += console.notices
    assert ssh_fleet.leaks() == []


def test_a_backup_schedule_is_written_on_its_host_through_ssh_and_takes_a_backup(
    server: Server, api: httpx.Client, ssh_fleet: SshFleet, box: str
) -> None:
    succeeded(api, "/v1/backup_schedules/nightly", SCHEDULE)
    host, files = ssh_fleet.host, ssh_fleet.host_dirs[ssh_fleet.host.name]
    timer = on_host(host, ["cat", f"{files}/units/{UNIT_BASE}.timer"])
    assert "OnCalendar=*-*-* 02:30" in timer.splitlines()
    service = on_host(host, ["cat", f"{files}/units/{UNIT_BASE}.service"])
    config_path = f"{files}/config/{UNIT_BASE}.json"
    exec_start = next(line for line in service.splitlines() if line.startswith("ExecStart="))
    assert exec_start == f"ExecStart={files}/bin/vce-backup run --config {config_path}"
    config = json.loads(on_host(host, ["cat", config_path]))
    assert (config["tenant"], config["domain"], config["calendar"]) == (
        TENANT, box, SCHEDULE["calendar"],
    )  # fmt: skip
    # The runner runs on the host: it reaches the daemon there, not over SSH.
    assert config["connect_uri"] == f"qemu:///system?socket={host.socket_path}"
    # The config holds the ledger's URL: root's alone.
    assert on_host(host, ["stat", "-c", "%a", config_path]).strip() == "600"
    link = f"{files}/units/timers.target.wants/{UNIT_BASE}.timer"
    assert on_host(host, ["readlink", link]).strip() == f"../{UNIT_BASE}.timer"

    # The timer's service, run on the host as systemd would start it.
    started = time.monotonic()
    run = json.loads(on_host(host, shlex.split(exec_start.removeprefix("ExecStart="))))
    assert (run["status"], run["kind"]) == ("ok", "full"), run
    backups = api.get("/v1/backups", params={"vm": "box"}).json()["backups"]
    assert [b["schedule"] for b in backups] == ["nightly"], backups
    # Restored as a new disk: the backup's files are read and the disk written on the host,
    # through the server's ssh.
    restore = api.post(f"/v1/backups/{backups[0]['id']}/restore", json={"new_disk": "restored"})
    assert restore.status_code == 202, restore.text
    assert wait_action(api, restore.json()["action"]["id"])["status"] == "succeeded"
    assert api.get("/v1/disks/restored").status_code == 200
    conn = libvirt.open(host.ssh_uri)
    try:
        volume = conn.storageVolLookupByPath(str(host.pool_dir / f"{TENANT}_restored.qcow2"))
        assert volume.info()[1] == 1 << 30  # the boot disk's size
    finally:
        conn.close()
    assert time.monotonic() - started < 60
    # The cabinet's pages of the VM, the objects and the backup name no host detail either.
    customer = Browser(server.url, f"{TENANT}-user")
    with contextlib.closing(customer):
        for page in ("/panel/vms/box", "/panel/objects", "/panel/backups",
                     f"/panel/backups/{backups[0]['id']}/restore"):  # fmt: skip
            shown = customer.client.get(page)
            assert shown.status_code == 200, (page, shown.text)
            ssh_fleet.seen.append(shown.text)

    # Drift: someone edits the timer on the host; the same declaration again writes it back
    # (read and written through ssh), and once more changes nothing.
    timer_path = f"{files}/units/{UNIT_BASE}.timer"
    on_host(host, ["sed", "-i", "s/02:30/04:00/", timer_path])
    assert succeeded(api, "/v1/backup_schedules/nightly", SCHEDULE)["plan"] != []
    assert on_host(host, ["cat", timer_path]) == timer
    assert succeeded(api, "/v1/backup_schedules/nightly", SCHEDULE)["plan"] == []
    assert ssh_fleet.leaks() == []


def test_a_host_lost_to_ssh_is_a_scrubbed_503_to_retry_and_works_again(
    api: httpx.Client, ssh_fleet: SshFleet, box: str
) -> None:
    lab, host = ssh_fleet.lab, ssh_fleet.host
    lab.kill_sshd(host.name)
    try:
        # An outage, not a refusal: 503, when to retry, a stable code; libvirt's reason stays
        # (the host refused the connection), its address does not.
        reply = api.get("/v1/vms/box")
        error = error_of(reply)
        assert (reply.status_code, error["code"]) == (503, "host_unavailable"), error
        assert reply.headers["Retry-After"] == str(HOST_RETRY_AFTER)
        unreachable = "Failed to connect to libvirt at zone zone-a: "
        assert unreachable in error["message"], error
        action = apply(api, "/v1/networks/lan2", {"cidr": "10.215.8.0/24", "zone": ZONE})
        assert action["status"] == "failed", action
        assert action["error"]["code"] == "host_unavailable", action
        assert unreachable in action["error"]["message"], action
        # The other zone's host is not the lost one.
        assert api.get("/v1/networks/far", params={"zone": OTHER_ZONE}).status_code == 200
        assert "Traceback" not in json.dumps(action), action
    finally:
        lab.start_sshd(host.name)
    assert api.get("/v1/vms/box").json()["object"]["state"] == "running"
    succeeded(api, "/v1/networks/lan2", {"cidr": "10.215.8.0/24", "mode": "isolated", "zone": ZONE})
    assert ssh_fleet.leaks() == []
