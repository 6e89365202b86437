"""`vce ledger reconcile` confirms the usage intents a killed run left before it records drift:
the real command in a subprocess, on libvirt's test driver and a SQLite ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.ledger import intents
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import usage_intents
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

ROOT = Path(__file__).resolve().parents[2]
URI = "test:///default"


def test_reconcile_resolves_a_killed_runs_intents(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    killed = Ledger.open(url, create=True, run_id="killed-run")
    with killed.store.locked("acme") as connection:
        intents.write(connection, killed, "acme", URI, [intents.Intent("vm", "web1", "create")])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "collections"), "VCE_LEDGER_URL": url}
    env["VCE_RUN_ID"] = "reconcile-run"
    done = subprocess.run(
        [sys.executable, "-m", "ansible_collections.vce.kvm.cli.vce", "ledger", "reconcile",
         "--uri", URI],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["host"] == URI
    with Ledger.open(url).store.read() as connection:
        row = connection.execute(sa.select(usage_intents)).one()
    # The test driver's host holds no VM of acme: the intent is dropped, by the reconcile.
    assert (row.run_id, row.resolution, row.resolved_by) == (
        "killed-run",
        "dropped",
        "reconcile-run",
    )
