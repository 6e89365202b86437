# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The `vce` console script.

`vce drift` runs in CI on every change, so it loads only what a drift check needs; every
other command is the ledger's (cli/vce.py, which also answers `drift`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from ..plugins.module_utils.core.errors import SpecError, VceError


def reported(command: Callable[[], int]) -> int:
    """Run a `vce` command; bad input and engine errors are a message and exit status 2."""
    try:
        return command()
    except SpecError as error:
        print(f"vce: {error.field}: {error.reason}", file=sys.stderr)
        return 2
    except VceError as error:
        print(f"vce: {error}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["drift"]:
        from . import drift

        return drift.main(args[1:])
    from . import vce

    return vce.main(args)


if __name__ == "__main__":
    sys.exit(main())
