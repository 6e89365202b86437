#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_restore
short_description: Restore a tenant VM's disk from a named backup, as a new disk or into the VM
version_added: 0.1.0
description:
  - Restores one disk of a backup taken by a M(vce.kvm.backup_schedule) schedule. The backup's
    chain (an incremental and the backups it builds on) is read as one image and written as a
    standalone qcow2 - the restored disk depends on no backup.
  - O(mode=new_disk) creates a new disk of the tenant beside the VM (not attached; attach it with
    M(vce.kvm.disk)). It counts against the C(disk_gib) quota.
  - O(mode=in_place) replaces the VM's disk - only with O(confirm=true). A running VM is shut down
    first (ACPI, then power off after O(shutdown_timeout)) and started again afterwards unless
    O(start=false). The image is written beside the disk and renamed over it, so a failed restore
    leaves the disk as it was. The VM's checkpoints are forgotten - the next backup of each
    schedule is a full one.
  - A restore is recorded in the ledger (event C(backup_restored)) under a key made of the
    backup, the disk, the mode, O(new_disk) and O(request); running the same task again changes
    nothing. Give a new O(request) to restore the same backup once more.
author:
  - vce.kvm developers (!UNKNOWN)
extends_documentation_fragment:
  - vce.kvm.common
  - vce.kvm.common.ledger
  - vce.kvm.common.attributes
options:
  backup_root:
    description: The operator's backup root on the KVM host; O(target) must be inside it.
    type: path
    default: /var/lib/vce-kvm/backups
  vm:
    description: The VM whose backup is restored.
    type: str
    required: true
  schedule:
    description: The schedule that took the backup.
    type: str
    required: true
  backup:
    description: The backup's id (e.g. V(20261124T023000Z)), or V(latest).
    type: str
    default: latest
  disk:
    description: Which of the backup's disks, by declared name (V(boot) for the boot disk).
    type: str
    default: boot
  mode:
    description: V(new_disk) restores beside the VM; V(in_place) into the VM's own disk.
    type: str
    choices: [new_disk, in_place]
    default: new_disk
  new_disk:
    description: The new disk's name, with O(mode=new_disk).
    type: str
  pool:
    description: The new disk's storage pool. Default - the pool of the disk the backup was taken from.
    type: str
  target:
    description: Where the schedule keeps its backups. Default - O(backup_root).
    type: path
  confirm:
    description: Required to be V(true) for O(mode=in_place) - it replaces all data on the disk.
    type: bool
    default: false
  start:
    description: With O(mode=in_place), start the VM again if it was running.
    type: bool
    default: true
  shutdown_timeout:
    description: Seconds to wait for a clean shutdown before powering the VM off.
    type: int
    default: 60
  request:
    description: A token of this restore request, part of its idempotency key.
    type: str
seealso:
  - module: vce.kvm.backup_schedule
"""

EXAMPLES = r"""
- name: Look at last night's data disk beside the VM
  vce.kvm.backup_restore:
    tenant: acme
    vm: web1
    schedule: nightly
    backup: 20261123T023000Z
    disk: data
    new_disk: data-20261123

- name: Roll web1's boot disk back to the latest backup
  vce.kvm.backup_restore:
    tenant: acme
    vm: web1
    schedule: nightly
    disk: boot
    mode: in_place
    confirm: true
    request: ticket-4711
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
    - kind: disk
      name: data-20261123
      action: restore
      class: live
      field: data
      before: null
      after: {schedule: nightly, backup: 20261123T023000Z, disk: data, pool: default}
backup:
  description: The backup restored from.
  returned: always
  type: dict
  sample:
    schedule: nightly
    backup: 20261123T023000Z
    taken_at: "2026-11-23T02:30:00+00:00"
    disk: data
    path: /var/lib/vce-kvm/backups/acme/web1/nightly/20261123T023000Z
disk:
  description: The new disk (O(mode=new_disk)).
  returned: when O(mode=new_disk)
  type: dict
vm:
  description: The VM (O(mode=in_place)).
  returned: when O(mode=in_place)
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import (
    BACKUP_HOST_OPTIONS,
    ledger_spec,
    run_module,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.backup_restore import (
    run_backup_restore,
)

# The restore reads the backup and writes the disk where the module runs: on the KVM host.


def main() -> None:
    module = AnsibleModule(
        argument_spec=ledger_spec(
            vm={"type": "str", "required": True},
            schedule={"type": "str", "required": True},
            backup={"type": "str", "default": "latest"},
            disk={"type": "str", "default": "boot"},
            mode={"type": "str", "default": "new_disk", "choices": ["new_disk", "in_place"]},
            new_disk={"type": "str"},
            pool={"type": "str"},
            target={"type": "path"},
            confirm={"type": "bool", "default": False},
            start={"type": "bool", "default": True},
            shutdown_timeout={"type": "int", "default": 60},
            request={"type": "str", "no_log": False},
            backup_root=BACKUP_HOST_OPTIONS["backup_root"],
        ),
        required_if=[("mode", "new_disk", ("new_disk",))],
        supports_check_mode=True,
    )
    run_module(module, run_backup_restore)


if __name__ == "__main__":
    main()
