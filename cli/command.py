# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The `vce` console script: which command module answers.

`vce drift` runs in CI on every change, so it loads only what a drift check needs; `vce serve`
and `vce admin` are the control plane's (vce_server.cli), loaded only for them; every other
command is the ledger's (cli/vce.py, which also answers `drift`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["drift"]:
        from . import drift

        return drift.main(args[1:])
    if args[:1] in (["serve"], ["admin"]):
        try:
            from vce_server import cli
        except ImportError as error:  # the Galaxy collection alone has no server (pip has)
            print(
                f"vce: {args[0]} needs the control plane: pip install vce-kvm ({error})",
                file=sys.stderr,
            )
            return 2
        return cli.main(args)
    from . import vce

    return vce.main(args)


if __name__ == "__main__":
    sys.exit(main())
