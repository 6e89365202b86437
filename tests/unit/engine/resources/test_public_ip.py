"""Public IPs on libvirt's test driver, their nft and ip commands on a stand-in host: an address
allocated in the ledger, bound to the VM's NIC, re-bound after drift, released; refusals with
the field."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.core.plan import UNKNOWN
from ansible_collections.vce.kvm.plugins.module_utils.core.quota import QuotaExceeded
from ansible_collections.vce.kvm.plugins.module_utils.core.zones import (
    parse_public_ip,
    parse_public_zone,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.public_ip import (
    run_public_ip,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import events, public_ips
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.images import make_image
from tests.support.kvm_hosts import host_file
from tests.support.ledger import register
from tests.support.standin_host import StandInHost

from .conftest import URI

ZONE = {
    "uplink": "up0",
    "public_pools": [
        {"name": "pub-a", "cidr": "203.0.113.64/29", "gateway": "203.0.113.65",
         "exclude": ["203.0.113.66"]},
        {"name": "pub-b", "cidr": "203.0.113.72/30", "gateway": "203.0.113.73"},
    ],
}  # fmt: skip
FIRST, SECOND = "203.0.113.67", "203.0.113.68"


def environment(tenant, image, mode="routed", ip="10.20.0.10"):
    network = {"name": "lan", "cidr": "10.20.0.0/24", "mode": mode}
    nic = {"network": "lan"}
    if ip:
        nic["ip"] = ip
    return {
        "uri": URI,
        "tenant": tenant,
        "default_pool": "default-pool",
        "networks": [network],
        "vms": [
            {"name": "web1", "vcpus": 1, "memory_mib": 128,
             "boot_disk": {"image": image, "size_gib": 1}, "nics": [nic]},
        ],
    }  # fmt: skip


class Lab:
    def __init__(self, tmp_path, ledger_url):
        self.ledger_url = ledger_url
        self.image = tmp_path / "base.qcow2"
        make_image(self.image)
        self.host = StandInHost(tmp_path / "kvm", {"up0": 1500, "up1": 1500})

    def vm(self, tenant="acme", uplink="up0", **options):
        declared = environment(tenant, str(self.image), **options)
        facade.run_environment({**declared, **self.zone(uplink)})

    def zone(self, uplink="up0", host=None):
        """The run settings of zone-a (a routed network is routed to its uplink)."""
        return {
            "ledger_url": self.ledger_url,
            "zone": "zone-a",
            "zone_config": {**ZONE, "uplink": uplink},
            "host_command": (host or self.host).prefix,
        }

    def params(self, name="web", tenant="acme", **extra):
        return {
            "uri": URI,
            "tenant": tenant,
            "ledger_url": self.ledger_url,
            "name": name,
            "vm": "web1",
            "zone": "zone-a",
            "zone_config": ZONE,
            "host_command": self.host.prefix,
            **extra,
        }

    def rows(self):
        with Ledger.open(self.ledger_url).store.read() as connection:
            query = sa.select(public_ips).order_by(public_ips.c.address)
            return [
                (r.tenant, r.name, r.address, r.pool, r.vm, r.private_ip)
                for r in connection.execute(query)
            ]

    def event_kinds(self):
        with Ledger.open(self.ledger_url).store.read() as connection:
            query = sa.select(events.c.kind).where(events.c.kind.like("public_ip%"))
            return sorted(r.kind for r in connection.execute(query))


@pytest.fixture
def lab(tmp_path, acme):
    lab = Lab(tmp_path, acme)
    lab.vm()
    return lab


def test_check_mode_plans_allocation_and_binding_and_records_nothing(lab):
    result = run_public_ip(lab.params(), check_mode=True)
    assert [(c["action"], c["field"], c["after"]) for c in result.plan] == [
        ("allocate", "address", UNKNOWN),
        ("bind", "binding", f"{UNKNOWN} -> 10.20.0.10"),
    ]
    assert result.facts == {"public_ip": {}}
    assert lab.rows() == []


def test_the_first_free_address_is_allocated_bound_and_then_unchanged(lab):
    result = run_public_ip(lab.params())
    assert result.changed
    assert result.facts["public_ip"] == {
        "name": "web",
        "address": FIRST,
        "pool": "pub-a",
        "zone": "zone-a",
        "vm": "web1",
        "private_ip": "10.20.0.10",
        "bound": True,
    }
    assert lab.rows() == [("acme", "web", FIRST, "pub-a", "web1", "10.20.0.10")]
    assert lab.event_kinds() == ["public_ip_allocated"]
    again = run_public_ip(lab.params())
    assert (again.changed, again.plan) == (False, [])
    assert again.facts["public_ip"]["bound"] is True
    # The next one gets the next free address.
    other = run_public_ip(lab.params(name="api"))
    assert other.facts["public_ip"]["address"] == SECOND


def test_a_binding_lost_on_the_host_is_bound_again(lab):
    run_public_ip(lab.params())
    lab.host.change(lambda state: state["links"]["up0"].update(addrs=[]))
    result = run_public_ip(lab.params())
    assert [(c["action"], c["before"], c["after"]) for c in result.plan] == [
        ("bind", f"{FIRST} -> 10.20.0.10", f"{FIRST} -> 10.20.0.10")
    ]
    assert result.facts["public_ip"]["bound"] is True
    lab.host.change(lambda state: state.update(rules=[]))
    assert [c["action"] for c in run_public_ip(lab.params()).plan] == ["bind"]
    assert not run_public_ip(lab.params()).changed


def test_release_unbinds_and_frees_the_address(lab):
    run_public_ip(lab.params())
    result = run_public_ip(lab.params(state="absent"))
    assert [(c["action"], c["field"], c["before"]) for c in result.plan] == [
        ("unbind", "binding", f"{FIRST} -> 10.20.0.10"),
        ("release", "address", FIRST),
    ]
    assert result.facts == {"public_ip": {}}
    assert lab.rows() == []
    assert lab.event_kinds() == ["public_ip_allocated", "public_ip_released"]
    assert not run_public_ip(lab.params(state="absent")).changed
    # Free again: the next allocation gets it back.
    assert run_public_ip(lab.params(name="api")).facts["public_ip"]["address"] == FIRST


def test_a_requested_address_is_held_and_never_given_twice(lab):
    result = run_public_ip(lab.params(address="203.0.113.74"))
    assert result.facts["public_ip"]["pool"] == "pub-b"
    assert lab.rows() == [("acme", "web", "203.0.113.74", "pub-b", "web1", "10.20.0.10")]
    assert not run_public_ip(lab.params(address="203.0.113.74")).changed
    with pytest.raises(SpecError, match="changing the address means releasing it") as caught:
        run_public_ip(lab.params(address=FIRST), check_mode=True)
    assert caught.value.field == "address"
    with pytest.raises(SpecError, match=r"203\.0\.113\.74 is already taken") as caught:
        run_public_ip(lab.params(name="api", address="203.0.113.74"), check_mode=True)
    assert caught.value.field == "address"


def test_a_full_zone_is_refused(lab):
    tiny = {"uplink": "up0", "public_pools": [ZONE["public_pools"][1]]}
    assert run_public_ip(lab.params(zone_config=tiny)).facts["public_ip"]["address"] == (
        "203.0.113.74"
    )
    with pytest.raises(SpecError, match="zone zone-a's pools are exhausted") as caught:
        run_public_ip(lab.params(name="api", zone_config=tiny), check_mode=True)
    assert caught.value.field == "zone_config.public_pools"


def test_the_public_ips_quota_is_enforced(tmp_path, ledger_url, connections):
    register(ledger_url, "acme", public_ips=0)
    lab = Lab(tmp_path, ledger_url)
    lab.vm()
    with pytest.raises(QuotaExceeded, match="public IPs"):
        run_public_ip(lab.params(), check_mode=True)
    assert lab.rows() == []


def test_a_vm_not_on_a_routed_network_is_refused(tmp_path, acme):
    lab = Lab(tmp_path, acme)
    lab.vm(mode="nat")
    with pytest.raises(SpecError, match="a public IP needs a routed network") as caught:
        run_public_ip(lab.params(), check_mode=True)
    assert caught.value.field == "network"


def test_a_routed_network_made_under_another_uplink_takes_the_zones_public_ip(tmp_path, acme):
    """A routed network is tied to no interface: the zone's uplink now is where its public
    IPs go (and the guard lets it out), whichever the zone named when it was made."""
    lab = Lab(tmp_path, acme)
    lab.vm(uplink="up1")
    [allocate, bind] = run_public_ip(lab.params(), check_mode=True).plan
    assert (allocate["action"], bind["action"]) == ("allocate", "bind")


def test_an_unknown_vm_or_network_is_refused(lab):
    with pytest.raises(SpecError, match="unknown VM 'db1' of tenant 'acme'") as caught:
        run_public_ip(lab.params(vm="db1"), check_mode=True)
    assert caught.value.field == "vm"
    with pytest.raises(SpecError, match="VM web1 has no NIC on network dmz") as caught:
        run_public_ip(lab.params(network="dmz"), check_mode=True)
    assert caught.value.field == "network"


def test_an_environment_binds_its_public_ips_and_releases_undeclared_ones_with_prune(lab):
    declared = {
        **environment("acme", str(lab.image)),
        "ledger_url": lab.ledger_url,
        "zone": "zone-a",
        "zone_config": ZONE,
        "host_command": lab.host.prefix,
        "public_ips": [{"name": "web", "vm": "web1"}],
    }
    checked = facade.run_environment(declared, check_mode=True)
    assert [(c["kind"], c["action"]) for c in checked.plan] == [
        ("public_ip", "allocate"),
        ("public_ip", "bind"),
    ]
    made = facade.run_environment(declared)
    assert made.facts["environment"]["public_ips"]["web"]["address"] == FIRST
    assert made.facts["environment"]["public_ips"]["web"]["bound"] is True
    assert not facade.run_environment(declared).changed
    undeclared = {**declared, "public_ips": []}
    kept = facade.run_environment(undeclared, check_mode=True)
    assert not kept.changed
    assert kept.warnings == [
        "tenant acme has public IPs no declaration mentions: web (set prune: true to release them)"
    ]
    pruned = facade.run_environment({**undeclared, "prune": True})
    assert [c["action"] for c in pruned.plan] == ["unbind", "release"]
    assert lab.rows() == []


def test_an_environment_checks_the_vms_it_declares(lab):
    declared = {
        **environment("acme", str(lab.image)),
        "ledger_url": lab.ledger_url,
        "zone": "zone-a",
        "zone_config": ZONE,
        "host_command": lab.host.prefix,
        "public_ips": [{"name": "web", "vm": "web1"}, {"name": "web", "vm": "web1"}],
    }
    with pytest.raises(SpecError, match="public IP 'web' is declared twice"):
        facade.run_environment(declared, check_mode=True)
    isolated = environment("acme", str(lab.image), mode="isolated")
    without_zone = {**declared, **isolated, "zone_config": None}
    with pytest.raises(SpecError, match="public IPs need the host's zone") as caught:
        facade.run_environment(without_zone, check_mode=True)
    assert caught.value.field == "zone_config"
    nat = {**declared, **environment("acme", str(lab.image), mode="nat")}
    nat["public_ips"] = [{"name": "web", "vm": "web1"}]
    with pytest.raises(SpecError, match=r"on network lan \(nat\); a public IP needs") as caught:
        facade.run_environment(nat, check_mode=True)
    assert caught.value.field == "public_ips[0].network"
    no_ip = {**declared, **environment("acme", str(lab.image), ip=None)}
    no_ip["public_ips"] = [{"name": "web", "vm": "web1"}]
    with pytest.raises(SpecError, match="has no fixed IP; declare its ip") as caught:
        facade.run_environment(no_ip, check_mode=True)
    assert caught.value.field == "public_ips[0].vm"
    elsewhere = {**declared, "public_ips": [{"name": "web", "vm": "web1", "network": "dmz"}]}
    with pytest.raises(SpecError, match="VM web1 has no NIC on network dmz"):
        facade.run_environment(elsewhere, check_mode=True)


def test_prune_on_one_host_keeps_public_ips_bound_on_another_host_of_the_zone(lab, tmp_path):
    uri_b = host_file(tmp_path / "kvm-b.xml", "acme", [])
    host_b = StandInHost(tmp_path / "kvm-b", {"up0": 1500})
    facade.run_environment(
        {**environment("acme", str(lab.image)), **lab.zone(host=host_b), "uri": uri_b}
    )
    run_public_ip(lab.params(name="api", uri=uri_b, host_command=host_b.prefix))
    declared = {
        **environment("acme", str(lab.image)),
        "ledger_url": lab.ledger_url,
        "zone": "zone-a",
        "zone_config": ZONE,
        "host_command": lab.host.prefix,
        "public_ips": [{"name": "web", "vm": "web1"}],
        "prune": True,
    }
    result = facade.run_environment(declared, check_mode=True)
    assert [c["name"] for c in result.plan if c["kind"] == "public_ip"] == ["web", "web"]
    with pytest.raises(SpecError, match="bound on another host of zone zone-a") as caught:
        run_public_ip(lab.params(name="api", state="absent"), check_mode=True)
    assert caught.value.field == "name"
    assert [row[1] for row in lab.rows()] == ["api"]


ASSIGNABLE = {"203.0.113.67", "203.0.113.68", "203.0.113.69", "203.0.113.70", "203.0.113.74"}


def test_exactly_the_assignable_addresses_of_the_pools_can_be_requested():
    zone = parse_public_zone("zone-a", ZONE)
    accepted = set()
    for last in range(256):
        address = f"203.0.113.{last}"
        try:
            parse_public_ip({"name": "web", "vm": "web1", "address": address}, "", zone)
        except SpecError as error:
            assert error.field == "address"
        else:
            accepted.add(address)
    assert accepted == ASSIGNABLE


def moved_to_dmz(lab, network="dmz", ip="10.21.0.10", **extra):
    """web1's NIC declared on `network`, with routed networks lan and dmz, in zone-a."""
    declared = environment("acme", str(lab.image))
    declared["networks"].append({"name": "dmz", "cidr": "10.21.0.0/24", "mode": "routed"})
    declared["vms"][0]["nics"] = [{"network": network, "ip": ip}]
    return {**declared, **lab.zone(), **extra}


def test_a_nic_is_not_moved_away_from_a_public_ip_bound_to_it(lab):
    facade.run_environment(moved_to_dmz(lab, "lan", "10.20.0.10"))
    run_public_ip(lab.params())
    rows = lab.rows()
    with pytest.raises(SpecError, match=r"public IP web \(203.0.113.67\) is bound") as caught:
        facade.run_environment(moved_to_dmz(lab), check_mode=True)
    assert caught.value.field == "vms[0].nics[0].network"
    vm = {**moved_to_dmz(lab)["vms"][0], "uri": URI, "tenant": "acme"}
    with pytest.raises(SpecError, match="pointing at a network the NIC left") as caught:
        facade.run_vm({**vm, "default_pool": "default-pool", "ledger_url": lab.ledger_url})
    assert caught.value.field == "nics[0].network"
    assert lab.rows() == rows


def test_an_environment_declaring_the_public_ip_moves_the_nic_and_rebinds_it(lab):
    facade.run_environment(moved_to_dmz(lab, "lan", "10.20.0.10"))
    run_public_ip(lab.params())
    declared = moved_to_dmz(lab, public_ips=[{"name": "web", "vm": "web1"}])
    plan = facade.run_environment(declared, check_mode=True).plan
    assert [(c["kind"], c["action"], c["after"]) for c in plan if c["action"] != "update"] == [
        ("vm", "move", {"network": "dmz", "ip": "10.21.0.10"}),
        ("public_ip", "rebind", "web1 (10.21.0.10)"),
        ("public_ip", "bind", f"{FIRST} -> 10.21.0.10"),
    ]
    still_on_lan = moved_to_dmz(lab, public_ips=[{"name": "web", "vm": "web1", "network": "lan"}])
    with pytest.raises(SpecError, match="VM web1 has no NIC on network lan") as caught:
        facade.run_environment(still_on_lan, check_mode=True)
    assert caught.value.field == "public_ips[0].network"
