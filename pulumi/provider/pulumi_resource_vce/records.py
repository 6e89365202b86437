# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ledger records of a Pulumi operation, through the recorder every front end uses: one
run (source `pulumi`) per provider process that changes something, each resource's usage
changes as they happen, and the spool when the ledger cannot take them."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import UsageChange
from ansible_collections.vce.kvm.plugins.module_utils.ledger.recorder import Recorder
from ansible_collections.vce.kvm.plugins.module_utils.ledger.spool import RunRecord
from ansible_collections.vce.kvm.plugins.module_utils.ledger.store import default_url
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import default_actor, utcnow

from .config import ProviderConfig

RUN_ENV = "VCE_RUN_ID"
# Where records wait when the ledger cannot take them: as the Ansible callback's spool_dir.
SPOOL_ENV = "VCE_SPOOL_DIR"
DEFAULT_SPOOL = "~/.local/state/vce-kvm/spool"

# stderr: the engine reads the plugin's port from stdout, and shows stderr to the user.
log = logging.getLogger("pulumi-resource-vce")


class RunRecords:
    def __init__(self) -> None:
        # The engine's ledger writes (reservations, public IPs, backups) carry the same id.
        self.run_id = os.environ.setdefault(RUN_ENV, f"pulumi-{uuid.uuid4().hex}")
        self.recorder: Recorder | None = None
        self.lock = threading.Lock()

    def record(self, config: ProviderConfig, raw_changes: Sequence[Mapping[str, Any]]) -> None:
        """Write the changes (or spool them), and the run's end as it stands: a provider is
        stopped by its engine without a last event, so the run row always says when it
        last changed something."""
        recorder = self.recorder_for(config)
        changes = [
            UsageChange.from_dict(item, f"usage_changes[{i}]") for i, item in enumerate(raw_changes)
        ]
        if changes:
            recorder.record(recorder.main_url, changes)
        recorder.end("ok", {})

    def recorder_for(self, config: ProviderConfig) -> Recorder:
        with self.lock:
            if self.recorder is None:
                detail = {"tenant": config.tenant, "pid": os.getpid()}
                run = RunRecord(self.run_id, default_actor(), "pulumi", utcnow(), detail)
                url = config.ledger_url or default_url()
                spool_dir = os.environ.get(SPOOL_ENV) or DEFAULT_SPOOL
                self.recorder = Recorder(run, url, spool_dir, log.warning, log.debug)
                self.recorder.start()
            return self.recorder
