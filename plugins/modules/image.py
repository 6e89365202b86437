#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: image
short_description: A base image of a zone's catalogue, the images tenants' VMs and disks start from
version_added: 0.1.0
description:
  - Registers one base image in the ledger's catalogue of a zone - its name, its path (the same on
    every host of the zone), its format and virtual size as C(qemu-img info) reads them on the
    host, and the SHA-256 checksum of the file.
  - A VM's O(vce.kvm.vm#module:boot_disk.image) and a disk's O(vce.kvm.disk#module:backing_image)
    name an image of this catalogue (or one of the tenant's own disks); tenants never give host
    paths.
  - The file must lie in one of O(image_dirs) (after symbolic links are resolved; the real path is
    recorded) and must stand alone - an image with a backing file is refused.
  - The checksum of a name never changes - disks made from the image read its content. Run the
    module on every host of the zone - the first run records the image, the others check that
    their copy has the recorded checksum and change nothing. A different file under the same
    name is refused; register it under a new name.
  - O(state=absent) removes the record. Disks already made from the image keep working; new VMs
    and disks cannot name it, and runs of VMs that still declare it fail, naming the field.
author:
  - vce.kvm developers (!UNKNOWN)
extends_documentation_fragment:
  - vce.kvm.common.ledger
attributes:
  check_mode:
    description: Can run in check mode and return the planned changes without making them.
    support: full
  diff_mode:
    description: Returns the before and after values of every planned change in diff mode.
    support: full
  idempotent:
    description: A second run with the same arguments reports C(changed=false).
    support: full
options:
  name:
    description: The image's name in its zone's catalogue (1-32 lowercase letters, digits and C(-)).
    type: str
    required: true
  zone:
    description: The zone whose catalogue holds the image (the inventory's C(vce_zone)).
    type: str
    required: true
  path:
    description:
      - The image file on the host; the same path on every host of the zone. Required when
        O(state=present).
    type: path
  format:
    description:
      - The file's format. qemu-img reads the file as this format, never guessing it from the
        content.
    type: str
    choices: [qcow2, raw]
    default: qcow2
  sha256:
    description:
      - The checksum the file must have (64 hex digits), for example from the image's publisher. A
        file with another checksum is refused. Without it, the file's checksum is recorded.
    type: str
  image_dirs:
    description: The host's image directories; the image file must be in one of them.
    type: list
    elements: path
    default: [/var/lib/vce-kvm/images]
  host_command:
    description:
      - A command prefix that runs qemu-img, realpath and sha256sum on the KVM host, for example
        V([ssh, root@kvm1]). Without it they run where the module runs.
    type: list
    elements: str
  state:
    description:
      - V(present) - the catalogue records the image with the file's values.
      - V(absent) - the record is removed (the file is left alone).
    type: str
    choices: [present, absent]
    default: present
requirements:
  - qemu-img, realpath and sha256sum on the KVM host
notes:
  - Invalid input fails before anything is changed; the error names the field and the reason.
  - Reading the checksum takes about a second per GiB of the file, at every run.
seealso:
  - module: vce.kvm.vm
  - module: vce.kvm.disk
  - module: vce.kvm.info
"""

EXAMPLES = r"""
- name: Register the zone's Debian image on every host of the zone
  vce.kvm.image:
    name: debian-12
    zone: "{{ vce_zone }}"
    path: /var/lib/vce-kvm/images/debian-12-genericcloud-amd64.qcow2
    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08

- name: Take an image out of the catalogue
  vce.kvm.image:
    name: debian-11
    zone: almaty-1
    state: absent
"""

RETURN = r"""
plan:
  description: The catalogue changes made, or in check mode to be made.
  returned: always
  type: list
  elements: dict
  sample:
    - {kind: image, name: almaty-1/debian-12, action: create, class: live,
       after: {path: /var/lib/vce-kvm/images/debian-12.qcow2, format: qcow2, virtual_size: 2147483648,
               sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}}
image:
  description: The image's record as the catalogue holds it after the run (empty if there is none).
  returned: always
  type: dict
  sample:
    zone: almaty-1
    name: debian-12
    path: /var/lib/vce-kvm/images/debian-12.qcow2
    format: qcow2
    virtual_size: 2147483648
    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    registered_at: "2026-12-04T09:31:02.118734+00:00"
    updated_at: "2026-12-04T09:31:02.118734+00:00"
    run_id: 8d0c4f3b9a2e4d6f8a1b2c3d4e5f6a7b
    actor: operator
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.core import fields
from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import run_image
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import run_module


def main() -> None:
    module = AnsibleModule(
        argument_spec=fields.ansible_options(fields.IMAGE),
        required_if=[("state", "present", ("path",))],
        supports_check_mode=True,
    )
    run_module(module, run_image)


if __name__ == "__main__":
    main()
