"""The multi-host lab itself: separate libvirt hosts in network namespaces, an underlay that
carries VXLAN between them, an internet namespace that reaches their uplinks, libvirt's
networks (bridge, dnsmasq, firewall) and guests confined to their host, and nothing left
behind after stop(), a failed start or a crash."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from tools import multihost
from tools.libvirtd import _pid_alive, domain_type
from tools.multihost import LabHost, MultiHostLab, cleanup_leftovers, list_netns, netns_pids
from tools.tinyguest import build_base_image, console_ip

pytestmark = pytest.mark.multihost
BOOT_TIMEOUT = 90  # seconds; ~7 s is usual under TCG


@pytest.fixture
def fresh_base() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="vce-mh-", dir="/tmp"))
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
