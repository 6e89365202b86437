#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: firewall
short_description: The KVM host's guard for tenant traffic (nft table inet vce_guard)
version_added: 0.1.0
description:
  - Keeps the nftables table C(inet vce_guard) on the KVM host, rendered from every tenant
    network on it (libvirt networks with vce.kvm ownership metadata, of any tenant) and the zone's
    uplink, and replaced whole in one C(nft -f) transaction, so there is no moment without rules.
  - From a tenant bridge the host accepts only DHCP and DNS on that network's own gateway (and
    replies to what the host itself started); nothing else of the host - underlay, uplink,
    management, other gateways - is reachable from any tenant network, in any mode.
  - Into a tenant network only replies and what a public IP's DNAT admits are forwarded (no
    other tenant, no other network of the same tenant, no neighbour on the uplink reaches a
    private address). Out of a NAT or routed network only through the uplink; never out of an
    isolated one. A VM without a public IP never leaves through the uplink with its private
    address. A VM reaches another VM's public IP on the same host (hairpin NAT).
  - Its chains run before libvirt's own (priority C(filter - 10)) and only ever drop, so nothing
    libvirt refuses is let through. The table is not libvirt's - a libvirtd restart keeps it.
  - The uplink is O(uplink), else O(zone_config.uplink), else the one the ledger's host record
    with this O(uri) names, else the one the table on the host names now (a run that knows no
    zone never loosens the guard).
  - A host without an uplink gets the same rules except the two that name the uplink - leaving a
    NAT network is then not restricted to one interface, but never to a private, shared,
    loopback, link-local, multicast or reserved address (the host's management network is
    one), and there is no egress filter.
  - M(vce.kvm.environment) and M(vce.kvm.network) keep the table too after their network
    changes; the C(vce.kvm.kvm_host) role calls this module.
author:
  - vce.kvm developers (!UNKNOWN)
extends_documentation_fragment:
  - vce.kvm.common.attributes
  - vce.kvm.common.zone
options:
  uri:
    description:
      - libvirt connection URI of the KVM host, whose networks the table guards.
    type: str
    default: qemu:///system
  ledger_url:
    description:
      - The ledger whose host record with this O(uri) names the uplink, read only when neither
        O(uplink) nor O(zone_config) is given. Default - E(VCE_LEDGER_URL), else the user's
        SQLite ledger. No ledger (a warning) or no record - the uplink the table names now, if any.
    type: str
  host_command:
    description:
      - How to run C(nft) on the KVM host - a command prefix such as V([ssh, root@kvm1]) or
        V([ip, netns, exec, kvm-a]). Default - directly, when the libvirt URI is local. A remote
        URI (or libvirt's test driver) without it is refused.
      - C(unshare) and C(sh) must be on the host as well - the table the host would list is
        rendered in a scratch network namespace, so the comparison is exact.
    type: list
    elements: str
  uplink:
    description:
      - The host's interface towards the zone's public network. Default - O(zone_config.uplink),
        else the ledger's host record, else the uplink the table on the host names now.
    type: str
  zone_config:
    description:
      - The host's zone as the operator configures it, usually C(vce_zones[vce_zone]); its uplink
        is used when O(uplink) is not given.
  state:
    description:
      - V(present) - the table holds exactly the rules for the tenant networks on the host now.
      - V(absent) - the table is deleted.
    type: str
    choices: [present, absent]
    default: present
requirements:
  - libvirt-python on the machine that runs the module
  - nftables 1.0 or later, C(unshare) and C(sh) on the KVM host
notes:
  - Invalid input fails before anything is changed; the error names the field and the reason.
  - In diff mode the diff is the table as the host lists it (C(nft -s list table inet vce_guard))
    against the listing it will have.
seealso:
  - module: vce.kvm.network
  - module: vce.kvm.public_ip
"""

EXAMPLES = r"""
- name: Guard the tenant networks of this host, with the zone's uplink
  vce.kvm.firewall:
    zone_config: "{{ vce_zones[vce_zone] }}"

- name: Guard a lab host in a network namespace, uplink from the ledger's host record
  vce.kvm.firewall:
    uri: qemu:///system?socket=/tmp/kvm-a/sock/libvirt-sock
    host_command: [ip, netns, exec, kvm-a]

- name: Remove the guard
  vce.kvm.firewall:
    state: absent
"""

RETURN = r"""
plan:
  description:
    - The change made, or in check mode to be made - at most one, of kind C(firewall) and name
      C(vce_guard). An update's C(before) and C(after) are the listing's lines only the host has
      and those only the declared table has.
  returned: always
  type: list
  elements: dict
  sample:
    - {kind: firewall, name: vce_guard, action: update, class: live, field: rules,
       before: [], after: ["udp dport 53 iifname . ip daddr @gateways accept"]}
firewall:
  description:
    - The table as the host holds it after the run (in check mode, as it is now), the uplink it
      guards and the tenant networks it was rendered from.
  returned: always
  type: dict
  sample:
    table: inet vce_guard
    uplink: br-up
    networks: [{bridge: virbr1, mode: routed, gateway: 10.10.2.1, cidr: 10.10.2.0/24}]
    rules: ["table inet vce_guard {", "set bridges {", "type ifname", 'elements = { "virbr1" }', "}"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.core import fields
from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import run_firewall
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import run_module


def main() -> None:
    module = AnsibleModule(
        argument_spec=fields.ansible_options(fields.FIREWALL),
        supports_check_mode=True,
    )
    run_module(module, run_firewall)


if __name__ == "__main__":
    main()
