#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: environment
short_description: A whole tenant environment - networks, disks and VMs - in one call
version_added: 0.1.0
description:
  - Reconciles every network, disk and VM of a tenant on a KVM host in one module call - the
    host is read once, one plan is made, and it is applied in dependency order (networks,
    disks, VMs, then removals).
  - This is the fast path for large tenants; the single-object modules M(vce.kvm.network),
    M(vce.kvm.disk) and M(vce.kvm.vm) take the same options per object.
author:
  - vce.kvm developers (!UNKNOWN)
extends_documentation_fragment:
  - vce.kvm.common
  - vce.kvm.common.ledger
  - vce.kvm.common.backup_host
  - vce.kvm.common.attributes
options:
  state:
    description:
      - V(present) makes the declared objects exist as declared.
      - V(absent) deletes every object the tenant owns on the host (VMs, their disks and
        seeds, standalone disks, networks); O(networks), O(disks) and O(vms) are ignored.
    type: str
    choices: [present, absent]
    default: present
  networks:
    description:
      - The tenant's networks. Each item takes the options of M(vce.kvm.network) - O(vce.kvm.network#module:name),
        O(vce.kvm.network#module:cidr), O(vce.kvm.network#module:gateway), O(vce.kvm.network#module:dhcp_start),
        O(vce.kvm.network#module:dhcp_end), O(vce.kvm.network#module:mode), O(vce.kvm.network#module:mtu),
        O(vce.kvm.network#module:static_leases).
      - VM NICs with a fixed IP get their DHCP reservation on the network automatically.
      - The limits of M(vce.kvm.network) apply - a CIDR in private space (RFC 1918) from /16 to
        /29, none of the tenant's networks overlapping another, and a network made or replaced
        never overlapping a network in use on the host (read through O(host_command)). A routed
        network is routed to the uplink of O(zone_config); an item naming C(uplink) is refused.
    type: list
    elements: dict
    default: []
  disks:
    description:
      - The tenant's standalone disks. Each item takes O(vce.kvm.disk#module:name),
        O(vce.kvm.disk#module:size_gib), O(vce.kvm.disk#module:pool), O(vce.kvm.disk#module:format),
        O(vce.kvm.disk#module:backing_image) and optionally O(vce.kvm.disk#module:attach_to)
        (or list the disk in a VM's C(disks)).
    type: list
    elements: dict
    default: []
  vms:
    description:
      - The tenant's VMs. Each item takes the options of M(vce.kvm.vm) - C(name), C(vcpus),
        C(max_vcpus), C(memory_mib), C(max_memory_mib), C(boot_disk), C(disks), C(nics),
        C(cloud_init) - and C(state) (V(running) or V(stopped), default V(running)).
    type: list
    elements: dict
    default: []
  public_ips:
    description:
      - The tenant's public IPs on this host, each bound 1:1 to a VM's NIC. Each item takes
        O(vce.kvm.public_ip#module:name), O(vce.kvm.public_ip#module:vm),
        O(vce.kvm.public_ip#module:network) and O(vce.kvm.public_ip#module:address); the VM may
        be declared in the same call. Needs O(zone) and O(zone_config).
      - All bindings of a run are written in one atomic nft batch.
    type: list
    elements: dict
    default: []
  zone_links:
    description:
      - Links of the tenant's networks on this host to the same network in another zone (see
        M(vce.kvm.zone_link)). Each item takes O(vce.kvm.zone_link#module:name),
        O(vce.kvm.zone_link#module:network) and O(vce.kvm.zone_link#module:ends); the first end
        is this host. The network may be declared in the same call.
      - With O(prune) or O(state=absent), the tenant's other links with an end on this host are
        removed, both ends.
      - The hosts of both ends keep their VXLAN filter (nft table C(inet vce_vxlan)) for every
        tenant's links there, planned as changes C(firewall vce_vxlan) (see M(vce.kvm.zone_link)).
    type: list
    elements: dict
    default: []
  backup_schedules:
    description:
      - The tenant's backup schedules on this host (see M(vce.kvm.backup_schedule)). Each item
        takes O(vce.kvm.backup_schedule#module:vm), O(vce.kvm.backup_schedule#module:name),
        O(vce.kvm.backup_schedule#module:calendar), O(vce.kvm.backup_schedule#module:retention)
        and optionally O(vce.kvm.backup_schedule#module:disks),
        O(vce.kvm.backup_schedule#module:target) or O(vce.kvm.backup_schedule#module:pool) and
        O(vce.kvm.backup_schedule#module:timeout_minutes). The VM may be declared in the same call.
      - With O(prune) or O(state=absent), the tenant's other schedules on this host are removed;
        their backups are kept (purge them with M(vce.kvm.backup_schedule)).
    type: list
    elements: dict
    default: []
  zone:
    description:
      - The host's availability zone (the inventory's C(vce_zone)), for O(public_ips), and the
        catalogue the base images are named from (without it, every zone whose catalogue has an
        image name must have the same file under it).
    type: str
  zone_config:
    description:
      - The zone's uplink and public pools (see M(vce.kvm.public_ip)), for O(public_ips) and for
        routed networks (routed to its uplink). With it,
        O(prune) and O(state=absent) also release the tenant's public IPs of the zone that are
        not declared.
    type: dict
  host_command:
    description:
      - How to run commands on the KVM host for O(public_ips), O(zone_links),
        O(backup_schedules) and to read the host's addresses and routes when a network is made -
        a command prefix such as V([ssh, root@kvm1]). Default - directly.
    type: list
    elements: str
  image_dirs:
    description:
      - The host's image directories, where an operator's absolute image path (a VM's
        C(boot_disk.image), a disk's C(backing_image)) must lie, after symbolic links are resolved;
        every file of its backing chain must be in an image directory, a catalogue image or one of
        the tenant's disks. Names are looked up among the tenant's disks (that exist when the run
        plans), then in the catalogue of O(zone) (see M(vce.kvm.image)). An empty list accepts no
        path.
    type: list
    elements: path
    default: [/var/lib/vce-kvm/images]
  default_pool:
    description: Storage pool used where a disk names none.
    type: str
    default: default
  prune:
    description:
      - Delete objects the tenant owns on the host that the declaration does not mention.
        Without it they are left alone and listed in a warning.
    type: bool
    default: false
  allow_restart:
    description: Restart running VMs when a change needs it.
    type: bool
    default: false
  allow_replace:
    description: Allow network changes that destroy and re-create the network.
    type: bool
    default: false
  shutdown_timeout:
    description: Seconds to wait for an ACPI shutdown before a VM is powered off.
    type: int
    default: 60
  register:
    description:
      - Register the tenant in the ledger first, or keep its record as declared, in the same
        run - what M(vce.kvm.tenant) does with these options and the tenant's name, O(uri) and
        O(ledger_url) (a new tenant, a changed plan or quota overrides, a suspended tenant
        resumed). The run's plan lists the tenant's changes first; the result has the
        tenant's record as RV(tenant).
      - One module run per tenant instead of two (the role C(vce.kvm.tenant_environment) uses it).
        Only with O(state=present).
    type: dict
    suboptions:
      customer:
        description: The customer's identity, required for a new tenant (M(vce.kvm.tenant)'s O(vce.kvm.tenant#module:customer)).
        type: str
      plan:
        description: The tenant's plan, required for a new tenant (M(vce.kvm.tenant)'s O(vce.kvm.tenant#module:plan)).
        type: str
      plans:
        description: Plan definitions to record in the ledger (M(vce.kvm.tenant)'s O(vce.kvm.tenant#module:plans)).
        type: dict
      quotas:
        description: Quota overrides over the plan; omit to keep the current ones (M(vce.kvm.tenant)'s O(vce.kvm.tenant#module:quotas)).
        type: dict
seealso:
  - module: vce.kvm.vm
  - module: vce.kvm.network
  - module: vce.kvm.disk
  - module: vce.kvm.info
"""

EXAMPLES = r"""
- name: The acme tenant - a network, a data disk and two VMs
  vce.kvm.environment:
    tenant: acme
    networks:
      - name: lan
        cidr: 10.10.0.0/24
    disks:
      - name: data1
        size_gib: 10
    vms:
      - name: web1
        vcpus: 1
        max_vcpus: 4
        memory_mib: 1024
        boot_disk: {image: debian-12, size_gib: 10}
        disks: [data1]
        nics: [{network: lan, ip: 10.10.0.10}]
      - name: web2
        memory_mib: 1024
        boot_disk: {image: debian-12, size_gib: 10}
        nics: [{network: lan, ip: 10.10.0.11}]

- name: Set the connection once for every vce.kvm module
  module_defaults:
    group/vce.kvm.vce:
      uri: qemu+ssh://root@kvm1.example.com/system
  block:
    - name: Remove everything of the tenant
      vce.kvm.environment:
        tenant: acme
        state: absent
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
  description: The changes made, or in check mode to be made, in the order applied.
  returned: always
  type: list
  elements: dict
  sample:
    - {kind: network, name: lan, action: create, class: live, before: null, after: {cidr: 10.10.0.0/24}}
    - {kind: vm, name: web1, action: create, class: live, before: null, after: {vcpus: 1}}
pending_restart:
  description: Changes written to VM definitions that wait for the VMs' next restart.
  returned: always
  type: list
  elements: str
tenant:
  description: The tenant's ledger record after the run, as M(vce.kvm.tenant) returns it.
  returned: when O(register) is given
  type: dict
environment:
  description: The tenant's objects after the run, as M(vce.kvm.info) returns them. Empty in check mode.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.core import fields
from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import (
    run_registered_environment,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import (
    BACKUP_HOST_OPTIONS,
    ledger_spec,
    run_module,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=ledger_spec(
            state={"type": "str", "default": "present", "choices": ["present", "absent"]},
            networks={"type": "list", "elements": "dict", "default": []},
            disks={"type": "list", "elements": "dict", "default": []},
            vms={"type": "list", "elements": "dict", "default": []},
            public_ips={"type": "list", "elements": "dict", "default": []},
            zone_links={"type": "list", "elements": "dict", "default": []},
            backup_schedules={"type": "list", "elements": "dict", "default": []},
            zone={"type": "str"},
            zone_config={"type": "dict"},
            host_command={"type": "list", "elements": "str"},
            image_dirs=fields.ansible_option(fields.IMAGE_DIRS),
            default_pool={"type": "str", "default": "default"},
            prune={"type": "bool", "default": False},
            allow_restart={"type": "bool", "default": False},
            allow_replace={"type": "bool", "default": False},
            shutdown_timeout={"type": "int", "default": 60},
            register={
                "type": "dict",
                "options": {
                    "customer": {"type": "str"},
                    "plan": {"type": "str"},
                    "plans": {"type": "dict"},
                    "quotas": {"type": "dict"},
                },
            },
            **BACKUP_HOST_OPTIONS,
        ),
        supports_check_mode=True,
    )
    run_module(module, run_registered_environment)


if __name__ == "__main__":
    main()
