# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`vce drift`: playbooks/drift.yml without Ansible's runner.

    vce drift -i INVENTORY [-i ...] [--hosts PATTERN] [--tenant T ...]
              [--json FILE] [--junit FILE] [--quiet]

The declarations are read from an Ansible inventory (any source ansible-core reads: YAML,
INI, directories with group_vars/host_vars; variables templated as a playbook would) under
the same contract as the drift playbook: `vce_uri`, `vce_tenants`, `vce_pool`, `vce_zone` +
`vce_zones`, `vce_host_command`, `vce_ledger_url`, `vce_backup_*`. Each host is read once.
Exit status: 0 no drift, 1 drift (or a host that could not be compared), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..plugins.module_utils.core.errors import SpecError
from ..plugins.module_utils.engine.drift import HOST_VARIABLES, DeclaredHost, DriftCheck
from ..plugins.module_utils.engine.drift_report import (
    IN_SYNC,
    DriftCase,
    json_report,
    junit_report,
    summary,
    write_if_changed,
)
from .exits import reported, undecodable

INVENTORY_VARIABLES = (
    "vce_uri", "vce_tenants", "vce_zone", "vce_zones", "vce_ledger_url", *HOST_VARIABLES,
)  # fmt: skip
# Hosts are independent: read several at once, but not so many that a big fleet floods the
# controller with libvirt connections.
PARALLEL_HOSTS = 8


def add_parser(groups: Any) -> None:
    sub = groups.add_parser(
        "drift",
        help="compare the hosts with the inventory's declarations (JSON/JUnit reports)",
        description=DESCRIPTION,
    )
    add_arguments(sub)


DESCRIPTION = (
    "Compare KVM hosts with the tenant environments an Ansible inventory declares; exit 1 "
    "when anything drifted."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-i", "--inventory", action="append", required=True, help="an Ansible inventory source"
    )
    parser.add_argument(
        "--hosts", default="kvm_hosts", help="inventory host pattern (default kvm_hosts)"
    )
    parser.add_argument("--tenant", action="append", default=[], help="only this tenant")
    parser.add_argument("--json", type=Path, help="write the JSON report here")
    parser.add_argument("--junit", type=Path, help="write the JUnit XML report here")
    parser.add_argument("--quiet", action="store_true", help="print the summary line only")


def plain(value: Any) -> Any:
    """Ansible's tagged containers and strings as plain JSON-able Python values."""
    return json.loads(json.dumps(value, default=str))


def inventory_declarations(sources: Sequence[str], pattern: str) -> list[DeclaredHost]:
    """Each matching inventory host's declaration, its variables templated by ansible-core."""
    # ansible-core is imported here only: the rest of `vce` does not need it. Its YAML
    # inventory parser is tried before "auto", which would load every YAML file twice.
    os.environ.setdefault("ANSIBLE_INVENTORY_ENABLED", "host_list,yaml,ini,auto,toml,script")
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar
    from ansible.vars.manager import VariableManager

    class ReadOnceLoader(DataLoader):
        """Each inventory file is parsed once and only read here, so the defensive deep copy
        Ansible makes of every parsed file (a third of the inventory's cost) is skipped."""

        def load_from_file(self, file_name: str, *args: Any, **kwargs: Any) -> Any:
            kwargs["unsafe"] = True
            return super().load_from_file(file_name, *args, **kwargs)

    for source in sources:
        if not Path(source).exists():
            raise SpecError("--inventory", f"{source} does not exist")
    loader = ReadOnceLoader()
    try:
        inventory = InventoryManager(loader=loader, sources=list(sources))
        variables = VariableManager(loader=loader, inventory=inventory)
        hosts = inventory.get_hosts(pattern)
    except AnsibleError as error:
        raise SpecError("--inventory", f"cannot be read: {error}") from None
    if not hosts:
        raise SpecError("--hosts", f"no host of the inventory matches {pattern!r}")
    declarations = []
    for host in hosts:
        hostvars = variables.get_vars(host=host, include_hostvars=False)
        templar = Templar(loader=loader, variables=hostvars)
        wanted: dict[str, Any] = {}
        for name in INVENTORY_VARIABLES:
            if name not in hostvars:
                continue
            try:
                wanted[name] = plain(templar.template(hostvars[name]))
            except AnsibleError as error:
                raise SpecError(f"{host.name}: {name}", f"cannot be templated: {error}") from None
        declarations.append(DeclaredHost.from_hostvars(host.name, wanted))
    return declarations


def drift_cases(declarations: Sequence[DeclaredHost], tenants: Sequence[str]) -> list[DriftCase]:
    if len(declarations) == 1:
        return DriftCheck(declarations[0], tenants).cases()
    with ThreadPoolExecutor(min(PARALLEL_HOSTS, len(declarations))) as pool:
        per_host = pool.map(lambda d: DriftCheck(d, tenants).cases(), declarations)
        return [case for cases in per_host for case in cases]


def run(args: argparse.Namespace) -> int:
    declarations = inventory_declarations(args.inventory, args.hosts)
    cases = drift_cases(declarations, args.tenant)
    for path, render in ((args.json, json_report), (args.junit, junit_report)):
        if path is not None:
            write_if_changed(str(path), render(cases))
    if not args.quiet:
        for case in cases:
            if case.status != IN_SYNC:
                print(case.describe())
    counts = summary(cases)
    found = ", ".join(f"{counts[status]} {status}" for status in counts if status != "resources")
    hosts = len(declarations)
    print(f"vce drift: {counts['resources']} objects on {hosts} host(s): {found}")
    return 1 if any(case.drifted for case in cases) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """`vce drift ...` (cli/command.py sends it here without loading the ledger commands)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if undecodable(arguments):
        return 2
    parser = argparse.ArgumentParser(prog="vce drift", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(arguments)
    return reported(lambda: run(args))
