"""The Pulumi provider and SDK from the checkout: the provider runs as the CLI starts it, the
SDK is imported from pulumi/sdk/python."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for path in (
    ROOT / "pulumi" / "sdk" / "python",
    ROOT / "pulumi" / "provider",
    ROOT / "collections",
):
    if str(path) not in sys.path:
        sys.path.append(str(path))
