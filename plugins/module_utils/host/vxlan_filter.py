# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's VXLAN filter, nft table `inet vce_vxlan`: VXLAN only from a zone link's declared
peer, on the underlay, with that link's VNI.

The kernel's VXLAN socket listens on every address of the host on port 4789, whatever the
device's `local` says, and decapsulates whatever arrives with a VNI it knows: a tenant's guest
or a neighbour on the uplink could put frames into another tenant's bridge. This table drops
every VXLAN packet in the input hook (before the socket sees it) unless it comes in on the
link's underlay device, from the peer's underlay address, to this end's underlay address, and
carries the link's VNI. Rendered whole from the host's zone-link ends (pure: the body that
`NftTable` in host/firewall.py replaces in one batch).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

VXLAN_PORT = 4789
FAMILY = "inet"
TABLE = "vce_vxlan"
# The VNI is bits 32..55 of the 8-byte VXLAN header, which follows the 8-byte UDP header:
# 96 bits into the transport header, 24 bits long.
VNI_FIELD = "@th,96,24"


@dataclass(frozen=True)
class VxlanPeer:
    """One zone-link end on this host: what its VXLAN packets must carry to be let in."""

    underlay_dev: str
    local_ip: ipaddress.IPv4Address
    peer_ip: ipaddress.IPv4Address
    vni: int
    label: str  # "tenant/link": the rule's comment, so an operator sees whose rule it is

    def rule(self) -> str:
        return (
            f'iifname "{self.underlay_dev}" ip saddr {self.peer_ip} ip daddr {self.local_ip} '
            f'{VNI_FIELD} {self.vni} accept comment "{self.label}"'
        )


def render_vxlan_table(peers: Iterable[VxlanPeer]) -> str:
    """The table's body for `peers` (one accept rule each, by VNI, then a drop)."""
    rules = "".join(
        f"\t\t{peer.rule()}\n" for peer in sorted(peers, key=lambda p: (p.vni, p.label))
    )
    return (
        "\tchain input {\n"
        "\t\ttype filter hook input priority filter - 10; policy accept;\n"
        f"\t\tudp dport {VXLAN_PORT} jump vxlan_in\n"
        "\t}\n"
        "\tchain vxlan_in {\n"
        f"{rules}"
        "\t\tcounter drop\n"
        "\t}\n"
    )
