#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: tenant
short_description: A tenant in the ledger - its customer, plan, quotas and state
version_added: 0.1.0
description:
  - Registers a tenant in the ledger and keeps its plan, quota overrides and state as declared.
    Every run that changes the tenant's objects is admitted against this record.
  - Quotas come from the tenant's plan (set automatically, terms 3.7); O(quotas) overrides some
    of them. Quota kinds - C(vms), C(vcpus), C(ram_gib), C(disk_gib), C(public_ips), C(networks),
    C(zone_links), C(backup_schedules), C(backup_storage_gib).
  - A new tenant starts in trial when its plan has trial hours and its customer identity never
    had a trial (terms 3.12); otherwise it is active. The trial's clock starts at the tenant's
    first VM start and runs for the plan's C(trial_hours) (72 by default) with the plan's trial
    quotas. When it ends the tenant becomes active (billed) automatically if any VM is running,
    else it is suspended. Both moments are recorded.
  - Suspending pauses the tenant's VMs on the host O(uri) names (loop over hosts for several)
    and locks every run of the tenant until it is resumed.
author:
  - vce.kvm developers (!UNKNOWN)
extends_documentation_fragment:
  - vce.kvm.common.ledger
  - vce.kvm.common.ledger_attributes
options:
  name:
    description: The tenant's name, the prefix of its libvirt objects. 1-32 lowercase letters, digits and C(-).
    type: str
    required: true
  customer:
    description:
      - The customer's identity (e.g. the contract or tax number). One customer may have
        several tenants; a trial is granted once per customer. Required for a new tenant;
        it cannot change later.
      - Identities are compared ignoring case, Unicode compatibility forms (NFKC) and
        surrounding whitespace; control and format characters are refused.
    type: str
  plan:
    description: The tenant's plan, defined in O(plans) now or by an earlier run. Required for a new tenant.
    type: str
  plans:
    description:
      - Plan definitions to record in the ledger, usually the inventory's C(vce_plans). Each key is
        a plan name; each value has C(quotas) (a limit for every quota kind), optional
        C(trial_quotas) (default - the same) and C(trial_hours) (default 72; V(0) for no trial),
        C(backup_frequencies), and C(prices) - the price list, per unit and hour as decimal
        strings (C(currency) default KZT, C(vcpu_hour), C(ram_gib_hour), C(disk_gib_hour),
        C(public_ip_hour), C(zone_link_hour), C(backup_gib_hour)). A plan's first prices hold for
        every month; a change takes effect at the start of the next month.
    type: dict
  quotas:
    description:
      - Quota overrides of this tenant over its plan, a mapping of quota kind to limit. V({}) removes them.
        Omit to keep the current ones. A limit below the tenant's current usage is refused.
      - Quota increase requests from support go through M(vce.kvm.quota), which records their
        timing.
    type: dict
  state:
    description:
      - V(active) - the tenant is in service (in trial while its trial lasts). From V(suspended),
        resumes it and its paused VMs on O(uri).
      - V(suspended) - pauses its VMs on O(uri) and refuses every change to its objects until it
        is resumed.
      - V(closed) - ends the tenant for good; refused while it still uses anything.
    type: str
    choices: [active, suspended, closed]
    default: active
  uri:
    description:
      - The KVM host whose VMs are paused on suspension and resumed on resumption. Without it,
        only the ledger changes (runs are still locked).
    type: str
  requested_at:
    description:
      - When the request behind a suspension or resumption was logged (ISO 8601 with a UTC
        offset). Default - now. Recorded for the request-handling targets of the terms (5.1).
    type: str
  reason:
    description: Why the state changes, recorded in the ledger.
    type: str
seealso:
  - module: vce.kvm.quota
  - module: vce.kvm.environment
"""

EXAMPLES = r"""
- name: Register a tenant on the standard plan (quotas set from the plan)
  vce.kvm.tenant:
    name: acme
    customer: "BIN 123456789012"
    plan: standard
    plans: "{{ vce_plans }}"

- name: Suspend it (its VMs on this host are paused and locked)
  vce.kvm.tenant:
    name: acme
    state: suspended
    uri: qemu:///system
    reason: unpaid invoice 2026-10
    requested_at: "2026-11-24T09:30:00+05:00"
"""

RETURN = r"""
plan:
  description: The ledger changes made, or in check mode to be made.
  returned: always
  type: list
  elements: dict
  sample:
    - {kind: tenant, name: acme, action: create, class: live, field: plan, before: null, after: standard}
tenant:
  description: The tenant as the ledger holds it after the run (empty if it does not exist).
  returned: always
  type: dict
  sample:
    name: acme
    customer: BIN 123456789012
    plan: standard
    state: trial
    quotas: {vms: 2, vcpus: 4, ram_gib: 4, disk_gib: 50, public_ips: 1, networks: 2, zone_links: 0, backup_schedules: 2, backup_storage_gib: 50}
    quota_overrides: {}
    usage: {vms: 1, vcpus: 1, ram_gib: "0.25", disk_gib: 2, public_ips: 0, networks: 1, zone_links: 0, backup_schedules: 0, backup_storage_gib: 0}
    trial: {granted: true, started_at: "2026-11-24T04:31:07+00:00", ends_at: "2026-11-27T04:31:07+00:00", ended_at: null}
    blocked_vms: []
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import run_module
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.tenant import run_tenant


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "customer": {"type": "str"},
            "plan": {"type": "str"},
            "plans": {"type": "dict"},
            "quotas": {"type": "dict"},
            "state": {
                "type": "str",
                "default": "active",
                "choices": ["active", "suspended", "closed"],
            },
            "uri": {"type": "str"},
            "requested_at": {"type": "str"},
            "reason": {"type": "str"},
            "ledger_url": {"type": "str"},
        },
        supports_check_mode=True,
    )
    run_module(module, run_tenant)


if __name__ == "__main__":
    main()
