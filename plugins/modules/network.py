#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: network
short_description: A tenant's L2 network with DHCP on a KVM host
version_added: 0.1.0
description:
  - Declares one tenant network - CIDR, gateway, DHCP range, static leases, and whether it is
    isolated, NATed or routed to the zone's uplink - as a libvirt network.
  - DHCP range and lease changes are applied live. Changing O(mode), O(cidr), O(gateway) or
    O(mtu) needs the network replaced and is refused unless O(allow_replace=true).
  - The CIDR lies in private space (RFC 1918 - 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16), with a
    prefix from /16 to /29; the whole space (0.0.0.0/0), loopback, link-local, multicast, shared
    (100.64.0.0/10) and public ranges are refused.
  - When the network is made or replaced, a CIDR that overlaps a network already in use on the
    host - another libvirt network (another tenant's, libvirt's C(default), any other) or the
    host's own addresses and routes, its uplink's included - is refused at plan time, without
    naming what it overlaps. The host's addresses are read with C(ip) through O(host_command).
  - A tenant does not choose an uplink - a routed network is routed to the zone's uplink from
    O(zone_config), the operator's configuration. libvirt ties it to no interface; the host's
    guard (M(vce.kvm.firewall), kept by this run) lets it leave only through that uplink, so a
    VM reaches a public IP bound on another network of the host (hairpin). A routed network
    made by an earlier version with C(dev) in its C(forward) element is untied live, after the
    guard is in place. On a remote O(uri) without O(host_command) a routed network is refused.
author:
  - vce.kvm developers (!UNKNOWN)
extends_documentation_fragment:
  - vce.kvm.common
  - vce.kvm.common.ledger
  - vce.kvm.common.attributes
  - vce.kvm.common.zone
options:
  name:
    description: The network's name within the tenant (libvirt name C(<tenant>_<name>)).
    type: str
    required: true
  state:
    description:
      - V(absent) deletes the network; it is refused while a VM of the tenant uses it.
    type: str
    choices: [present, absent]
    default: present
  cidr:
    description:
      - IPv4 network in private space (RFC 1918), for example V(10.10.0.0/24), a prefix from /16 to
        /29. Required unless O(state=absent).
    type: str
  gateway:
    description: The host's address on the network. Defaults to the first address.
    type: str
  dhcp_start:
    description: First address of the DHCP range. Defaults to the middle of the network.
    type: str
  dhcp_end:
    description: Last address of the DHCP range. Defaults to the last usable address.
    type: str
  mode:
    description:
      - V(nat) lets VMs reach out through the host's default route (masquerade).
      - V(isolated) connects VMs with each other and the host only.
      - V(routed) routes the network to the zone's uplink (O(zone_config.uplink)) without NAT;
        VMs reach the outside only through a public IP bound to them (M(vce.kvm.public_ip)),
        which is NATed 1:1. Needs O(zone_config).
    type: str
    choices: [nat, isolated, routed]
    default: nat
  mtu:
    description: MTU of the network's bridge (default from libvirt, usually 1500).
    type: int
  static_leases:
    description:
      - DHCP reservations that do not belong to a VM of this tenant's declarations. NICs of
        M(vce.kvm.vm) with an O(vce.kvm.vm#module:nics[].ip) get theirs automatically.
    type: list
    elements: dict
    default: []
    suboptions:
      mac:
        description: MAC address.
        type: str
        required: true
      ip:
        description: IPv4 address inside O(cidr).
        type: str
        required: true
      hostname:
        description: Host name handed out with the lease.
        type: str
  allow_replace:
    description: Allow changes that destroy and re-create the network.
    type: bool
    default: false
  zone_config:
    description:
      - The host's zone as the operator configures it, usually C(vce_zones[vce_zone]) from the
        inventory. A routed network is routed to its uplink.
  host_command:
    description:
      - How to run C(ip) on the KVM host to read its addresses and routes - a command prefix such
        as V([ssh, root@kvm1]). Default - directly, on the machine that runs the module, when the
        libvirt URI is local; a remote URI without it is checked against libvirt's networks only.
    type: list
    elements: str
seealso:
  - module: vce.kvm.environment
  - module: vce.kvm.vm
"""

EXAMPLES = r"""
- name: A NATed tenant network
  vce.kvm.network:
    tenant: acme
    name: lan
    cidr: 10.10.0.0/24
    dhcp_start: 10.10.0.100
    dhcp_end: 10.10.0.199

- name: An isolated back-end network with a reserved address for an appliance
  vce.kvm.network:
    tenant: acme
    name: backend
    cidr: 10.10.1.0/24
    mode: isolated
    static_leases:
      - {mac: "52:54:00:aa:bb:cc", ip: 10.10.1.5, hostname: appliance}

- name: A routed network for public IPs, routed to the zone's uplink
  vce.kvm.network:
    tenant: acme
    name: dmz
    cidr: 10.10.2.0/24
    mode: routed
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
    - {kind: network, name: lan, action: create, class: live, before: null, after: {cidr: 10.10.0.0/24}}
network:
  description: The network as libvirt reports it after the run (empty after O(state=absent)).
  returned: always
  type: dict
  sample: {libvirt_name: acme_lan, cidr: 10.10.0.0/24, bridge: virbr1, active: true}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import run_network
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import (
    kind_spec,
    run_module,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=kind_spec("network"),
        required_if=[("state", "present", ("cidr",))],
        supports_check_mode=True,
    )
    run_module(module, run_network)


if __name__ == "__main__":
    main()
