# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How one `vce serve` instance runs: its ledger, its workers, its limits."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field


def instance_id() -> str:
    """Names this process in the actions it claims: host, pid and a random part (a pid is
    reused after a restart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Settings:
    ledger_url: str | None = None  # None: the ledger's default (VCE_LEDGER_URL or the user's file)
    workers: int = 4  # threads running actions in this instance
    rate_per_second: float = 20.0  # per token
    rate_burst: int = 100
    instance: str = field(default_factory=instance_id)
    # Seconds after which another instance's running action counts as abandoned.
    stale_after: float = 30.0
