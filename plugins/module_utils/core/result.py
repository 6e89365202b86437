# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an engine entry point returns to its front end: plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    changed: bool
    plan: list[dict[str, Any]]
    diff: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    pending_restart: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    # What the run changed in metered usage (metering.UsageChange.as_dict), for the ledger's
    # callback to record.
    usage_changes: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "plan": self.plan,
            "diff": self.diff,
            "warnings": self.warnings,
            "pending_restart": self.pending_restart,
            "usage_changes": self.usage_changes,
            **self.facts,
        }
