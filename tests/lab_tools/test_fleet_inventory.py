"""tools/multihost.py's fleet: N hosts over the zones, and the inventory a lab writes of them
(no lab started: names and variables are known from construction and addressing)."""

from __future__ import annotations

import pytest
import yaml

from tools.multihost import MultiHostLab, fleet_hosts, main


def test_a_fleet_spreads_its_hosts_over_the_zones():
    assert fleet_hosts(1) == [("kvm-a1", "zone-a")]
    assert fleet_hosts(5) == [
        ("kvm-a1", "zone-a"), ("kvm-b1", "zone-b"), ("kvm-a2", "zone-a"),
        ("kvm-b2", "zone-b"), ("kvm-a3", "zone-a"),
    ]  # fmt: skip
    assert len(fleet_hosts(8)) == 8


@pytest.mark.parametrize("count", ["0", "9", "two"])
def test_a_fleet_size_out_of_range_is_refused(count, tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        main(["up", str(tmp_path / "lab"), "--hosts", count])
    assert refused.value.code == 2
    assert f"expected 1 to 8 hosts, got {count!r}" in capsys.readouterr().err
    assert not (tmp_path / "lab").exists()


def test_the_inventory_reaches_every_host_over_ssh(tmp_path):
    lab = MultiHostLab(tmp_path / "lab", fleet_hosts(3), prefix="fleetx")
    lab.address_hosts(7)
    path = lab.write_inventory(tmp_path / "hosts.yml", "/usr/bin/python3")
    inventory = yaml.safe_load(path.read_text())["all"]
    hosts = inventory["children"]["kvm_hosts"]["hosts"]
    assert list(hosts) == ["kvm-a1", "kvm-b1", "kvm-a2"]
    a2 = hosts["kvm-a2"]
    assert a2["ansible_connection"] == "ssh" and a2["ansible_host"] == "172.30.7.12"
    assert a2["ansible_pipelining"] is True
    assert a2["vce_uri"].startswith("qemu+ssh://root@172.30.7.12/system?")
    assert a2["vce_host_command"] == [str(lab.ssh_dir / "ssh"), "root@172.30.7.12"]
    assert a2["vce_zone"] == "zone-a" and a2["vce_pool"] == "default"
    assert a2["vce_backup_unit_dir"] == str(tmp_path / "lab" / "kvm-a2" / "backup" / "units")
    zones = inventory["vars"]["vce_zones"]
    assert zones["zone-b"] == {
        "uplink": "up0",
        "public_pools": [
            {"name": "pub-zone-b", "cidr": "203.0.113.96/27", "gateway": "203.0.113.1"}
        ],
    }
