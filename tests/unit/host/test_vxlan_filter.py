"""The VXLAN filter's table, rendered from a host's zone-link ends, and what nft makes of it."""

from __future__ import annotations

import ipaddress
import subprocess

from ansible_collections.vce.kvm.plugins.module_utils.host.vxlan_filter import (
    VxlanPeer,
    render_vxlan_table,
)

A = ipaddress.IPv4Address("172.31.250.10")
B = ipaddress.IPv4Address("172.31.250.11")
C = ipaddress.IPv4Address("172.31.250.12")


def listed(body: str) -> str:
    """The table as the kernel lists it, loaded in a namespace of its own (needs root)."""
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c", "nft -f - && nft -s list table inet vce_vxlan"],
        input=f"table inet vce_vxlan {{\n{body}}}\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_one_rule_per_end_by_vni_then_a_drop():
    """The body NftTable puts between the table's braces."""
    body = render_vxlan_table(
        [
            VxlanPeer("ul0", A, C, 10001, "rival/lan-ac"),
            VxlanPeer("ul0", A, B, 10000, "acme/lan-ab"),
        ]
    )
    assert body.splitlines() == [
        "\tchain input {",
        "\t\ttype filter hook input priority filter - 10; policy accept;",
        "\t\tudp dport 4789 jump vxlan_in",
        "\t}",
        "\tchain vxlan_in {",
        '\t\tiifname "ul0" ip saddr 172.31.250.11 ip daddr 172.31.250.10 @th,96,24 10000 accept '
        'comment "acme/lan-ab"',
        '\t\tiifname "ul0" ip saddr 172.31.250.12 ip daddr 172.31.250.10 @th,96,24 10001 accept '
        'comment "rival/lan-ac"',
        "\t\tcounter drop",
        "\t}",
    ]


def test_nft_takes_the_table_and_lists_the_vni_as_the_24_bit_field():
    listing = listed(render_vxlan_table([VxlanPeer("ul0", A, B, 10000, "acme/lan-ab")]))
    assert (
        'iifname "ul0" ip saddr 172.31.250.11 ip daddr 172.31.250.10 @th,96,24 0x2710 accept '
        'comment "acme/lan-ab"'
    ) in listing
    assert "udp dport 4789 jump vxlan_in" in listing


def test_without_ends_every_vxlan_packet_is_dropped():
    listing = listed(render_vxlan_table([]))
    chain = listing.split("chain vxlan_in {", 1)[1]
    assert [line.strip() for line in chain.splitlines() if line.strip()] == [
        "counter drop",
        "}",
        "}",
    ]
