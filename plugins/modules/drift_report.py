#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: drift_report
short_description: Write drift cases as a JSON report and a JUnit XML report
version_added: 0.1.0
description:
  - Takes the cases M(vce.kvm.drift) returned for one or more hosts and writes them as a JSON
    document (summary and every case with its differences) and as JUnit XML (one test suite
    per host, one test case per object; drift is a failure, an object that could not be
    compared an error), for CI systems to read.
  - A file is rewritten only when its content changes.
author:
  - vce.kvm developers (!UNKNOWN)
options:
  cases:
    description: The cases, as M(vce.kvm.drift) returns them (the lists of several hosts joined).
    type: list
    elements: dict
    required: true
  json_path:
    description: Where to write the JSON report.
    type: path
  junit_path:
    description: Where to write the JUnit XML report.
    type: path
  generated_at:
    description:
      - A time stamp written into both reports (JUnit's C(timestamp)), e.g. C(now(utc=true).isoformat()).
      - Without it the reports depend on the cases only, so an unchanged drift rewrites nothing.
    type: str
attributes:
  check_mode:
    description: Writes nothing; reports whether a file would change.
    support: full
  diff_mode:
    description: Reports are machine-readable files; no diff is shown.
    support: none
  idempotent:
    description: The same cases (and time stamp) leave the files as they are.
    support: full
seealso:
  - module: vce.kvm.drift
"""

EXAMPLES = r"""
- name: Write the drift reports of every host on the controller
  vce.kvm.drift_report:
    cases: "{{ ansible_play_hosts | map('extract', hostvars, ['vce_drift', 'cases']) | flatten }}"
    json_path: drift-report.json
    junit_path: drift-report.xml
  delegate_to: localhost
  run_once: true
  check_mode: false
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
written:
  description: The report files that were (or in check mode would be) rewritten.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.engine.drift_report import (
    DriftCase,
    json_report,
    junit_report,
    summary,
    write_if_changed,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "cases": {"type": "list", "elements": "dict", "required": True},
            "json_path": {"type": "path"},
            "junit_path": {"type": "path"},
            "generated_at": {"type": "str"},
        },
        required_one_of=[("json_path", "junit_path")],
        supports_check_mode=True,
    )
    params = module.params
    try:
        cases = [DriftCase.from_dict(raw, f"cases[{i}]") for i, raw in enumerate(params["cases"])]
        stamp = params["generated_at"]
        written = []
        for path, render in (
            (params["json_path"], json_report),
            (params["junit_path"], junit_report),
        ):
            if path and write_if_changed(path, render(cases, stamp), module.check_mode):
                written.append(path)
    except SpecError as error:
        module.fail_json(msg=str(error), field=error.field, reason=error.reason)
    except VceError as error:
        module.fail_json(msg=str(error))
    module.exit_json(
        changed=bool(written),
        written=written,
        drifted=any(case.drifted for case in cases),
        summary=summary(cases),
    )


if __name__ == "__main__":
    main()
