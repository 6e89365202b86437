# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every vce.kvm Ansible module shares: connection options and one way to run and report.

No Ansible import here: the module object is passed in, so the engine stays importable alone.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from ..core import fields
from ..core.errors import ApplyError, SpecError, VceError
from ..core.quota import QuotaExceeded, plain

# Derived from core.fields, where each resource's fields are described once.
CONNECTION_OPTIONS = fields.ansible_options((fields.URI, fields.TENANT))
LEDGER_OPTIONS = fields.ansible_options((fields.LEDGER_URL,))
BACKUP_HOST_OPTIONS = fields.ansible_options(fields.BACKUP_HOST)
RETENTION_OPTIONS = fields.ansible_options(fields.RETENTION)
LEASE_OPTIONS = fields.ansible_options(fields.STATIC_LEASE)


def kind_spec(kind: str) -> dict[str, dict[str, Any]]:
    """The argument_spec of the module that declares one object of `kind` (a key of
    core.fields.KINDS)."""
    return fields.ansible_options(fields.KINDS[kind])


def connection_spec(**options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {**CONNECTION_OPTIONS, **options}


def host_spec(**options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Options of a module that manages the host itself, not a tenant's objects: no tenant."""
    return {"uri": CONNECTION_OPTIONS["uri"], **options}


def ledger_spec(**options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Options of a module that changes a tenant's objects: connection and ledger."""
    return {**CONNECTION_OPTIONS, **LEDGER_OPTIONS, **options}


def run_module(module: Any, action: Callable[[dict[str, Any], bool], Any]) -> None:
    """Run an engine entry point and report as Ansible expects; never a raw traceback."""
    try:
        result = action(module.params, module.check_mode)
    except QuotaExceeded as error:
        module.fail_json(
            msg=str(error),
            quota_breaches=[
                {
                    "quota": b.kind,
                    "limit": b.limit,
                    "used": plain(b.kind, b.used),
                    "requested": plain(b.kind, b.requested),
                }
                for b in error.breaches
            ],
            changed=False,
        )
    except SpecError as error:
        module.fail_json(msg=str(error), field=error.field, reason=error.reason, changed=False)
    except ApplyError as error:
        fail_applying(module, error)
    except VceError as error:
        module.fail_json(msg=str(error), changed=False)
    except Exception as error:  # a bug of ours: say so plainly, keep the trace for -vvv
        module.fail_json(
            msg=f"Unexpected error in vce.kvm ({type(error).__name__}: {error}); please report it",
            exception=traceback.format_exc(),
        )
    output = result.as_dict()
    diff = output.pop("diff")
    for warning in output.pop("warnings"):
        module.warn(warning)
    if module._diff:
        output["diff"] = diff
    module.exit_json(**output)


def fail_applying(module: Any, error: ApplyError) -> None:
    """A run that failed part-way is changed when it made anything: Ansible must not read a
    host that changed as unchanged. `applied` and `left` say what was made."""
    details: dict[str, Any] = {"changed": error.changed}
    if error.changed:
        details.update(applied=error.applied, left=error.left)
    if error.unexpected:  # a bug of ours: keep the trace for -vvv
        details["exception"] = traceback.format_exc()
    module.fail_json(msg=str(error), **details)
