#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: drift
short_description: Compare the tenant environments declared for a KVM host with the host
version_added: 0.1.0
description:
  - Reads the KVM host once and compares it with the declared environments of its tenants -
    networks, disks, VMs, public IPs, zone links and backup schedules - without changing
    anything.
  - Each declared object becomes one case - V(in_sync), V(drifted) (for example vCPU or memory
    or power state changed by hand, a disk resized, a NIC or DHCP lease removed, an nft rule
    or public address removed, a backup timer deleted), V(missing) (declared but not on the
    host), or V(error) (it could not be compared, with the reason).
  - Every object tagged for a tenant that no declaration on this host mentions - including
    every object of a tenant that is not declared at all - becomes an V(orphan) case.
  - Every object named with a tenant's prefix that is not the tenant's becomes a case named by
    its libvirt name (a volume's as C(pool/name)) - V(unowned) (a domain or network with no
    ownership metadata, another tenant's or another kind's, or metadata naming another object;
    a volume named as vce.kvm never names one), or V(duplicated) (a copy of a real object's
    ownership metadata; two volumes claiming one disk). vce.kvm never changes, deletes or
    counts such an object; a person must remove or rename it.
  - The comparison is the plan M(vce.kvm.environment) would make with O(vce.kvm.environment#module:prune)
    and restarts allowed; each difference names the action an apply would take.
  - Use M(vce.kvm.drift_report) to write the cases of every host as JSON and JUnit XML, as
    C(playbooks/drift.yml) does; the C(vce drift) command does the same without Ansible.
author:
  - vce.kvm developers (!UNKNOWN)
options:
  uri:
    description:
      - libvirt connection URI of the KVM host.
    type: str
    default: qemu:///system
  ledger_url:
    description:
      - The ledger that records public IPs, zone links and backup schedules, as a database URL.
      - Default - the environment variable E(VCE_LEDGER_URL), else the SQLite file of the user
        (see M(vce.kvm.environment)).
    type: str
  host_name:
    description:
      - The name the cases give this host, usually C(inventory_hostname).
      - Default - O(uri).
    type: str
  tenants:
    description:
      - The declared tenant environments of this host - each key a tenant, each value its
        M(vce.kvm.environment) options (V(networks), V(disks), V(vms), V(public_ips),
        V(zone_links), V(backup_schedules)); other keys (customer, plan, quotas) are ignored.
      - This is the inventory's C(vce_tenants).
    type: dict
    default: {}
  only_tenants:
    description:
      - Compare only these tenants (declared or orphaned); default all.
    type: list
    elements: str
    default: []
  zone:
    description: The host's availability zone (needed for public IPs).
    type: str
  zone_config:
    description: The zone's uplink and public pools, as for M(vce.kvm.environment).
    type: dict
  host_command:
    description: Prefix for host-side commands (nft, ip), as for M(vce.kvm.environment).
    type: list
    elements: str
  default_pool:
    description: Storage pool of disks that name none.
    type: str
    default: default
extends_documentation_fragment:
  - vce.kvm.common.backup_host
attributes:
  check_mode:
    description: Read-only; runs the same in check mode.
    support: full
  diff_mode:
    description: Shows each drifted object as C(before) (the host) and C(after) (the declaration).
    support: full
  idempotent:
    description: Reads only; never reports a change.
    support: full
  action_group:
    description: Use C(group/vce.kvm.vce) in C(module_defaults) to set O(uri) once.
    support: full
    membership:
      - vce.kvm.vce
requirements:
  - libvirt-python on the machine that runs the module
  - SQLAlchemy 2 and Alembic (psycopg 3 for a PostgreSQL ledger)
seealso:
  - module: vce.kvm.drift_report
  - module: vce.kvm.environment
"""

EXAMPLES = r"""
- name: Compare the host with its declarations
  vce.kvm.drift:
    uri: qemu:///system
    host_name: "{{ inventory_hostname }}"
    tenants: "{{ vce_tenants }}"
    default_pool: "{{ vce_pool }}"
  register: drift

- name: Fail when anything drifted
  ansible.builtin.assert:
    that: not drift.drifted
    fail_msg: "{{ drift.cases | rejectattr('status', 'eq', 'in_sync') | list }}"
"""

RETURN = r"""
drifted:
  description: Whether any case is not V(in_sync).
  returned: always
  type: bool
summary:
  description: How many cases of each status.
  returned: always
  type: dict
  sample: {resources: 12, in_sync: 10, drifted: 1, missing: 0, orphan: 1, unowned: 0,
           duplicated: 0, error: 0}
cases:
  description:
    - One per declared object, per orphan and per object named like a tenant's that is not
      theirs, in declaration order, then orphans, then those.
    - C(differences) lists what an apply would change - C(action), C(field), C(declared),
      C(actual), C(class) (V(live), V(restart) or V(replace)).
  returned: always
  type: list
  elements: dict
  sample:
    - host: kvm1
      tenant: acme
      kind: vm
      name: web1
      status: drifted
      message: null
      differences:
        - {action: update, field: vcpus, declared: 2, actual: 1, class: live}
"""

import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.engine.drift import (
    DeclaredHost,
    DriftCheck,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.drift_report import report_document
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import (
    BACKUP_HOST_OPTIONS,
)

SHARED_OPTIONS = ("zone", "zone_config", "host_command", "default_pool", *BACKUP_HOST_OPTIONS)


def drift_diff(cases: list[dict]) -> dict:
    before: dict = {}
    after: dict = {}
    for case in cases:
        if case["status"] == "in_sync":
            continue
        key = f"{case['host']}/{case['tenant']}/{case['kind']}/{case['name']}"
        before[key] = {d["field"] or d["action"]: d["actual"] for d in case["differences"]}
        after[key] = {d["field"] or d["action"]: d["declared"] for d in case["differences"]}
        if case["status"] == "error":
            before[key] = after[key] = {"error": case["message"]}
    return {"before": before, "after": after}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "uri": {"type": "str", "default": "qemu:///system"},
            "ledger_url": {"type": "str"},
            "host_name": {"type": "str"},
            "tenants": {"type": "dict", "default": {}},
            "only_tenants": {"type": "list", "elements": "str", "default": []},
            "zone": {"type": "str"},
            "zone_config": {"type": "dict"},
            "host_command": {"type": "list", "elements": "str"},
            "default_pool": {"type": "str", "default": "default"},
            **BACKUP_HOST_OPTIONS,
        },
        supports_check_mode=True,
    )
    params = module.params
    try:
        declaration = DeclaredHost.from_options(
            params["host_name"] or params["uri"],
            params["uri"],
            params["ledger_url"],
            params["tenants"],
            {option: params[option] for option in SHARED_OPTIONS},
        )
        cases = DriftCheck(declaration, params["only_tenants"]).cases()
    except SpecError as error:
        module.fail_json(msg=str(error), field=error.field, reason=error.reason)
    except VceError as error:
        module.fail_json(msg=str(error))
    except Exception as error:  # a bug of ours: say so plainly, keep the trace for -vvv
        module.fail_json(
            msg=f"Unexpected error in vce.kvm ({type(error).__name__}: {error}); please report it",
            exception=traceback.format_exc(),
        )
    document = report_document(cases)
    if module._diff:
        document["diff"] = drift_diff(document["cases"])
    module.exit_json(changed=False, **document)


if __name__ == "__main__":
    main()
