#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: migration
short_description: Move a tenant's VM to another KVM host of its zone, live when it runs
version_added: 0.1.0
description:
  - Moves VM O(name) of O(tenant) from the host at O(uri) to the host at O(destination.uri),
    both in one zone. Storage is not shared - the VM's disks are copied. A VM already on the
    destination is left as it is (not changed), so the task is idempotent - declare where a VM
    should be by running it again with the same destination.
  - B(Running or paused) - libvirt's live migration (LIVE, PERSIST_DEST, UNDEFINE_SOURCE,
    NON_SHARED_INC) - QEMU copies the disks' own layers over NBD while the guest runs, then its
    memory; the guest is paused only for the last dirty pages (the C(downtime_ms) returned, from
    libvirt's job statistics). The guest keeps its addresses; its network is reachable through
    the destination host once it runs there.
  - B(Stopped) - a cold move - every volume is streamed through libvirt, the domain defined on
    the destination and undefined here.
  - Before the move the destination gets empty volumes of the same names, sizes, formats and
    backing files in the storage pools of the same names, and the VM's fixed-IP leases on its
    networks. A boot disk's base image must be at the same path on both hosts (the zone's
    catalogue). The destination's disk paths and console log directory are written into the
    VM's definition there.
  - After the move the source keeps nothing of the VM (domain, volumes, leases), the VM's
    ownership metadata is unchanged (it is still the tenant's), and the ledger records the move -
    at one moment the VM's usage ends on the source host and starts on the destination (the
    returned C(usage_changes), actions C(moved_out) and C(moved_in)).
  - Refused, changing nothing - a destination in another zone, the VM's own host, a VM on neither
    host or on both, another tenant's VM (or an object that is not the tenant's named like it),
    a network or storage pool of the VM that the destination lacks, a volume of the VM that
    exists there already, an address of the VM leased to another MAC there, a tenant the control
    plane (C(vce serve)) placed in the zone (it keeps the tenant's objects on one host).
  - A failed migration leaves the VM running on the source (libvirt's rollback); what was made on
    the destination for it is removed again.
  - B(Public IPs) bound to the VM follow it when O(zone_config) and both hosts' host commands are
    given (a move of such a VM without them is refused, naming O(zone_config)) - the
    destination's NAT rules are made before the move; as soon as the guest runs there, the
    addresses go on its uplink and are announced (a gratuitous ARP, with the host's C(python3)),
    so the zone's gateway sends their traffic there at once; then the source's rules and
    addresses go, and the ledger's bindings and usage move to the destination host.
  - B(Zone links) follow the last VM of their network - when no other VM of the tenant on the
    source is on the VM's network, a zone link of that network with an end on the source moves
    its end to the destination (O(destination.underlay_ip), O(destination.underlay_dev) and the
    destination's host command needed, else the move is refused naming
    O(destination.underlay_ip)) - the ledger's link records the new end, the VXLAN filters of
    the three hosts are rendered from it, the destination's VXLAN device is made, the other
    zone's device sends there, the source's device goes; the link's usage moves with it when the
    source's end was its first. Its VMs reach the other zone again once this is done, after the
    move.
  - B(A network's copies on two hosts are not joined) - VMs of one network left on the source no
    longer reach the moved VM; the plan warns, naming them (and the zone link, which stays with
    them). M(vce.kvm.drain) moves the VMs of a network together.
  - The module holds both hosts' libvirt connections (libvirt's managed migration) - the hosts
    need no access to each other's libvirtd, only to the destination's migration and NBD ports
    (49152-49215), on the destination's host name.
author:
  - vce.kvm developers (!UNKNOWN)
extends_documentation_fragment:
  - vce.kvm.common
  - vce.kvm.common.ledger
  - vce.kvm.common.zone
options:
  name:
    description:
      - The VM's name within the tenant.
    type: str
    required: true
  zone:
    description:
      - The zone of the host at O(uri), usually C(vce_zone). A VM moves only within its zone.
    type: str
    required: true
  destination:
    description:
      - The host the VM is to be on.
    type: dict
    required: true
    suboptions:
      uri:
        description:
          - libvirt connection URI of the destination host, as the controller reaches it
            (V(qemu+ssh://root@kvm2/system)).
        type: str
        required: true
      zone:
        description:
          - The destination host's zone; it must be O(zone).
        type: str
        required: true
      host_command:
        description:
          - How to run C(nft), C(ip) and C(python3) on the destination host (V([ssh, root@kvm2])),
            for the public IPs and zone links that follow the VM. Default - directly, when its
            URI is local.
        type: list
        elements: str
      underlay_ip:
        description:
          - The destination's address on the zones' underlay (usually C(vce_underlay_ip)), where
            a zone link that follows the VM receives its VXLAN. With O(destination.underlay_dev).
        type: str
      underlay_dev:
        description:
          - The destination's underlay interface (usually C(vce_underlay_dev)).
        type: str
  zone_config:
    description:
      - The zone as the operator configures it, usually C(vce_zones[vce_zone]); needed when a
        public IP is bound to the VM (see above).
  host_command:
    description:
      - How to run C(nft), C(ip) and C(python3) on the VM's host (V([ssh, root@kvm1])), for the
        public IPs that follow the VM. Default - directly, when O(uri) is local.
    type: list
    elements: str
notes:
  - Check mode plans the move without making anything; diff mode shows the VM's host before and
    after (and each public IP's and zone link's, which move after the VM - changes
    C(public_ip <name> move), C(zone_link <name> move)).
seealso:
  - module: vce.kvm.environment
  - module: vce.kvm.drain
"""

EXAMPLES = r"""
- name: Move web1 of acme to kvm2, live
  vce.kvm.migration:
    uri: qemu+ssh://root@kvm1/system
    tenant: acme
    name: web1
    zone: "{{ vce_zone }}"
    destination:
      uri: qemu+ssh://root@kvm2/system
      zone: "{{ hostvars['kvm2'].vce_zone }}"
  register: moved

- name: Say how long the guest was paused
  ansible.builtin.debug:
    msg: "{{ moved.migration.downtime_ms }} ms"
"""

RETURN = r"""
plan:
  description:
    - The move made, or in check mode to be made - one change of kind C(vm), action C(migrate),
      field C(host), from the source's URI to the destination's; empty when the VM is on the
      destination already.
  returned: always
  type: list
  elements: dict
  sample:
    - {kind: vm, name: web1, action: migrate, class: live, field: host,
       before: "qemu+ssh://root@kvm1/system", after: "qemu+ssh://root@kvm2/system"}
migration:
  description:
    - Where the VM is after the run (in check mode - now) and how it moved.
    - C(mode) is V(live) or V(cold) (null when nothing moved); C(downtime_ms) is libvirt's
      measure of the guest's pause and C(memory_bytes) the memory it sent (live moves);
      C(wall_seconds) is the move's time; C(streamed_bytes) what was copied through libvirt
      streams (cold moves, cloud-init seeds).
  returned: always
  type: dict
  sample:
    tenant: acme
    vm: web1
    source: qemu+ssh://root@kvm1/system
    destination: qemu+ssh://root@kvm2/system
    host: qemu+ssh://root@kvm2/system
    mode: live
    wall_seconds: 2.3
    downtime_ms: 151
    memory_bytes: 80415598
    streamed_bytes: 0
usage_changes:
  description:
    - The move in the ledger's usage timeline - the VM's objects absent on the source and present
      on the destination from one moment on. They are in the ledger already; the ledger callback
      finds them by C(key).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.core import fields
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import run_module
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.migration import (
    run_migration,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=fields.ansible_options(fields.MIGRATION),
        supports_check_mode=True,
    )
    run_module(module, run_migration)


if __name__ == "__main__":
    main()
