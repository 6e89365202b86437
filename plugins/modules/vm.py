#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm
short_description: A tenant's virtual machine on a KVM host
version_added: 0.1.0
description:
  - Declares one VM of a tenant - vCPUs, memory, an overlay boot disk on a base image, extra
    disks, NICs on the tenant's networks with fixed MAC and IP, a cloud-init seed, and its
    power state - and makes the KVM host match it through libvirt.
  - vCPU and memory changes are applied live when they fit within O(max_vcpus) and
    O(max_memory_mib), which are fixed when the VM is created. Other changes to a running
    VM are written to its definition and reported in RV(pending_restart); they are applied
    at once only with O(allow_restart=true).
  - Disks are never shrunk, and the base image of an existing VM is never swapped.
  - The operator blocks or unblocks one VM with O(blocked) - a blocked VM is paused and its
    tenant's runs (Ansible or Pulumi) cannot start or change it until it is unblocked.
author:
  - vce.kvm developers (!UNKNOWN)
extends_documentation_fragment:
  - vce.kvm.common
  - vce.kvm.common.ledger
  - vce.kvm.common.images
  - vce.kvm.common.attributes
options:
  name:
    description: The VM's name within the tenant (libvirt name C(<tenant>_<name>)).
    type: str
    required: true
  state:
    description:
      - V(running) and V(stopped) create the VM if needed and set its power state.
      - V(absent) deletes the VM with its boot disk and cloud-init seed, and removes its
        DHCP reservations. Extra disks are only detached.
    type: str
    choices: [running, stopped, absent]
    default: running
  vcpus:
    description: Number of virtual CPUs.
    type: int
    default: 1
  max_vcpus:
    description:
      - Most vCPUs the VM can get without a restart. Defaults to O(vcpus).
    type: int
  memory_mib:
    description: Memory in MiB. Required unless O(state=absent) or O(blocked) is set.
    type: int
  max_memory_mib:
    description:
      - Most memory in MiB the VM can get without a restart. Defaults to O(memory_mib).
    type: int
  boot_disk:
    description:
      - The boot disk, a qcow2 overlay on a base image. Required unless O(state=absent) or
        O(blocked) is set.
    type: dict
    suboptions:
      image:
        description:
          - The base image - the name of an image of the catalogue of the host's zone (see
            M(vce.kvm.image)) or of one of the tenant's disks (see M(vce.kvm.disk)); a disk of
            the tenant is looked up first.
          - An operator may give an absolute path instead, accepted only when its real path is in
            one of O(image_dirs) and every file of its backing chain is in an image directory, a
            catalogue image or one of the tenant's disks. A tenant (the Pulumi provider) never
            gives a path.
          - A refused image names this field and changes nothing.
        type: str
        required: true
      image_format:
        description:
          - The format of an operator's path (default V(qcow2)); qemu-img reads the file as
            this format. A catalogue image or a disk has its recorded format, and giving this
            with one is refused.
        type: str
        choices: [qcow2, raw]
      size_gib:
        description: Size of the boot disk in GiB. It can grow later, never shrink.
        type: int
        required: true
      pool:
        description: Storage pool for the overlay. Defaults to O(default_pool).
        type: str
  disks:
    description:
      - Names of the tenant's disks (see M(vce.kvm.disk)) attached to the VM, in order
        (C(vdb), C(vdc), ...). Disks attached but not listed are detached.
    type: list
    elements: str
    default: []
  nics:
    description: Network interfaces, in order.
    type: list
    elements: dict
    default: []
    suboptions:
      network:
        description:
          - Name of a network of the same tenant. Changing it moves the NIC (same MAC) to that
            network with its fixed IP's reservation, in one change; on a running VM the guest
            takes its new address at its next restart (see docs/usage.md). Refused while a
            public IP the run does not declare is bound to the NIC.
        type: str
        required: true
      mac:
        description:
          - Unicast MAC address. When omitted, a stable MAC is derived from the tenant, the
            VM name and the NIC's position.
        type: str
      ip:
        description:
          - Fixed IPv4 address, handed out by the network's DHCP server as a static lease.
            When omitted, the NIC gets an address from the DHCP range.
        type: str
  cloud_init:
    description:
      - A cloud-init NoCloud seed (ISO 9660, label C(cidata)) attached as a CD-ROM. Changes
        take effect at the next boot.
    type: dict
    suboptions:
      hostname:
        description: Host name of the guest. Defaults to O(name).
        type: str
      ssh_authorized_keys:
        description: Public keys for the default user, one per item.
        type: list
        elements: str
        default: []
      user_data:
        description:
          - cloud-init user data (a C(#cloud-config) document or a script whose first line
            starts with C(#!)). With O(cloud_init.ssh_authorized_keys), it must be a
            C(#cloud-config) document.
          - A C(#cloud-config) document must parse (safe YAML loader) as one YAML document
            holding a mapping, else the plan is refused. The declared host name and keys are
            merged into it; its own C(ssh_authorized_keys) come first, and its C(hostname), if
            any, must be the declared one.
        type: str
  blocked:
    description:
      - Operator only. V(true) pauses the VM and locks it against its tenant's runs; V(false)
        releases the lock and resumes the VM (unless its whole tenant is suspended).
      - When set, only the block changes - O(state) and the VM's other options are ignored.
      - Each block and unblock is recorded in the ledger with O(requested_at), for the
        10-minute target of the terms (5.1).
    type: bool
  requested_at:
    description:
      - With O(blocked) - when the request to block or unblock was logged, as ISO 8601 with a UTC
        offset (V(2026-11-24T09:30:00+05:00)). Default - now.
    type: str
  reason:
    description: With O(blocked) - why, recorded in the ledger.
    type: str
  default_pool:
    description: Storage pool used where a disk names none.
    type: str
    default: default
  allow_restart:
    description: Restart a running VM when a change needs it.
    type: bool
    default: false
  shutdown_timeout:
    description: Seconds to wait for an ACPI shutdown before the VM is powered off.
    type: int
    default: 60
seealso:
  - module: vce.kvm.environment
  - module: vce.kvm.disk
  - module: vce.kvm.network
"""

EXAMPLES = r"""
- name: A web server on the tenant's network, started
  vce.kvm.vm:
    tenant: acme
    name: web1
    vcpus: 2
    max_vcpus: 4
    memory_mib: 2048
    max_memory_mib: 4096
    boot_disk:
      image: debian-12
      size_gib: 20
    disks: [data1]
    nics:
      - network: lan
        ip: 10.10.0.10
    cloud_init:
      ssh_authorized_keys:
        - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample admin@acme
    state: running

- name: Grow memory; restart the VM if the new size exceeds its maximum
  vce.kvm.vm:
    tenant: acme
    name: web1
    memory_mib: 8192
    max_memory_mib: 8192
    boot_disk:
      image: debian-12
      size_gib: 20
    allow_restart: true

- name: Block the VM at the operator's request (paused, locked against the tenant)
  vce.kvm.vm:
    tenant: acme
    name: web1
    blocked: true
    reason: abuse report 4711
    requested_at: "2026-11-24T09:30:00+05:00"

- name: Delete the VM
  vce.kvm.vm:
    tenant: acme
    name: web1
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
  description: The changes made, or in check mode to be made, in order.
  returned: always
  type: list
  elements: dict
  sample:
    - {kind: vm, name: web1, action: update, class: live, field: vcpus, before: 1, after: 2}
pending_restart:
  description: Changes written to the VM's definition that wait for its next restart.
  returned: always
  type: list
  elements: str
vm:
  description:
    - The VM as libvirt reports it after the run (empty after O(state=absent)).
    - With O(blocked), only its name and whether it is blocked.
  returned: always
  type: dict
  sample:
    libvirt_name: acme_web1
    state: running
    vcpus: 2
    memory_mib: 2048
    nics: [{mac: "52:54:00:1a:2b:3c", network: lan, ip: 10.10.0.10}]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import run_vm
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import (
    kind_spec,
    run_module,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=kind_spec("vm"),
        supports_check_mode=True,
    )
    run_module(module, run_vm)


if __name__ == "__main__":
    main()
