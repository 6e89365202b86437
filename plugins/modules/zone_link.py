#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: zone_link
short_description: Join a tenant network across two availability zones (L2 over VXLAN)
version_added: 0.1.0
description:
  - Makes a tenant network that exists in two zones one L2 segment - terms 5.1, a network link
    between two availability zones. One declaration configures both ends; V(absent) removes both.
  - Each end is a VXLAN device C(vx<VNI>) bound to the host's underlay device and address,
    sending to the other end's underlay address only (UDP 4789, no learning of other remotes),
    attached to the network's libvirt bridge. The VNI is allocated in the ledger, unique across
    all links.
  - B(VXLAN filter) - both ends' hosts keep the nft table C(inet vce_vxlan), rendered from the
    ledger's links of every tenant on the host - VXLAN is let in only on the end's underlay
    device, from the peer's underlay address, with the link's VNI; every other packet to UDP 4789
    is dropped before decapsulation. Planned as a change C(firewall vce_vxlan) per host (check
    mode shows it, diff mode shows the rules), after the VNI allocation and before the devices.
    The underlay itself is trusted (not encrypted) - see the zones documentation.
  - B(MTU) - VXLAN adds 50 bytes. The network's MTU (1500 unless its O(vce.kvm.network#module:mtu)
    says otherwise) must be at most the underlay's MTU minus 50 on both hosts - raise the
    underlay's MTU (e.g. 1550) or lower the network's (e.g. 1450). Otherwise the link is refused
    and nothing changes.
  - The network must have the same CIDR at both ends, a different gateway address and
    non-overlapping DHCP ranges in each zone (each zone's dnsmasq then serves its own range on
    the joined segment). Its CIDR must not overlap another link of the tenant. Both networks
    must belong to O(tenant).
  - Counts against the tenant's C(zone_links) quota.
author:
  - vce.kvm developers (!UNKNOWN)
extends_documentation_fragment:
  - vce.kvm.common.ledger
  - vce.kvm.common.ledger_attributes
options:
  tenant:
    description: The tenant that owns the network at both ends.
    type: str
    required: true
  name:
    description: The link's name within the tenant.
    type: str
    required: true
  network:
    description: The tenant network's name (the same at both ends).
    type: str
    required: true
  state:
    description: V(present) creates or repairs both ends; V(absent) removes both and frees the VNI.
    type: str
    choices: [present, absent]
    default: present
  ends:
    description: The two ends, in two different zones.
    type: list
    elements: dict
    required: true
    suboptions:
      zone:
        description: The end's availability zone.
        type: str
        required: true
      uri:
        description: libvirt URI of the end's KVM host.
        type: str
        required: true
      underlay_ip:
        description: The host's address on the underlay (the other end sends VXLAN there).
        type: str
        required: true
      underlay_dev:
        description: The host's underlay interface.
        type: str
        required: true
      host_command:
        description: Command prefix to run C(ip) on that host (e.g. V([ssh, root@kvm2])).
        type: list
        elements: str
seealso:
  - module: vce.kvm.network
  - module: vce.kvm.public_ip
"""

EXAMPLES = r"""
- name: Join acme's lan between Almaty and Astana
  vce.kvm.zone_link:
    tenant: acme
    name: lan-ala-ast
    network: lan
    ends:
      - {zone: ala, uri: "qemu+ssh://root@kvm-ala-01/system", underlay_ip: 172.31.0.11, underlay_dev: ul0, host_command: [ssh, root@kvm-ala-01]}
      - {zone: ast, uri: "qemu+ssh://root@kvm-ast-01/system", underlay_ip: 172.31.0.21, underlay_dev: ul0, host_command: [ssh, root@kvm-ast-01]}
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
    - {kind: zone_link, name: lan-ala-ast, action: connect, class: live, field: "ends[0]", before: null, after: "vx10000 172.31.0.11 -> 172.31.0.21 on virbr3"}
zone_link:
  description: The link after the run (empty after O(state=absent)).
  returned: always
  type: dict
  sample: {name: lan-ala-ast, vni: 10000, network: lan, cidr: 10.10.0.0/24, device: vx10000, ends: [{zone: ala}, {zone: ast}]}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import (
    kind_spec,
    run_module,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.zone_link import (
    run_zone_link,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=kind_spec("zone_link"),
        supports_check_mode=True,
    )
    run_module(module, run_zone_link)


if __name__ == "__main__":
    main()
