# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plans: the ordered changes that apply would make, each with before/after and a class.

Check mode, diff mode and previews show the plan; apply runs the same Change objects.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ApplyError, VceError

UNKNOWN = "(known after apply)"
# Changes that make, remove or remake a whole object: one plan does each at most once per object.
WHOLE_OBJECT_ACTIONS = ("create", "delete", "replace")


class ChangeClass(enum.StrEnum):
    LIVE = "live"  # applied without interrupting the object
    RESTART = "restart"  # needs the VM restarted to take full effect
    REPLACE = "replace"  # the object is destroyed and made again


@dataclass
class Change:
    kind: str
    name: str
    action: str
    change_class: ChangeClass = ChangeClass.LIVE
    field: str | None = None
    before: Any = None
    after: Any = None
    run: Callable[[], None] | None = None
    # Restart-class changes whose persistent part is written but whose running part waits.
    pending_restart: bool = False

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
            "class": self.change_class.value,
        }
        if self.field is not None:
            result["field"] = self.field
        result["before"] = self.before
        result["after"] = self.after
        if self.pending_restart:
            result["pending_restart"] = True
        return result


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Notes that are not changes: e.g. a restart still pending from an earlier run.
    pending_restart: list[str] = field(default_factory=list)

    def add(self, change: Change) -> None:
        self.changes.append(change)

    def extend(self, other: Plan) -> None:
        self.changes.extend(other.changes)
        self.warnings.extend(other.warnings)
        self.pending_restart.extend(other.pending_restart)

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def check_acts_once(self) -> None:
        """Refuse a plan that would create, delete or replace one object twice: two libvirt
        objects claimed the same name (host.connection keeps such copies out of the tenant's
        objects; this is the last line before libvirt)."""
        seen: set[tuple[str, str, str, str | None]] = set()
        for change in self.changes:
            if change.action not in WHOLE_OBJECT_ACTIONS:
                continue
            key = (change.kind, change.name, change.action, change.field)
            if key in seen:
                raise VceError(
                    f"the plan would {change.action} {change.kind} {change.name} twice: two "
                    f"objects on the host claim {change.kind} {change.name}; refusing to apply it"
                )
            seen.add(key)

    def to_list(self) -> list[dict[str, Any]]:
        return [change.to_dict() for change in self.changes]

    def diff(self) -> dict[str, Any]:
        """Ansible's before/after view: one entry per object, one key per changed field."""
        before: dict[str, Any] = {}
        after: dict[str, Any] = {}
        for change in self.changes:
            key = f"{change.kind}/{change.name}"
            label = change.field or change.action
            before.setdefault(key, {})[label] = change.before
            after.setdefault(key, {})[label] = change.after
        return {"before": before, "after": after}

    def apply(self) -> list[dict[str, Any]]:
        """Run every change in order; stop at the first failure, saying what was done."""
        done: list[dict[str, Any]] = []
        for change in self.changes:
            if change.run is None:
                continue
            try:
                change.run()
            except Exception as error:
                # Any failure, a bug of ours included: the changes before it were made all the
                # same, and the front end must report them.
                raise self.failure(change, done, error) from error
            done.append(change.to_dict())
        return done

    def failure(self, failed: Change, done: list[dict[str, Any]], error: Exception) -> ApplyError:
        """The ApplyError for `failed`: the reason, then exactly what was applied before it."""
        left = error.left if isinstance(error, ApplyError) else []
        runnable = [change for change in self.changes if change.run is not None]
        applied = f": {describe_all(done)}" if done else ""
        leaving = f", which left {', '.join(left)} in place" if left else ""
        return ApplyError(
            f"{reason(error)} (applied before the failure: {len(done)} of {len(runnable)} changes"
            f"{applied}; failed: {describe(failed.to_dict())}{leaving}; not applied after it: "
            f"{len(runnable) - len(done) - 1}; a re-run continues from here)",
            applied=done,
            left=left,
            unexpected=not isinstance(error, VceError),
        )


def reason(error: Exception) -> str:
    """Why a change failed: the message of an error the user can act on, or a bug of ours."""
    if isinstance(error, VceError):
        return str(error)
    return f"Unexpected error in vce.kvm ({type(error).__name__}: {error}); please report it"


def describe(change: dict[str, Any]) -> str:
    """A change in a message: "disk data2 attach"."""
    return f"{change['kind']} {change['name']} {change['action']}"


def describe_all(changes: list[dict[str, Any]]) -> str:
    return ", ".join(describe(change) for change in changes)
