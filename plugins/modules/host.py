#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: host
short_description: A KVM host's record in the ledger - its zone, how to reach it, settings, capacity
version_added: 0.1.0
description:
  - Records one KVM host of the fleet in the ledger - the zone it serves, the libvirt URI by which
    runs reach it and the command prefix that runs commands on it, its uplink, the zone's public
    IP pools on it, its zone-link underlay and backup paths, and the capacity and versions
    libvirt reports (CPUs, memory, libvirt and QEMU versions), read from the host at each run.
  - The control plane (C(vce serve)) reaches the host with nothing but this record - its URI,
    O(host_command) and settings - so customers never hold them.
  - A run whose declaration and the host's capacity match the record changes nothing.
  - O(state=absent) removes the record. It is refused while the host still has objects of
    tenants (domains or networks with vce ownership metadata) at the recorded URI; the error
    says how many and names a few.
author:
  - vce.kvm developers (!UNKNOWN)
extends_documentation_fragment:
  - vce.kvm.common.ledger
  - vce.kvm.common.ledger_attributes
options:
  name:
    description:
      - The host's name in the fleet, usually its inventory name - a lowercase DNS name.
    type: str
    required: true
  zone:
    description:
      - The zone the host serves (1-32 lowercase letters, digits and C(-)). Required when
        O(state=present).
    type: str
  uri:
    description:
      - The libvirt URI by which runs reach the host. Its capacity is read through it, and
        O(state=absent) looks for tenants' objects through the recorded one.
    type: str
    default: qemu:///system
  uplink:
    description:
      - The host's interface towards the zone's public network (1-15 of C(a-z), C(0-9), C(.),
        C(_), C(-)). Required with O(public_pools).
    type: str
  public_pools:
    description:
      - The zone's public IP pools on this host, checked as the zone configuration of
        M(vce.kvm.public_ip) is.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The pool's name (1-32 lowercase letters, digits and C(-)).
        type: str
        required: true
      cidr:
        description: The pool's IPv4 network, for example V(203.0.113.0/24).
        type: str
        required: true
      gateway:
        description: The public network's gateway (never handed out).
        type: str
        required: true
      exclude:
        description: Addresses of the pool that are never handed out.
        type: list
        elements: str
        default: []
  host_command:
    description:
      - The command prefix that runs commands (C(ip), C(nft), C(systemctl), C(qemu-img)) on the
        host, for example V([ssh, root@kvm-01.example.net]). Omitted or empty - commands run
        where the run runs.
    type: list
    elements: str
  underlay_ip:
    description:
      - The host's IPv4 address on the underlay that zone links (VXLAN) run over. Given together
        with O(underlay_dev).
    type: str
  underlay_dev:
    description:
      - The host's underlay interface (1-15 of C(a-z), C(0-9), C(.), C(_), C(-)). Given together
        with O(underlay_ip).
    type: str
  backup_root:
    description:
      - The directory backups are written under, as M(vce.kvm.backup_schedule) takes it
        (an absolute path of letters, digits and C(. _ - /)). Omitted - not recorded, the
        module's default applies.
    type: path
  unit_dir:
    description: Where backup schedules' systemd units go on the host (as O(backup_root)).
    type: path
  config_dir:
    description: Where backup schedules keep their runner configurations (as O(backup_root)).
    type: path
  runner:
    description: The C(vce-backup) command on the host (as O(backup_root)).
    type: path
  state:
    description:
      - V(present) - the record exists with these values and the host's current capacity.
      - V(absent) - the record is removed; refused while tenants' objects remain on the host.
    type: str
    choices: [present, absent]
    default: present
requirements:
  - libvirt-python on the machine that runs the module
notes:
  - Invalid input fails before anything is changed; the error names the field and the reason.
seealso:
  - module: vce.kvm.storage_pool
  - module: vce.kvm.public_ip
"""

EXAMPLES = r"""
- name: Record this host in its zone, with the zone's public pool
  vce.kvm.host:
    name: "{{ inventory_hostname }}"
    zone: almaty-1
    uplink: eth1
    public_pools:
      - name: main
        cidr: 203.0.113.0/24
        gateway: 203.0.113.1
        exclude: [203.0.113.2]

- name: Record a host the control plane reaches over SSH, with its underlay and backup paths
  vce.kvm.host:
    name: kvm-02.example.net
    zone: almaty-1
    uri: qemu+ssh://root@kvm-02.example.net/system
    host_command: [ssh, root@kvm-02.example.net]
    underlay_ip: 10.0.0.12
    underlay_dev: eth2
    backup_root: /srv/backups

- name: Remove the record of a host that was emptied
  vce.kvm.host:
    name: kvm-07.example.net
    state: absent
"""

RETURN = r"""
plan:
  description: The ledger changes made, or in check mode to be made.
  returned: always
  type: list
  elements: dict
  sample:
    - {kind: host, name: kvm-01, action: update, class: live, field: record, before: {memory_mib: 65536},
       after: {memory_mib: 131072}}
host:
  description: The host's record as the ledger holds it after the run (empty if there is none).
  returned: always
  type: dict
  sample:
    name: kvm-01
    zone: almaty-1
    uri: qemu:///system
    uplink: eth1
    public_pools: [{name: main, cidr: 203.0.113.0/24, gateway: 203.0.113.1, exclude: [203.0.113.2]}]
    host_command: [ssh, root@kvm-01.example.net]
    settings: {underlay_ip: 10.0.0.11, underlay_dev: eth2, backup_root: /srv/backups}
    cpus: 32
    memory_mib: 131072
    libvirt_version: 9.0.0
    qemu_version: 7.2.0
    registered_at: "2026-11-24T09:31:02.118734+00:00"
    updated_at: "2026-11-24T09:31:02.118734+00:00"
    run_id: 8d0c4f3b9a2e4d6f8a1b2c3d4e5f6a7b
    actor: operator
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import (
    LEDGER_OPTIONS,
    host_spec,
    run_module,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.host import (
    PATH_SETTINGS,
    run_host,
)

PUBLIC_POOL_OPTIONS = {
    "name": {"type": "str", "required": True},
    "cidr": {"type": "str", "required": True},
    "gateway": {"type": "str", "required": True},
    "exclude": {"type": "list", "elements": "str", "default": []},
}


def main() -> None:
    module = AnsibleModule(
        argument_spec=host_spec(
            **LEDGER_OPTIONS,
            name={"type": "str", "required": True},
            zone={"type": "str"},
            uplink={"type": "str"},
            public_pools={
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": PUBLIC_POOL_OPTIONS,
            },
            host_command={"type": "list", "elements": "str"},
            underlay_ip={"type": "str"},
            underlay_dev={"type": "str"},
            **{setting: {"type": "path"} for setting in PATH_SETTINGS},
            state={"type": "str", "default": "present", "choices": ["present", "absent"]},
        ),
        required_if=[("state", "present", ("zone",))],
        supports_check_mode=True,
    )
    run_module(module, run_host)


if __name__ == "__main__":
    main()
