# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""nftables tables of the project's own on one host, each rendered whole and replaced at once.

A table's `body` is the text between the braces of `table FAMILY NAME { ... }` (its sets and
chains). What the kernel holds is compared with what the kernel WOULD hold for a body, never
with the body itself: nft prints a table in its own layout (priorities by name, sets sorted,
intervals merged), so the expected listing is made by loading the body into a scratch network
namespace and listing it there, with the same nft as the host's.
"""

from __future__ import annotations

from ..core.errors import ApplyError
from .shell import HostShell

# The here-document's end marker: never a line of an nft table.
END_OF_BODY = "VCE_NFT_TABLE_END"


class NftTable:
    """One nft table of the project's own on one host: read, rendered, replaced atomically."""

    def __init__(self, shell: HostShell, family: str, name: str) -> None:
        self.shell = shell
        self.family = family
        self.name = name

    @property
    def label(self) -> str:
        return f"nftables table {self.family} {self.name}"

    def definition(self, body: str) -> str:
        return f"table {self.family} {self.name} {{\n{body.strip()}\n}}\n"

    def observed(self) -> str | None:
        """The table as the host holds it, without counter values; None when it is absent."""
        tables = self.shell.run(["nft", "list", "tables", self.family], "list", self.label)
        if f"table {self.family} {self.name}" not in tables.splitlines():
            return None
        return self.shell.run(
            ["nft", "-s", "list", "table", self.family, self.name], "list", self.label
        )

    def expected(self, body: str) -> str:
        """The listing `observed()` gives once `body` is in place (loaded in a scratch netns)."""
        if END_OF_BODY in body:
            raise ApplyError(f"Failed to render {self.label}: the body holds {END_OF_BODY}")
        # One `sh` reading its script from stdin: the argv has no word a remote shell (an ssh
        # host command) would split, and the body travels in the same stream.
        script = (
            "set -e\n"
            f"nft -f - <<'{END_OF_BODY}'\n{self.definition(body)}{END_OF_BODY}\n"
            f"nft -s list table {self.family} {self.name}\n"
        )
        return self.shell.run(["unshare", "--net", "sh"], "render", self.label, stdin=script)

    def replace(self, body: str) -> None:
        """Create, empty and fill the table in one `nft -f` transaction: no moment without it."""
        batch = (
            f"table {self.family} {self.name}\n"
            f"delete table {self.family} {self.name}\n" + self.definition(body)
        )
        self.shell.run(["nft", "-f", "-"], "apply", self.label, stdin=batch)

    def remove(self) -> None:
        """Delete the table; nothing happens when it is absent (declared first in the batch)."""
        batch = f"table {self.family} {self.name}\ndelete table {self.family} {self.name}\n"
        self.shell.run(["nft", "-f", "-"], "remove", self.label, stdin=batch)
