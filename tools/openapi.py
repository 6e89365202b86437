"""The control plane's OpenAPI document, as `vce serve` answers it at /openapi.json, written to
docs/openapi.json (keys sorted, two-space indent, one trailing newline) so that a change of the
API shows in review as a change of this file.

The application is built (``vce_server.app.create_app``) but never started: no ledger is
opened, no worker runs, nothing listens.

    .venv/bin/python -m tools.openapi            # (re)write docs/openapi.json
    .venv/bin/python -m tools.openapi --check    # exit 1 when the committed file differs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "docs" / "openapi.json"
REGENERATE = ".venv/bin/python -m tools.openapi"

# The checkout's server and engine, ahead of any copy installed in the venv.
for _path in (ROOT, ROOT / "collections", ROOT / "server"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def document() -> dict[str, Any]:
    """The OpenAPI document of an application that was built and not started."""
    from vce_server.app import create_app
    from vce_server.settings import Settings

    # Fixed settings: the document must not depend on this machine (the instance id names
    # the host and pid, but appears nowhere in the schema).
    return create_app(Settings(ledger_url="sqlite://", instance="openapi")).openapi()


def render(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with docs/openapi.json, write nothing"
    )
    args = parser.parse_args(argv)
    text = render(document())
    if args.check:
        if not DOCUMENT.exists() or DOCUMENT.read_text() != text:
            print(f"{DOCUMENT} is out of date: run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    DOCUMENT.write_text(text)
    print(f"wrote {DOCUMENT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
