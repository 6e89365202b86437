"""NftTable against a real nft in a scratch network namespace of the test's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import ApplyError
from ansible_collections.vce.kvm.plugins.module_utils.host.firewall import NftTable
from ansible_collections.vce.kvm.plugins.module_utils.host.shell import HostShell

from tests.support.netns import needs_netns, scratch_netns

pytestmark = needs_netns

BODY = """
set bridges { type ifname; elements = { "vbr-b", "vbr-a" }; }
chain input {
  type filter hook input priority filter - 10; policy accept;
  iifname @bridges counter drop
}
"""


@pytest.fixture
def netns() -> Iterator[HostShell]:
    with scratch_netns() as prefix:
        yield HostShell(prefix)


def test_absent_table_reads_none(netns: HostShell) -> None:
    assert NftTable(netns, "inet", "vce_test").observed() is None


def test_replace_installs_exactly_the_expected_listing(netns: HostShell) -> None:
    table = NftTable(netns, "inet", "vce_test")
    expected = table.expected(BODY)
    assert table.observed() is None  # rendering happened elsewhere, not in this namespace
    table.replace(BODY)
    assert table.observed() == expected
    assert '"vbr-a"' in expected and "priority filter - 10" in expected


def test_replace_again_swaps_the_whole_table(netns: HostShell) -> None:
    table = NftTable(netns, "inet", "vce_test")
    table.replace(BODY)
    netns.run(
        ["nft", "add", "rule", "inet", "vce_test", "input", "tcp", "dport", "22", "accept"],
        "add",
        "rule",
    )
    assert table.observed() != table.expected(BODY)  # drift: a rule added by hand
    table.replace(BODY.replace('"vbr-b", ', ""))
    listing = table.observed()
    assert listing is not None
    assert "dport 22" not in listing and "vbr-b" not in listing


def test_counters_do_not_show_as_drift(netns: HostShell) -> None:
    table = NftTable(netns, "inet", "vce_test")
    body = "chain output {\n type filter hook output priority 0; policy accept;\n counter\n}"
    table.replace(body)
    netns.run(["ip", "link", "set", "lo", "up"], "set up", "loopback")
    netns.run(["ping", "-c", "1", "-W", "1", "127.0.0.1"], "ping", "loopback")
    assert table.observed() == table.expected(body)


def test_remove_is_idempotent(netns: HostShell) -> None:
    table = NftTable(netns, "inet", "vce_test")
    table.remove()
    table.replace(BODY)
    table.remove()
    assert table.observed() is None


def test_bad_body_names_the_table_and_changes_nothing(netns: HostShell) -> None:
    table = NftTable(netns, "inet", "vce_test")
    table.replace(BODY)
    before = table.observed()
    with pytest.raises(ApplyError, match="inet vce_test"):
        table.expected("chain input { nonsense }")
    with pytest.raises(ApplyError, match="Failed to apply nftables table inet vce_test"):
        table.replace("chain input { nonsense }")
    assert table.observed() == before
