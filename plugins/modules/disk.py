#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: disk
short_description: A tenant's virtual disk on a KVM host
version_added: 0.1.0
description:
  - Declares one disk of a tenant as a libvirt storage volume, and optionally attaches it to
    or detaches it from one of the tenant's VMs.
  - A disk grows live while its VM runs (block resize); it is never shrunk.
author:
  - vce.kvm developers (!UNKNOWN)
extends_documentation_fragment:
  - vce.kvm.common
  - vce.kvm.common.ledger
  - vce.kvm.common.images
  - vce.kvm.common.attributes
options:
  name:
    description: The disk's name within the tenant (volume C(<tenant>_<name>.qcow2)).
    type: str
    required: true
  state:
    description:
      - V(present) creates or grows the disk and leaves its attachment as it is.
      - V(attached) also attaches it to O(attach_to), live when the VM runs.
      - V(detached) also detaches it from whichever VM has it.
      - V(absent) deletes it; refused while a VM has it attached.
    type: str
    choices: [present, attached, detached, absent]
    default: present
  size_gib:
    description: Size in GiB. Required unless O(state=absent).
    type: int
  pool:
    description: Storage pool of the volume.
    type: str
    default: default
  format:
    description: Volume format.
    type: str
    choices: [qcow2, raw]
    default: qcow2
  backing_image:
    description:
      - A base image the qcow2 disk starts from (copy on write) - the name of an image of the
        catalogue of the host's zone (see M(vce.kvm.image)) or of another of the tenant's disks
        (looked up first).
      - An operator may give an absolute path instead, accepted only when its real path is in one
        of O(image_dirs) and every file of its backing chain is in an image directory, a catalogue
        image or one of the tenant's disks; it is read as qcow2. A tenant (the Pulumi provider)
        never gives a path. A refused image names this field and changes nothing.
    type: str
  attach_to:
    description: The VM of the same tenant to attach the disk to, with O(state=attached).
    type: str
seealso:
  - module: vce.kvm.vm
  - module: vce.kvm.environment
"""

EXAMPLES = r"""
- name: A 20 GiB data disk attached to web1
  vce.kvm.disk:
    tenant: acme
    name: data1
    size_gib: 20
    state: attached
    attach_to: web1

- name: Grow it to 40 GiB, live
  vce.kvm.disk:
    tenant: acme
    name: data1
    size_gib: 40
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
    - {kind: disk, name: data1, action: resize, class: live, field: size_gib, before: 20, after: 40}
disk:
  description: The volume after the run (empty after O(state=absent)).
  returned: always
  type: dict
  sample: {volume: acme_data1.qcow2, pool: default, size_gib: 40, attached_to: web1}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import run_disk
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import (
    kind_spec,
    run_module,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=kind_spec("disk"),
        required_if=[
            ("state", "present", ("size_gib",)),
            ("state", "attached", ("size_gib", "attach_to")),
            ("state", "detached", ("size_gib",)),
        ],
        supports_check_mode=True,
    )
    run_module(module, run_disk)


if __name__ == "__main__":
    main()
