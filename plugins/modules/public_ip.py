#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: public_ip
short_description: A public IP from the zone's pool, bound 1:1 to a tenant VM's NIC
version_added: 0.1.0
description:
  - Allocates an address from the zone's public pools (the first free one, or O(address)) in the
    ledger, and binds it 1:1 to a VM's NIC on its KVM host - nftables DNAT of the public address
    to the NIC's private address, and SNAT of the NIC's outbound traffic to the public address -
    in the project's own nft table C(ip vce_nat). The address is also put on the zone's uplink
    (as a /32) so the host answers for it.
  - The VM's NIC needs a fixed IP on a network with O(vce.kvm.network#module:mode=routed) and
    O(vce.kvm.network#module:uplink) set to the zone's uplink - libvirt then allows the forwarding
    itself, in the firewall chains it manages.
  - Allocation is exclusive (the address is the ledger's key, taken under a lock per zone); a
    released address can be allocated again. Pointing the binding at another VM keeps the
    address. All rule changes of a run on a host are one atomic C(nft -f) batch.
  - Rules carry the comment C(vce:<tenant>:<name>:<public>:<private>) so they are found again;
    a binding removed by hand is restored by the next run.
  - Counts against the tenant's C(public_ips) quota.
author:
  - vce.kvm developers (!UNKNOWN)
extends_documentation_fragment:
  - vce.kvm.common
  - vce.kvm.common.ledger
  - vce.kvm.common.attributes
  - vce.kvm.common.zone
options:
  name:
    description: The public IP's name within the tenant.
    type: str
    required: true
  state:
    description:
      - V(present) allocates the address if needed and binds it to O(vm).
      - V(absent) removes the binding and releases the address to the pool.
    type: str
    choices: [present, absent]
    default: present
  vm:
    description: The tenant's VM to bind to. Required with O(state=present).
    type: str
  network:
    description: The tenant network of the VM's NIC to bind (default - the VM's first NIC).
    type: str
  address:
    description:
      - A specific address of the zone's pools. Refused when outside the pools, excluded, or
        held by another binding. Without it the first free address is taken (known after apply).
    type: str
  zone:
    description: The availability zone of the host (the inventory's C(vce_zone)).
    type: str
    required: true
  zone_config:
    description:
      - The zone's uplink and public pools, usually C(vce_zones[vce_zone]) from the inventory.
    required: true
  host_command:
    description:
      - How to run C(nft) and C(ip) on the KVM host - a command prefix such as
        V([ssh, root@kvm1]) or V([ip, netns, exec, kvm-a]). Default - directly, on the machine
        that runs the module.
    type: list
    elements: str
seealso:
  - module: vce.kvm.network
"""

EXAMPLES = r"""
- name: Give web1 a public IP in its zone
  vce.kvm.public_ip:
    tenant: acme
    name: web
    vm: web1
    zone: "{{ vce_zone }}"
    zone_config: "{{ vce_zones[vce_zone] }}"
  register: web_ip

- name: Release it
  vce.kvm.public_ip:
    tenant: acme
    name: web
    state: absent
    zone: "{{ vce_zone }}"
    zone_config: "{{ vce_zones[vce_zone] }}"
"""

RETURN = r"""
usage_changes:
  description:
    - What the run changed in metered usage - for each resource whose state changed, the state it has
      from that moment on. The P(vce.kvm.ledger#callback) callback plugin records them in the ledger for
      billing (see docs/billing.md). Empty in check mode and when nothing changed.
  returned: always
  type: list
  elements: dict
  sample:
    - {key: 3f0c9a7e21b4d5e6f708192a3b4c5d6e7f809a1b, tenant: acme, host: "qemu:///system", kind: vm, name: web,
       action: created, at: "2026-11-24T09:31:02.118734+00:00", state: running, vm: web, vcpus: 2,
       ram_mib: 2048, disk_mib: 10240, public_ips: 0, zone_links: 0}
plan:
  description: The changes made, or in check mode to be made, in order.
  returned: always
  type: list
  elements: dict
  sample:
    - {kind: public_ip, name: web, action: allocate, class: live, field: address, before: null, after: 203.0.113.66}
public_ip:
  description: The allocation after the run (empty after O(state=absent)).
  returned: always
  type: dict
  sample: {name: web, address: 203.0.113.66, pool: pub-a, zone: zone-a, vm: web1, private_ip: 10.20.0.10, bound: true}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import (
    kind_spec,
    run_module,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.public_ip import (
    run_public_ip,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=kind_spec("public_ip"),
        required_if=[("state", "present", ("vm",))],
        supports_check_mode=True,
    )
    run_module(module, run_public_ip)


if __name__ == "__main__":
    main()
