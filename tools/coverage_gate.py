"""Fail when any engine file is under the minimum line coverage from the unit tests alone.

    python -m tools.coverage_gate tests/output/coverage.json --minimum 60

Reads the JSON report of coverage.py (pytest --cov-report=json:FILE) and prints every file of
plugins/module_utils/ with its coverage, lowest first; exit 1 naming the files under the
minimum. A file the report does not list was never imported by a unit test: that fails too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "plugins" / "module_utils"


def engine_files() -> list[str]:
    """Every engine source file with code in it, relative to the repository root."""
    return sorted(
        str(path.relative_to(ROOT))
        for path in ENGINE.rglob("*.py")
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    )


def percentages(report: dict) -> dict[str, float]:
    return {name: data["summary"]["percent_covered"] for name, data in report["files"].items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--minimum", type=float, default=60.0)
    args = parser.parse_args(argv)
    covered = percentages(json.loads(args.report.read_text()))
    found = {name: covered.get(name, 0.0) for name in engine_files()}
    low = sorted((pct, name) for name, pct in found.items() if pct < args.minimum)
    for pct, name in sorted((pct, name) for name, pct in found.items())[:10]:
        print(f"  {pct:5.1f}%  {name}")
    if low:
        print(f"coverage gate: {len(low)} engine file(s) under {args.minimum:g}% from unit tests:")
        for pct, name in low:
            print(f"  {pct:5.1f}%  {name}")
        return 1
    print(f"coverage gate: every engine file at {args.minimum:g}% or more ({len(found)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
