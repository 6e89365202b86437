"""Arbitrary text in any argument of the `vce ledger` commands: the command either runs (exit 0)
or exits 2 with a message on stderr, never another exception. In process, for the number of
examples; tests/cli/test_hostile_inputs.py runs the real command on a table."""

from __future__ import annotations

import contextlib
import io

import pytest
from ansible_collections.vce.kvm.cli import vce
from ansible_collections.vce.kvm.plugins.module_utils.ledger import store
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.billing import Scenario, local

NOW = "2027-01-05T00:00:00+05:00"
# Each command with one argument left to fill ("{}").
COMMANDS = (
    ("invoice", "--month", "{}"),
    ("invoice", "--month", "2026-11", "--tenant", "{}"),
    ("sla", "--month", "2026-11", "--time-zone", "{}"),
    ("usage", "--month", "2026-11", "--tenant", "{}"),
    ("requests", "--month", "{}"),
    ("incident", "confirm", "{}", "--at", NOW),
    ("incident", "restore", "1", "--at", "{}"),
    ("incident", "list", "--tenant", "{}"),
    ("incident", "report", "--tenant", "acme", "--reported-at", NOW, "--reference", "{}"),
    ("incident", "report", "--tenant", "acme", "--reported-at", NOW, "--note", "{}"),
    ("incident", "report", "--tenant", "acme", "--reported-at", NOW, "--host", "{}"),
    ("incident", "classify", "{}", "--cause", "provider"),
    ("request", "log", "--tenant", "acme", "--kind", "password", "--logged-at", NOW,
     "--reference", "{}"),
    ("request", "fulfil", "--tenant", "acme", "--reference", "R1", "--run", "{}"),
    ("prices", "--plan", "{}"),
    ("close", "--month", "{}"),
)  # fmt: skip
HOSTILE = st.one_of(
    st.text(alphabet=[*"0123456789-:T+acme/.", "\n", "\t", "\x00", "\x1b", "\u0663", "\u00b2",
                      "\u2028", "\ud800", "\u200b"], max_size=30),
    st.text(max_size=30),
    st.integers().map(str),
    st.from_regex(r"-?[0-9]{1,30}", fullmatch=True),
)  # fmt: skip


@pytest.fixture(scope="module")
def ledger_url(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('properties') / 'ledger.sqlite3'}"
    scenario = Scenario(url)
    scenario.usage(local(2026, 11, 1))
    scenario.down(local(2026, 11, 4, 10, 0), local(2026, 11, 4, 10, 50))
    yield url
    store.open_store(url).dispose()


def run(argv: list[str]) -> tuple[int, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = vce.main(argv)
        except SystemExit as leaving:  # argparse's own refusals
            status = leaving.code
    return status, stderr.getvalue()


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(COMMANDS), HOSTILE)
def test_any_argument_runs_or_exits_2_with_a_message(ledger_url, command, value):
    argv = ["ledger", *(value if part == "{}" else part for part in command)]
    status, stderr = run([*argv, "--ledger-url", ledger_url, "--now", NOW])
    assert status in (0, 2), stderr
    if status == 2:
        assert stderr.startswith(("vce", "usage: vce")) and "Traceback" not in stderr
