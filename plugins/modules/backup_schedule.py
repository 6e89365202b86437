#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_schedule
short_description: A named backup schedule of a tenant VM - systemd timer, live incremental backups, retention
version_added: 0.1.0
description:
  - Terms 3.9 - the customer sets backup schedules at the available frequencies, several per VM.
    Each schedule is a systemd timer + service pair on the KVM host,
    C(vce-backup-<tenant>_<vm>_<name>.timer) and C(.service), whose service runs the host-side
    runner C(vce-backup run --config <config_dir>/vce-backup-<tenant>_<vm>_<name>.json).
  - The schedule's frequency is read from its O(calendar) (the shortest gap between its next 100
    elapses, from C(systemd-analyze calendar)) and must be one the tenant's plan allows
    (C(backup_frequencies) of the plan in the inventory's C(vce_plans); default daily, weekly,
    monthly). A calendar more frequent than hourly is always refused.
  - Both units are checked with C(systemd-analyze verify) before they are installed; the timer
    is enabled (C(timers.target.wants)) and, when systemd runs on the host, started.
  - The runner backs up a running VM live through libvirt's backup API (push mode), full the
    first time and incremental from the schedule's own checkpoint after that; incrementals are
    rebased onto the previous backup, checked with C(qemu-img check), recorded in the ledger
    (size, duration, result), then the schedule's retention is applied - to that schedule's
    backups only. A stopped VM's disks are copied. Runs for one VM are serialised.
  - Backups live in C(<target>/<tenant>/<vm>/<name>/<backup id>/). Restore them with
    M(vce.kvm.backup_restore).
  - Counts against the tenant's C(backup_schedules) quota; the backups' size against
    C(backup_storage_gib) (a run refuses to start while that quota is full).
  - Removing a schedule removes its units and config; its backups stay unless
    O(purge_backups=true).
author:
  - vce.kvm developers (!UNKNOWN)
extends_documentation_fragment:
  - vce.kvm.common
  - vce.kvm.common.ledger
  - vce.kvm.common.backup_host
  - vce.kvm.common.attributes
options:
  vm:
    description: The tenant VM the schedule backs up.
    type: str
    required: true
  name:
    description: The schedule's name, unique per VM (e.g. V(daily), V(weekly)).
    type: str
    required: true
  state:
    description: V(present) installs or updates the schedule; V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  calendar:
    description:
      - When to run - a systemd calendar expression (C(man systemd.time)), e.g. V(daily),
        V(*-*-* 02:30), V(Sun 03:00), V(hourly).
      - Required with O(state=present).
    type: str
  retention:
    description:
      - What this schedule keeps, counting only its own backups. At least one rule; each at
        least 1. A backup kept by any rule stays; the newest always stays.
      - Periods are calendar hours, days, ISO weeks and months in UTC; each keeps the newest
        backup of that period.
      - Required with O(state=present).
    type: dict
    suboptions:
      keep_last:
        description: Keep the newest N backups.
        type: int
      keep_hourly:
        description: Keep the newest backup of each of the newest N hours that have one.
        type: int
      keep_daily:
        description: Likewise per day.
        type: int
      keep_weekly:
        description: Likewise per ISO week.
        type: int
      keep_monthly:
        description: Likewise per month.
        type: int
  disks:
    description:
      - The VM's disks to back up, by declared name (V(boot) for the boot disk). Default - all.
    type: list
    elements: str
  target:
    description:
      - The directory on the host to keep the backups in; it must be O(backup_root) or inside
        it. Default - O(backup_root).
    type: path
  pool:
    description:
      - Or a directory storage pool whose path is the target (also inside O(backup_root)).
    type: str
  timeout_minutes:
    description: A backup job still running after this long is aborted and counted as failed.
    type: int
    default: 360
  purge_backups:
    description: With O(state=absent), also delete the schedule's backups and checkpoints.
    type: bool
    default: false
  host_command:
    description:
      - How to run commands on the KVM host - a command prefix such as V([ssh, root@kvm1]).
        Default - directly, on the machine that runs the module (the usual case).
    type: list
    elements: str
seealso:
  - module: vce.kvm.backup_restore
  - module: vce.kvm.environment
"""

EXAMPLES = r"""
- name: Nightly backups of web1, a week of them plus four Sundays
  vce.kvm.backup_schedule:
    tenant: acme
    vm: web1
    name: nightly
    calendar: "*-*-* 02:30"
    retention: {keep_daily: 7, keep_weekly: 4}

- name: A second, monthly schedule of the data disk only, kept a year
  vce.kvm.backup_schedule:
    tenant: acme
    vm: web1
    name: monthly
    calendar: "*-*-01 04:00"
    disks: [data]
    retention: {keep_monthly: 12}

- name: Remove the nightly schedule and its backups
  vce.kvm.backup_schedule:
    tenant: acme
    vm: web1
    name: nightly
    state: absent
    purge_backups: true
"""

RETURN = r"""
plan:
  description: The changes made, or in check mode to be made, in order.
  returned: always
  type: list
  elements: dict
  sample:
    - kind: backup_schedule
      name: web1/nightly
      action: create
      class: live
      field: schedule
      before: null
      after: {calendar: "*-*-* 02:30", frequency: daily, retention: {keep_daily: 7}, disks: all}
backup_schedule:
  description: The schedule after the run (empty after O(state=absent)).
  returned: always
  type: dict
  sample:
    vm: web1
    name: nightly
    calendar: "*-*-* 02:30"
    frequency: daily
    retention: {keep_daily: 7}
    disks: all
    target: /var/lib/vce-kvm/backups
    timer: vce-backup-acme_web1_nightly.timer
    service: vce-backup-acme_web1_nightly.service
    enabled: true
    backups: ["20261124T023000Z"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import (
    kind_spec,
    run_module,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.backup_schedule import (
    run_backup_schedule,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=kind_spec("backup_schedule"),
        required_if=[("state", "present", ("calendar", "retention"))],
        mutually_exclusive=[("target", "pool")],
        supports_check_mode=True,
    )
    run_module(module, run_backup_schedule)


if __name__ == "__main__":
    main()
