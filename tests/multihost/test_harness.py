"""The multi-host lab itself: separate libvirt hosts in network namespaces, an underlay that
carries VXLAN between them, an internet namespace that reaches their uplinks, libvirt's
networks (bridge, dnsmasq, firewall) and guests confined to their host, and nothing left
behind after stop(), a failed start or a crash. And the way controllers reach the hosts: an
sshd of its own on each host (its own key, keys only, the management address only), pinned
host keys, and no way from a tenant's network to any sshd or to the controller.

The checks of the lab's wiring act at the hosts' consoles (LabHost.run, ip netns exec): they
test what SSH itself stands on."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine

from tests.support.ledger import register
from tools import multihost
from tools.attacker import Probe, listening, plugged, probe_all
from tools.cleanup import remove_prefixed
from tools.libvirtd import _pid_alive, domain_type
from tools.multihost import (
    LabHost,
    MultiHostLab,
    cleanup_leftovers,
    list_netns,
    netns_pids,
    new_lab_dir,
    run_captured,
)
from tools.tinyguest import build_base_image, console_ip

pytestmark = pytest.mark.multihost
BOOT_TIMEOUT = 90  # seconds; ~7 s is usual under TCG


@pytest.fixture
def fresh_base() -> Iterator[Path]:
    base = new_lab_dir()
    yield base
    shutil.rmtree(base, ignore_errors=True)


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.25) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def pings(run: Callable[..., subprocess.CompletedProcess[str]], *args: str) -> bool:
    """ping -c 1 -W 1, up to three tries (the first may wait for ARP or VXLAN learning)."""
    return any(run(["ping", "-c", "1", "-W", "1", *args]).returncode == 0 for _try in range(3))


def root_run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)


@contextlib.contextmanager
def libvirt_network(host: LabHost, name: str, bridge: str, dhcp_hosts: str = "") -> Iterator[None]:
    """An isolated libvirt network 192.0.2.0/24 with DHCP on host, removed afterwards."""
    xml = f"""<network>
      <name>{name}</name>
      <bridge name='{bridge}'/>
      <ip address='192.0.2.1' netmask='255.255.255.0'>
        <dhcp><range start='192.0.2.100' end='192.0.2.150'/>{dhcp_hosts}</dhcp>
      </ip>
    </network>"""
    conn = host.connect()
    network = conn.networkDefineXML(xml)
    try:
        network.create()
        yield
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            network.destroy()
        network.undefine()
        conn.close()


def lab_pids(lab: MultiHostLab) -> list[int]:
    return [pid for name in lab.netns_names for pid in netns_pids(name)]


def assert_nothing_left(lab: MultiHostLab, pids: list[int]) -> None:
    assert [n for n in list_netns() if n.startswith(f"{lab.prefix}-")] == []
    assert [p for p in pids if _pid_alive(p)] == []
    assert root_run(["pgrep", "-f", str(lab.base_dir)]).stdout == ""
    # Every lab link lived in the lab's namespaces; none may have reached the host's.
    lines = root_run(["ip", "-o", "link", "show", "type", "veth"]).stdout.splitlines()
    veths = {line.split(":")[1].strip().split("@")[0] for line in lines}
    assert veths.isdisjoint({"ul0", "up0", "h0", "h1"})
    assert lab.prefix not in root_run(["ip", "-o", "link"]).stdout
    assert not (lab.base_dir / multihost.STATE_FILE).exists()
    assert not any((lab.base_dir / name).exists() for name in lab.hosts)
    assert not list(multihost.ETC_NETNS.glob(f"{lab.prefix}-*"))


def test_each_host_answers_with_its_own_libvirtd(lab: MultiHostLab):
    assert list(lab.hosts) == ["kvm-a", "kvm-b"]
    assert lab.zones["zone-a"]["pool"] == "203.0.113.64/27"
    assert lab.zones["zone-b"] == {
        "pool": "203.0.113.96/27",
        "gateway": "203.0.113.1",
        "uplink": "up0",
        "hosts": ["kvm-b"],
    }
    for host in lab.hosts.values():
        conn = libvirt.open(host.uri)
        try:
            started = time.monotonic()
            assert conn.getHostname() == host.name
            assert time.monotonic() - started < 2  # no DNS time-out behind it
            assert lab.hosts["kvm-b"].underlay_ip in host.run(["getent", "hosts", "kvm-b"]).stdout
            pool = conn.storagePoolLookupByName("default")
            assert pool.isActive()
            assert str(host.pool_dir) in pool.XMLDesc()
        finally:
            conn.close()


def test_libvirt_network_stays_in_its_host_namespace(lab: MultiHostLab):
    a, b = lab.hosts["kvm-a"], lab.hosts["kvm-b"]
    bridge = f"{lab.prefix}iso"
    with libvirt_network(a, "iso", bridge):
        # The bridge, with its address, exists on kvm-a only.
        assert "192.0.2.1/24" in a.run(["ip", "-br", "addr", "show", "dev", bridge]).stdout
        assert b.run(["ip", "link", "show", bridge]).returncode != 0
        assert root_run(["ip", "link", "show", bridge]).returncode != 0
        conn_b = b.connect()
        try:
            assert conn_b.listAllNetworks() == []
        finally:
            conn_b.close()
        # dnsmasq serves it from inside kvm-a's namespace.
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in netns_pids(a.netns)]
        assert any(b"dnsmasq" in c and b"/iso.conf" in c for c in commands), commands
        # libvirt's firewall rules (iptables-nft) land in kvm-a's ruleset, nowhere else.
        assert f'iifname "{bridge}"' in a.run(["nft", "list", "ruleset"]).stdout
        assert bridge not in b.run(["nft", "list", "ruleset"]).stdout
        assert bridge not in root_run(["nft", "list", "ruleset"]).stdout
    assert a.run(["ip", "link", "show", bridge]).returncode != 0


def test_underlay_carries_large_frames_between_hosts(lab: MultiHostLab):
    a, b = lab.hosts["kvm-a"], lab.hosts["kvm-b"]
    # 1500 bytes of payload with DF set: only passes with the 1550-byte underlay MTU.
    assert pings(a.run, "-M", "do", "-s", "1500", b.underlay_ip)
    assert "mtu 1550" in b.run(["ip", "link", "show", "ul0"]).stdout


def test_internet_reaches_every_uplink(lab: MultiHostLab):
    for host in lab.hosts.values():
        assert "state UP" in host.run(["ip", "link", "show", host.uplink]).stdout
        assert pings(lab.inet_run, host.public_ip)
        assert pings(host.run, "203.0.113.1")


def test_vxlan_between_hosts_carries_a_full_1500_byte_packet(lab: MultiHostLab):
    a, b = lab.hosts["kvm-a"], lab.hosts["kvm-b"]
    ends = ((a, b, "198.51.100.1/24"), (b, a, "198.51.100.2/24"))
    try:
        for here, there, address in ends:
            vxlan = ["id", "9", "local", here.underlay_ip, "remote", there.underlay_ip]
            vxlan += ["dstport", "4789", "dev", here.underlay_dev]
            for argv in (
                ["ip", "link", "add", "vx9", "type", "vxlan", *vxlan],
                ["ip", "addr", "add", address, "dev", "vx9"],
                ["ip", "link", "set", "vx9", "up"],
            ):
                here.run(argv, check=True)
        assert "mtu 1500" in a.run(["ip", "link", "show", "vx9"]).stdout
        assert pings(a.run, "-M", "do", "-s", "1472", "198.51.100.2")
    finally:
        for host in (a, b):
            host.run(["ip", "link", "del", "vx9"])
    assert a.run(["ip", "link", "show", "vx9"]).returncode != 0


@pytest.mark.guest
def test_guest_boots_and_gets_a_lease_inside_its_host(lab: MultiHostLab):
    host = lab.hosts["kvm-a"]
    base_image = build_base_image()
    disk = host.pool_dir / "mhguest.qcow2"
    overlay = ["-f", "qcow2", "-b", str(base_image), "-F", "qcow2", str(disk)]
    subprocess.run(["qemu-img", "create", "-q", *overlay], check=True, timeout=30)
    console = host.log_dir / "qemu" / "mhguest.console.log"
    mac = "52:54:00:4d:48:2a"
    reservation = f"<host mac='{mac}' ip='192.0.2.42'/>"
    domain_xml = f"""<domain type='{domain_type()}'>
      <name>mhguest</name>
      <memory unit='MiB'>160</memory>
      <vcpu>1</vcpu>
      <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
      <features><acpi/><apic/></features>
      <devices>
        <disk type='file' device='disk'>
          <driver name='qemu' type='qcow2'/><source file='{disk}'/>
          <target dev='vda' bus='virtio'/>
        </disk>
        <interface type='network'>
          <mac address='{mac}'/><source network='lan'/><model type='virtio'/>
        </interface>
        <serial type='pty'><log file='{console}' append='on'/><target port='0'/></serial>
        <console type='pty'><target type='serial' port='0'/></console>
      </devices>
    </domain>"""
    with libvirt_network(host, "lan", f"{lab.prefix}lan", reservation):
        conn = host.connect()
        domain = conn.defineXML(domain_xml)
        try:
            domain.create()

            def leased() -> str | None:
                return console_ip(console.read_text(errors="replace")) if console.exists() else None

            assert wait_for(leased, BOOT_TIMEOUT) == "192.0.2.42", console.read_text()[-2000:]
            assert pings(host.run, "192.0.2.42")
            # Its tap was made in kvm-a's namespace.
            assert "vnet" in host.run(["ip", "-o", "link", "show", "type", "tun"]).stdout
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                domain.destroy()
            domain.undefine()
            conn.close()


def test_stop_removes_everything_and_is_idempotent(fresh_base: Path):
    lab = MultiHostLab(fresh_base)
    lab.start()
    with libvirt_network(lab.hosts["kvm-b"], "iso", f"{lab.prefix}iso"):
        pids = lab_pids(lab)
    assert len(pids) >= 4  # at least virtlogd + libvirtd on each host
    lab.stop()
    assert_nothing_left(lab, pids)
    lab.stop()


def test_failed_start_cleans_up(fresh_base: Path, monkeypatch: pytest.MonkeyPatch):
    lab = MultiHostLab(fresh_base)
    seen: list[int] = []

    def failing_pool(conn: libvirt.virConnect, name: str, path: Path) -> bool:
        seen.extend(lab_pids(lab))
        if "kvm-b" in str(path):
            raise RuntimeError("pool refused")
        return True

    monkeypatch.setattr(multihost, "ensure_pool", failing_pool)
    with pytest.raises(RuntimeError, match="pool refused"):
        lab.start()
    assert seen
    assert_nothing_left(lab, seen)


def test_cleanup_leftovers_after_a_crash(fresh_base: Path):
    lab = MultiHostLab(fresh_base).start()
    pids = lab_pids(lab)
    # A crashed run knows only its prefix and directory (lab.json there).
    assert sorted(cleanup_leftovers(lab.prefix, fresh_base)) == sorted(lab.netns_names)
    assert_nothing_left(lab, pids)


# ---- SSH: how controllers reach the hosts

SSH = "/usr/bin/ssh"
# A new connection each time, so its host key is checked (a shared one would be reused as is).
NO_SHARING = ("-o", "ControlMaster=no", "-o", "ControlPath=none")
LISTENER_PORT = 8080  # a listener at the controller's management address: dropped or closed?


def ssh_to(
    lab: MultiHostLab, host: LabHost, *options: str, command: str = "true"
) -> subprocess.CompletedProcess[str]:
    """The machine's ssh with the lab's config, options given first (so they win)."""
    argv = [SSH, "-F", str(lab.ssh_dir / "ssh_config"), *NO_SHARING, *options]
    argv += [f"root@{host.mgmt_ip}", command]
    return run_captured(argv, timeout=30)


def pinned_keys(lab: MultiHostLab) -> dict[str, str]:
    """Host name -> the ed25519 key the lab's known_hosts pins for it (by address and name)."""
    pinned = {}
    for line in (lab.ssh_dir / "known_hosts").read_text().splitlines():
        names, kind, key = line.split()
        assert kind == "ssh-ed25519"
        address, name = names.split(",")
        assert lab.hosts[name].mgmt_ip == address
        pinned[name] = key
    return pinned


def test_every_host_runs_an_sshd_of_its_own_on_its_management_address_only(lab: MultiHostLab):
    pinned = pinned_keys(lab)
    assert sorted(pinned) == sorted(lab.hosts) and len(set(pinned.values())) == len(pinned)
    for host in lab.hosts.values():
        scanned = run_captured(["ssh-keyscan", "-T", "5", "-t", "ed25519", host.mgmt_ip])
        assert scanned.stdout.split()[1:] == ["ssh-ed25519", pinned[host.name]], scanned.stderr
        # A session runs on that host: its management port, its libvirtd through qemu+ssh.
        shown = host.ssh(["ip", "-br", "-4", "addr", "show", "dev", multihost.MGMT_DEV])
        assert f"{host.mgmt_ip}/24" in shown.stdout, shown.stderr
        conn = libvirt.open(host.ssh_uri)
        try:
            assert conn.getHostname() == host.name
        finally:
            conn.close()
        # At the host's console, the ground truth: one listener on port 22, the management
        # address (not the underlay, not the uplink, not a tenant's gateway).
        listeners = host.run(["ss", "-Hltn", "sport = :22"], check=True).stdout.splitlines()
        assert [line.split()[3] for line in listeners] == [f"{host.mgmt_ip}:22"]
        other = next(h for h in lab.hosts.values() if h is not host)
        assert tcp_from(other, host.mgmt_ip, 22)
        assert not tcp_from(other, host.underlay_ip, 22)


def tcp_from(host: LabHost, address: str, port: int) -> bool:
    """A TCP connection from inside `host` (at its console) to address:port is accepted."""
    code = f"import socket; socket.create_connection(({address!r}, {port}), timeout=2)"
    return host.run([sys.executable, "-c", code]).returncode == 0


def test_a_host_key_other_than_the_pinned_one_is_refused_and_nothing_runs(lab, tmp_path):
    a, b = lab.hosts["kvm-a"], lab.hosts["kvm-b"]
    # kvm-b's address pinned to kvm-a's key: what a man in the middle (or a reinstalled host)
    # presents, as far as the controller can tell.
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{b.mgmt_ip},{b.name} ssh-ed25519 {pinned_keys(lab)[a.name]}\n")
    marker = tmp_path / "ran"
    refused = ssh_to(lab, b, "-o", f"UserKnownHostsFile={wrong}", command=f"touch {marker}")
    assert refused.returncode == 255, refused
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr, refused.stderr
    assert "Host key verification failed" in refused.stderr
    # A host no known_hosts line pins is refused too (StrictHostKeyChecking yes, never ask).
    unknown = tmp_path / "empty"
    unknown.write_text("")
    refused = ssh_to(lab, b, "-o", f"UserKnownHostsFile={unknown}", command=f"touch {marker}")
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr
    assert not marker.exists()
    # libvirt through qemu+ssh with that ssh: no connection.
    wrapper = tmp_path / "ssh"
    wrapper.write_text(
        f"#!/bin/sh\nexec {SSH} -F {lab.ssh_dir / 'ssh_config'} {' '.join(NO_SHARING)} "
        f'-o UserKnownHostsFile={wrong} "$@"\n'
    )
    wrapper.chmod(0o700)
    uri = b.ssh_uri.replace(f"command={lab.ssh_dir / 'ssh'}", f"command={wrapper}")
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(uri)
    # The right key still works.
    assert ssh_to(lab, b, command=f"test ! -e {marker}").returncode == 0


def test_passwords_and_unknown_keys_are_refused(lab, tmp_path):
    b = lab.hosts["kvm-b"]
    # The server offers public keys only: no password, no keyboard-interactive.
    password = ssh_to(
        lab, b, "-o", "PubkeyAuthentication=no",
        "-o", "PreferredAuthentications=password,keyboard-interactive",
    )  # fmt: skip
    assert password.returncode == 255
    assert "Permission denied (publickey)." in password.stderr, password.stderr
    stranger = tmp_path / "id_ed25519"
    multihost.keygen(stranger, "stranger")
    # IdentityFile adds to the config's: a copy of the config with the stranger's key only.
    config = (lab.ssh_dir / "ssh_config").read_text()
    own_key = f"IdentityFile {lab.ssh_dir / 'id_ed25519'}"
    assert own_key in config
    strangers = tmp_path / "ssh_config"
    strangers.write_text(config.replace(own_key, f"IdentityFile {stranger}"))
    unknown_key = run_captured(
        [SSH, "-F", str(strangers), *NO_SHARING, f"root@{b.mgmt_ip}", "true"]
    )
    assert "Permission denied (publickey)." in unknown_key.stderr, unknown_key.stderr
    assert "Authentications that can continue: publickey\n" in ssh_to(lab, b, "-v").stderr


def test_a_guest_reaches_no_sshd_of_any_host_and_not_the_controller(lab, ledger_url):
    """From an attacker namespace on a tenant's routed and NAT networks of kvm-a (a guest with
    root), with the guard as the lab's hosts have it: no host's management address answers
    (sshd on 22, ping), nor the controller's (a listener, so a drop is not a closed port)."""
    kvm_a = lab.hosts["kvm-a"]
    pool = {"name": "pub", "cidr": lab.zones[kvm_a.zone]["pool"], "gateway": multihost.INET_GATEWAY}
    zone = {"uplink": kvm_a.uplink, "public_pools": [pool]}
    tenant = "sshprobe"
    networks = {"lan": ("routed", "10.66.1"), "nat": ("nat", "10.66.2")}
    shared = {"uri": kvm_a.ssh_uri, "host_command": kvm_a.ssh_command, "tenant": tenant,
              "zone": kvm_a.zone, "zone_config": zone}  # fmt: skip
    register(ledger_url, tenant)
    management = [h.mgmt_ip for h in lab.hosts.values()]
    probes = [Probe("dns", "", 53)]  # the own gateway's DNS: the attacker is on the wire
    probes += [
        Probe(kind, ip, 22 if kind == "tcp" else 0) for ip in management for kind in ("tcp", "ping")
    ]
    probes += [Probe("tcp", lab.controller_ip, LISTENER_PORT), Probe("ping", lab.controller_ip)]
    try:
        engine.run_environment(
            {**shared, "networks": [{"name": n, "cidr": f"{net}.0/24", "mode": mode}
                                    for n, (mode, net) in networks.items()]}
        )  # fmt: skip
        conn = libvirt.open(kvm_a.ssh_uri)
        bridges = {n: conn.networkLookupByName(f"{tenant}_{n}").bridgeName() for n in networks}
        conn.close()
        with listening(None, [lab.controller_ip], LISTENER_PORT):
            # The listener answers from a host's side of the management network.
            assert tcp_from(kvm_a, lab.controller_ip, LISTENER_PORT)
            for name, (_mode, net) in networks.items():
                gateway = f"{net}.1"
                asked = [replace(p, ip=gateway) if p.kind == "dns" else p for p in probes]
                netns = f"{lab.prefix}-g{name}"
                with plugged(kvm_a.netns, bridges[name], f"{net}.200/24", gateway, netns) as guest:
                    answers = dict(zip(asked, probe_all(guest, asked), strict=True))
                expected = {p: p.kind == "dns" for p in asked}
                assert answers == expected, f"from {name}: {answers}"
    finally:
        engine.run_environment({**shared, "state": "absent"})
        remove_prefixed(libvirt.open(kvm_a.ssh_uri), f"{tenant}_")
