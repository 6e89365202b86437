#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: drain
short_description: Move every tenant VM off a KVM host before maintenance
version_added: 0.1.0
description:
  - Moves every tenant VM of the host at O(uri) to another host of its zone (O(peers) in
    O(zone)), as M(vce.kvm.migration) moves one - live when it runs, its disks copied.
  - A tenant's VMs that share a network (directly or through each other) move together, to one
    host - a network's copies on two hosts are not joined, VMs split over two hosts would no
    longer reach each other.
  - Each such group goes to the least-loaded peer that can take all of it - the one with the
    least memory defined (counting the VMs this drain sends there) where every move plans - its
    networks and storage pools exist there, nothing of the VMs is there already.
  - Public IPs and zone links follow their VMs as with M(vce.kvm.migration) when the run gives
    what they need - O(zone_config) and the hosts' host commands for public IPs, the peers'
    underlay for zone links. Without them such a VM stays, with its window.
  - A group no peer can take stays, and its tenant gets the announced maintenance window
    O(maintenance) for each of its VMs in the ledger (an SLA exclusion, terms 5.8), its note
    saying why the VM stays; its downtime in the window is then not counted against the
    availability promise.
  - Every move and window is planned before anything is done (check mode reports the plan); a
    move that fails stops the drain with the VM still running where it was. Run it again to
    continue - the VMs moved are no longer on the host.
author:
  - vce.kvm developers (!UNKNOWN)
extends_documentation_fragment:
  - vce.kvm.common.ledger
  - vce.kvm.common.zone
options:
  uri:
    description:
      - libvirt connection URI of the host to drain, as the module reaches it.
    type: str
    default: qemu:///system
  zone:
    description:
      - The drained host's zone, usually C(vce_zone). VMs move only within it.
    type: str
    required: true
  peers:
    description:
      - The hosts a VM may move to - the zone's other hosts (usually every host of the inventory;
        those of other zones and the drained host itself are left out).
    type: list
    elements: dict
    default: []
    suboptions:
      uri:
        description: libvirt connection URI of the host, as the module reaches it.
        type: str
        required: true
      zone:
        description: The host's zone.
        type: str
        required: true
      host_command:
        description:
          - How to run C(nft), C(ip) and C(python3) on the host (usually its C(vce_host_command)),
            for the public IPs and zone links that follow their VMs.
        type: list
        elements: str
      underlay_ip:
        description:
          - The host's address on the zones' underlay (usually its C(vce_underlay_ip)), for the
            zone links that follow their VMs. With O(peers[].underlay_dev).
        type: str
      underlay_dev:
        description: The host's underlay interface (usually its C(vce_underlay_dev)).
        type: str
  zone_config:
    description:
      - The zone as the operator configures it, usually C(vce_zones[vce_zone]); needed for a VM
        with a public IP to move.
  host_command:
    description:
      - How to run C(nft), C(ip) and C(python3) on the drained host (usually C(vce_host_command)).
    type: list
    elements: str
  maintenance:
    description:
      - The announced maintenance of the host, recorded for each VM that cannot move.
    type: dict
    required: true
    suboptions:
      announced_at:
        description:
          - When the maintenance was announced to the customers (ISO 8601 with its offset); not
            after O(maintenance.starts_at) - unannounced work is downtime.
        type: str
        required: true
      starts_at:
        description: When the window starts. Default - the time of the run.
        type: str
      ends_at:
        description: When the window ends.
        type: str
        required: true
      note:
        description: What the window's record says, followed by why each VM stayed.
        type: str
requirements:
  - libvirt-python on the machine that runs the module
notes:
  - Invalid input fails before anything is changed; the error names the field and the reason.
seealso:
  - module: vce.kvm.migration
"""

EXAMPLES = r"""
- name: Drain kvm1 into the other hosts of its zone
  vce.kvm.drain:
    uri: qemu+ssh://root@kvm1/system
    zone: zone-a
    peers:
      - {uri: "qemu+ssh://root@kvm2/system", zone: zone-a}
      - {uri: "qemu+ssh://root@kvm3/system", zone: zone-a}
    maintenance:
      announced_at: "2026-12-01T09:00:00+00:00"
      ends_at: "2026-12-05T06:00:00+00:00"
"""

RETURN = r"""
plan:
  description:
    - One change per VM - action C(migrate) (kind C(vm), named C(<tenant>/<vm>), field C(host))
      or, for a VM that stays, action C(record) of kind C(maintenance) with the window and why.
  returned: always
  type: list
  elements: dict
drain:
  description:
    - The drained host, the VMs moved (in check mode - to be moved) with their destination, mode
      and downtime, and the VMs that stayed with why and the window's record id.
  returned: always
  type: dict
  sample:
    host: qemu+ssh://root@kvm1/system
    moved:
      - {tenant: acme, vm: web1, destination: "qemu+ssh://root@kvm2/system", mode: live,
         downtime_ms: 151, wall_seconds: 2.3}
    stayed:
      - {tenant: acme, vm: db1, reason: "qemu+ssh://root@kvm2/system: network 'db' of VM 'db1'
         is not on the destination host", exclusion: 3}
usage_changes:
  description: The moves in the ledger's usage timeline (see M(vce.kvm.migration)).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.core import fields
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import run_module
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.drain import run_drain


def main() -> None:
    module = AnsibleModule(
        argument_spec=fields.ansible_options(fields.DRAIN),
        supports_check_mode=True,
    )
    run_module(module, run_drain)


if __name__ == "__main__":
    main()
