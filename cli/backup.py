# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`vce-backup`: what a backup schedule's systemd service runs on the KVM host.

    vce-backup run --config FILE [--now ISO]   take a backup, record it, apply retention
    vce-backup list --config FILE              the schedule's good backups, as JSON

Exit status: 0 the backup is good, 1 it failed (the reason is in the printed JSON and in the
ledger), 2 the command itself could not run (unreadable config, bad arguments).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable, Sequence

from ..plugins.module_utils.core.errors import VceError
from ..plugins.module_utils.runner.backup import BackupRun, RunnerConfig

# Relative: the same code whether installed or run from a checkout with
# PYTHONPATH=<checkout>/collections python -m ansible_collections.vce.kvm.cli.backup
from ..plugins.module_utils.runner.repo import ScheduleRepo


def parse_now(value: str | None) -> Callable[[], dt.datetime] | None:
    if value is None:
        return None
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"--now needs a time zone, got {value!r}")
    return lambda: moment


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vce-backup", description="Back up a VM for one vce.kvm backup schedule."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="take a backup now, then apply retention")
    run.add_argument("--config", required=True, help="the schedule's JSON config")
    run.add_argument(
        "--now", help="the moment to record (ISO 8601 with zone); for tests and replays"
    )
    listing = commands.add_parser("list", help="list the schedule's good backups as JSON")
    listing.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    try:
        config = RunnerConfig.load(args.config)
        if args.command == "list":
            repo = ScheduleRepo(config.root, config.tenant, config.vm, config.schedule)
            print(json.dumps([m.as_dict() for m in repo.backups()], indent=2))
            return 0
        result = BackupRun(config, parse_now(args.now)).run()
    except (VceError, argparse.ArgumentTypeError, ValueError) as error:
        print(f"vce-backup: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result.as_dict(), sort_keys=True))
    return 0 if result.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
