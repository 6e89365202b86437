#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: storage_pool
short_description: A storage pool of a KVM host (the directory that holds the tenants' disks)
version_added: 0.1.0
description:
  - Declares one libvirt storage pool of the host - defined, its directory built, started, and
    started at boot or not. Pools belong to the host, not to a tenant; tenants' disks
    (M(vce.kvm.disk), M(vce.kvm.vm)) name the pool they live in.
  - An existing pool whose directory or type differs from the declaration is refused, never
    redefined - its volumes would be lost from view.
  - O(state=absent) stops and undefines the pool and leaves its directory in place. It is refused
    while the pool holds volumes (the error says how many and names a few), and for an inactive
    pool, whose volumes cannot be counted.
author:
  - vce.kvm developers (!UNKNOWN)
extends_documentation_fragment:
  - vce.kvm.common.attributes
options:
  uri:
    description:
      - libvirt connection URI of the KVM host.
      - Use V(qemu:///system) when the module runs on the host itself, or
        V(qemu+ssh://root@host/system) to manage a host from the controller.
    type: str
    default: qemu:///system
  name:
    description: The pool's name in libvirt (1-64 of letters, digits, C(_), C(.), C(-)).
    type: str
    required: true
  path:
    description:
      - The pool's directory on the host, an absolute path. Required when O(state=present).
      - Made by libvirt when it is missing.
    type: path
  type:
    description: The pool type. Only directory pools are supported.
    type: str
    choices: [dir]
    default: dir
  autostart:
    description: Whether libvirt starts the pool when the daemon starts.
    type: bool
    default: true
  state:
    description:
      - V(present) - the pool is defined, its directory built, and the pool started.
      - V(absent) - the pool is stopped and undefined; its directory stays.
    type: str
    choices: [present, absent]
    default: present
requirements:
  - libvirt-python on the machine that runs the module
  - a libvirt daemon (libvirt 9.0 or later) on the KVM host
notes:
  - Invalid input fails before anything is changed; the error names the field and the reason.
seealso:
  - module: vce.kvm.host
  - module: vce.kvm.disk
"""

EXAMPLES = r"""
- name: The pool that holds the tenants' disks
  vce.kvm.storage_pool:
    name: default
    path: /var/lib/libvirt/images

- name: A pool for backups' scratch space, not started at boot
  vce.kvm.storage_pool:
    name: scratch
    path: /srv/vce/scratch
    autostart: false

- name: Remove a pool that holds no volumes any more
  vce.kvm.storage_pool:
    name: scratch
    state: absent
"""

RETURN = r"""
plan:
  description: The changes made, or in check mode to be made, in order.
  returned: always
  type: list
  elements: dict
  sample:
    - {kind: storage_pool, name: default, action: define, class: live, before: null,
       after: {type: dir, path: /var/lib/libvirt/images}}
    - {kind: storage_pool, name: default, action: build, class: live, field: directory, before: null,
       after: /var/lib/libvirt/images}
    - {kind: storage_pool, name: default, action: start, class: live, field: active, before: false, after: true}
    - {kind: storage_pool, name: default, action: autostart, class: live, field: autostart, before: false,
       after: true}
pool:
  description:
    - The pool as libvirt reports it after the run (in check mode, as it is now; empty when there
      is no such pool).
    - C(capacity_gib), C(available_gib) and C(volumes) (the number of volumes) are V(null) while
      the pool is inactive.
  returned: always
  type: dict
  sample: {name: default, path: /var/lib/libvirt/images, type: dir, active: true, autostart: true,
           capacity_gib: 251.97, available_gib: 226.14, volumes: 3}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import (
    host_spec,
    run_module,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.pool import run_storage_pool


def main() -> None:
    module = AnsibleModule(
        argument_spec=host_spec(
            name={"type": "str", "required": True},
            path={"type": "path"},
            type={"type": "str", "default": "dir", "choices": ["dir"]},
            autostart={"type": "bool", "default": True},
            state={"type": "str", "default": "present", "choices": ["present", "absent"]},
        ),
        required_if=[("state", "present", ("path",))],
        supports_check_mode=True,
    )
    run_module(module, run_storage_pool)


if __name__ == "__main__":
    main()
