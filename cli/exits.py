# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How every `vce` command ends on bad input: a message naming the field, exit status 2.

A module of its own so that command.py (the dispatcher) imports the commands and the commands
import this, never each other.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from ..plugins.module_utils.core.errors import SpecError, VceError


def undecodable(argv: Sequence[str]) -> bool:
    """Say which argument is not UTF-8 text, if one is (Python keeps such bytes as lone
    surrogates, which no ledger, file or terminal takes); an option's value is named by it."""
    for index, argument in enumerate(argv):
        if any("\ud800" <= char <= "\udfff" for char in argument):
            before = argv[index - 1] if index else ""
            name = before if before.startswith("-") else f"argument {index + 1}"
            print(f"vce: {name}: not UTF-8 text: {argument!r}", file=sys.stderr)
            return True
    return False


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
