# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ledger records of a Pulumi operation, as an Ansible run writes them: one run row
(source `pulumi`) per provider process that changes something, and each resource's usage
changes as they happen."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import Metering, UsageChange
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger, utcnow

from .config import ProviderConfig

RUN_ENV = "VCE_RUN_ID"


class RunRecords:
    def __init__(self) -> None:
        # The engine's ledger writes (reservations, public IPs, backups) carry the same id.
        self.run_id = os.environ.setdefault(RUN_ENV, f"pulumi-{uuid.uuid4().hex}")
        self.started: set[str | None] = set()
        self.changes = 0
        self.lock = threading.Lock()

    def record(self, config: ProviderConfig, raw_changes: Sequence[Mapping[str, Any]]) -> None:
        """Start the run on first use, write the changes, and mark the run ok so far (the run
        row always says when it last changed something)."""
        metering = Metering(Ledger.open(config.ledger_url, run_id=self.run_id))
        with self.lock:
            if config.ledger_url not in self.started:
                detail = {"tenant": config.tenant, "pid": os.getpid()}
                metering.start_run(self.run_id, "pulumi", utcnow(), detail)
                self.started.add(config.ledger_url)
        changes = [
            UsageChange.from_dict(item, f"usage_changes[{i}]") for i, item in enumerate(raw_changes)
        ]
        if changes:
            metering.record(changes, source="run")
        with self.lock:
            self.changes += len(changes)
            total = self.changes
        metering.finish_run(self.run_id, "ok", utcnow(), {"usage_changes": total})
