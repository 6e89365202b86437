#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: quota
short_description: Record and apply a tenant's quota increase request
version_added: 0.1.0
description:
  - Records a quota change request - who asked, when it was logged, what was asked - and applies
    it to the tenant's quota overrides in the same ledger transaction. The record keeps
    C(requested_at) and C(applied_at), so the 20-minute target of the terms (5.1) can be reported.
  - A limit below what the tenant uses now is refused, with the usage shown; nothing is changed.
  - Idempotent - a request whose limits already hold, or whose O(reference) is already recorded,
    changes nothing.
author:
  - vce.kvm developers (!UNKNOWN)
extends_documentation_fragment:
  - vce.kvm.common.ledger
  - vce.kvm.common.ledger_attributes
options:
  tenant:
    description: The tenant, registered with M(vce.kvm.tenant).
    type: str
    required: true
  quotas:
    description:
      - The new limits, a mapping of quota kind to limit - C(vms), C(vcpus), C(ram_gib), C(disk_gib),
        C(public_ips), C(networks), C(zone_links), C(backup_schedules), C(backup_storage_gib).
    type: dict
    required: true
  requested_by:
    description: Who asked (a person or the support ticket's author). Default - the run's actor.
    type: str
  requested_at:
    description:
      - When the request was logged, as ISO 8601 with a UTC offset (V(2026-11-24T09:30:00+05:00)).
        Default - now.
    type: str
  reference:
    description:
      - The request's own identifier (e.g. the support ticket). A request with a reference is
        recorded once, however often the task runs.
    type: str
seealso:
  - module: vce.kvm.tenant
"""

EXAMPLES = r"""
- name: Apply support ticket 8812 - acme asked for 16 vCPUs and 32 GiB of RAM
  vce.kvm.quota:
    tenant: acme
    quotas:
      vcpus: 16
      ram_gib: 32
    requested_by: support/aigerim
    requested_at: "2026-11-24T09:30:00+05:00"
    reference: ticket-8812
  register: request

- name: Was it handled within 20 minutes?
  ansible.builtin.debug:
    msg: "{{ request.request.elapsed_seconds }} s, met: {{ request.request.met }}"
"""

RETURN = r"""
plan:
  description: The change made, or in check mode to be made.
  returned: always
  type: list
  elements: dict
  sample:
    - {kind: quota, name: acme, action: update, class: live, field: quotas, before: {vcpus: 8}, after: {vcpus: 16}}
request:
  description: The recorded request with its timing (empty when nothing was recorded).
  returned: always
  type: dict
  sample:
    key: 0f3c...
    quotas: {vcpus: 16, ram_gib: 32}
    requested_by: support/aigerim
    requested_at: "2026-11-24T04:30:00+00:00"
    applied_at: "2026-11-24T04:41:12+00:00"
    elapsed_seconds: 672.0
    target_seconds: 1200.0
    met: true
tenant:
  description: The tenant after the run, with its quotas and usage (see M(vce.kvm.tenant)).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import run_module
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.tenant import run_quota


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "tenant": {"type": "str", "required": True},
            "quotas": {"type": "dict", "required": True},
            "requested_by": {"type": "str"},
            "requested_at": {"type": "str"},
            "reference": {"type": "str"},
            "ledger_url": {"type": "str"},
        },
        supports_check_mode=True,
    )
    run_module(module, run_quota)


if __name__ == "__main__":
    main()
