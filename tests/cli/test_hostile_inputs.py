"""Hostile input to the `vce` and `vce-backup` commands, as a table: every line exits 2, names
the argument or field and the reason on stderr without a traceback, and writes nothing (every
file beside the ledger, the ledger's bytes included, is compared before and after).

The real commands run in a subprocess; arguments are bytes, so undecodable ones reach the
command as they would from a shell."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.ledger import store

from tests.support.billing import Scenario, local

ROOT = Path(__file__).resolve().parents[2]
NOW = "2027-01-05T00:00:00+05:00"
LEDGER = "ledger.sqlite3"
HUGE = "999999999999999999999"

INVOICE = ("ledger", "invoice", "--month", "2026-11")
REPORT = ("ledger", "incident", "report", "--tenant", "acme", "--reported-at", NOW)
LOG = ("ledger", "request", "log", "--tenant", "acme", "--kind", "password", "--logged-at", NOW)
CONFIRM = ("ledger", "incident", "confirm")
EXCLUDE = (
    "ledger", "exclusion", "add", "--cause", "maintenance", "--start", NOW,
    "--end", "2027-01-06T00:00:00+05:00", "--announced-at", NOW,
)  # fmt: skip

# (argv after the command, what stderr must name). "{dir}" is the ledger's directory; an
# argument given as bytes is passed undecoded.
CASES: dict[str, tuple[tuple[str | bytes, ...], str]] = {
    "month 13": ((*INVOICE[:3], "2026-13"), "month: must be a month as YYYY-MM"),
    "month of year 0001": ((*INVOICE[:3], "0001-01"), "month: must be a month"),
    "month of an overflowing year": ((*INVOICE[:3], f"{HUGE}-01"), "month: must be a month"),
    "month in Arabic-Indic digits": (
        (*INVOICE[:3], "\u0662\u0660\u0662\u0666-\u0661\u0661"),
        "month: must be a month",
    ),
    "month with a newline": ((*INVOICE[:3], "2026-11\n"), "month: must be a month"),
    "month closed with a bad month": (("ledger", "close", "--month", "2026-13"), "month:"),
    "tenant with a newline": ((*INVOICE, "--tenant", "acme\n"), "tenant: invalid name"),
    "tenant as a path": ((*INVOICE, "--tenant", "../../etc/passwd"), "tenant: invalid name"),
    "tenant of 10000 letters": ((*INVOICE, "--tenant", "a" * 10000), "tenant: invalid name"),
    "tenant in capitals": (("ledger", "sla", "--month", "2026-11", "--tenant", "ACME"), "tenant:"),
    "tenant with an escape": (
        ("ledger", "requests", "--month", "2026-11", "--tenant", "ac\x1bme"),
        "tenant:",
    ),
    "tenant not UTF-8": (
        ("ledger", "usage", "--month", "2026-11", "--tenant", b"acme\xff"),
        "--tenant: not UTF-8",
    ),
    "tenant listed with a newline": (
        ("ledger", "incident", "list", "--tenant", "acme\n"),
        "tenant: invalid name",
    ),
    "output in a missing directory": (
        (*INVOICE, "--tenant", "acme", "--format", "html", "--output", "{dir}/missing/x.html"),
        "output: cannot write",
    ),
    "output under a file": ((*INVOICE, "--output", "{dir}/file/x.json"), "output: cannot write"),
    "output is a directory": ((*INVOICE, "--output", "{dir}"), "output: cannot write"),
    "output is the ledger": ((*INVOICE, "--output", "{dir}/" + LEDGER), "output: "),
    "output of an unknown tenant": (
        (*INVOICE, "--tenant", "nobody", "--output", "{dir}/x.json"),
        "tenant: 'nobody'",
    ),
    "time zone as a path": ((*INVOICE, "--time-zone", "../../etc/passwd"), "time_zone: unknown"),
    "time zone with a newline": ((*INVOICE, "--time-zone", "UTC\n"), "time_zone: unknown"),
    "clock in year 0001": ((*INVOICE, "--now", "0001-01-01T00:00:00+14:00"), "--now: must be"),
    "clock past the end of time": (
        (*INVOICE, "--now", "9999-12-31T23:59:59-14:00"),
        "--now: must be",
    ),
    "clock without an offset": ((*INVOICE, "--now", "2026-11-01T00:00:00"), "--now: needs"),
    "incident number overflowing": ((*CONFIRM, HUGE, "--at", NOW), "argument id: must be at most"),
    "incident number negative": (
        (*CONFIRM, "--at", NOW, "--now", NOW, "--", "-5"),
        "argument id: must be positive",
    ),
    "incident number --5": ((*CONFIRM, "--5", "--at", NOW), "required: id"),
    "incident number zero": ((*CONFIRM, "0", "--at", NOW), "argument id: must be positive"),
    "incident number superscript": (
        (*CONFIRM, "\u00b2", "--at", NOW),
        "argument id: must be a whole",
    ),
    "incident number Arabic-Indic": (
        (*CONFIRM, "\u0663", "--at", NOW),
        "argument id: must be a whole",
    ),
    "incident number unknown": ((*CONFIRM, "42", "--at", NOW), "incident: no incident #42"),
    "classify an overflowing number": (
        ("ledger", "incident", "classify", HUGE, "--cause", "provider"),
        "argument id:",
    ),
    "restore at the end of time": (
        ("ledger", "incident", "restore", "1", "--at", "9999-12-31T23:59:59-14:00"),
        "--at: must",
    ),
    "data loss in year 0001": (
        (
            "ledger",
            "incident",
            "data-loss",
            "--tenant",
            "acme",
            "--at",
            "0001-01-01T00:00:00+14:00",
            "--confirmed-at",
            NOW,
        ),
        "--at: must be a time in the years",
    ),
    "incident of an unknown tenant": (
        ("ledger", "incident", "report", "--tenant", "nobody", "--reported-at", NOW),
        "tenant: 'nobody' is not in the ledger",
    ),
    "incident reference with a newline": ((*REPORT, "--reference", "CRM\n1"), "reference: cannot"),
    "incident VM as a path": ((*REPORT, "--vm", "../../x"), "vm: invalid name"),
    "incident host with a newline": ((*REPORT, "--host", "qemu:///system\n"), "host: cannot"),
    "incident note of 100000 characters": ((*REPORT, "--note", "x" * 100000), "note: must be at"),
    "request reference with a newline": ((*LOG, "--reference", "R\n1"), "reference: cannot"),
    "request reference with a NUL-like byte": ((*LOG, "--reference", "R\x01"), "reference: cannot"),
    "request reference of 100000 characters": ((*LOG, "--reference", "R" * 100000), "reference:"),
    "request reference not UTF-8": ((*LOG, "--reference", b"R\xff"), "--reference: not UTF-8"),
    "request reference empty": ((*LOG, "--reference", ""), "reference: "),
    "request note with an escape": (
        (*LOG, "--reference", "R1", "--note", "\x1b[2J"),
        "note: cannot",
    ),
    "request of a tenant with a newline": (
        (
            "ledger",
            "request",
            "log",
            "--tenant",
            "acme\n",
            "--kind",
            "password",
            "--reference",
            "R1",
            "--logged-at",
            NOW,
        ),
        "tenant: invalid name",
    ),
    "request kind unknown": (
        (
            "ledger",
            "request",
            "log",
            "--tenant",
            "acme",
            "--kind",
            "ip",
            "--reference",
            "R1",
            "--logged-at",
            NOW,
        ),
        "argument --kind: invalid choice",
    ),
    "fulfil by a run with a newline": (
        ("ledger", "request", "fulfil", "--tenant", "acme", "--reference", "R1", "--run", "r\n1"),
        "run: cannot",
    ),
    "fulfil a reference with a bell": (
        ("ledger", "request", "fulfil", "--tenant", "acme", "--reference", "R\x07", "--at", NOW),
        "reference: cannot",
    ),
    "exclusion host with an escape": ((*EXCLUDE, "--host", "h\x1b[31m"), "host: cannot"),
    "plan with a newline": (("ledger", "prices", "--plan", "std\n"), "plan: no plan"),
    "plan as a path": (("ledger", "prices", "--plan", "../../etc"), "plan: no plan"),
    "spool missing": (("ledger", "record", "--spool", "{dir}/missing.spool"), "spool: no spool"),
    "spool is a directory": (("ledger", "record", "--spool", "{dir}"), "spool: no spool"),
    "spool not UTF-8": (("ledger", "record", "--spool", "{dir}/bad.spool"), "spool: "),
    "spool is the ledger": (("ledger", "record", "--spool", "{dir}/" + LEDGER), "spool: "),
    "reconcile a URI with a newline": (("ledger", "reconcile", "--uri", "qemu:///system\n"), "uri"),
    "probe a URI with an escape": (("ledger", "probe", "--uri", "test:///\x1b"), "uri[0]: cannot"),
    "ledger not a database": (
        (*INVOICE, "--ledger-url", "sqlite:///{dir}/garbage.sqlite3"),
        "file is not a database",
    ),
    "ledger not a database, for a write": (
        (
            "ledger",
            "close",
            "--month",
            "2026-10",
            "--ledger-url",
            "sqlite:///{dir}/garbage.sqlite3",
        ),
        "file is not a database",
    ),
    "ledger a directory": (
        (*INVOICE, "--ledger-url", "sqlite:///{dir}/directory.sqlite3"),
        "unable to open",
    ),
    "ledger a directory, for a write": (
        (*LOG, "--reference", "R1", "--ledger-url", "sqlite:///{dir}/directory.sqlite3"),
        "unable to open",
    ),
    "ledger under a file": ((*INVOICE, "--ledger-url", "sqlite:///{dir}/file/l.db"), "No ledger"),
    "ledger URL of another database": ((*INVOICE, "--ledger-url", "mysql://x/y"), "ledger_url:"),
    "ledger URL unparsable": ((*INVOICE, "--ledger-url", "not a url"), "ledger_url: not a"),
    "drift of a missing inventory": (("drift", "-i", "{dir}/missing.yml"), "--inventory: "),
    "drift of a tenant not UTF-8": (("drift", "-i", "x", "--tenant", b"a\xff"), "--tenant: not"),
}


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every file and directory under `directory` with its bytes (None for a directory)."""
    return {
        str(path.relative_to(directory)): None if path.is_dir() else path.read_bytes()
        for path in sorted(directory.rglob("*"))
    }


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A ledger with a tenant, usage and an incident, its WAL folded into the file (the
    stores closed), and the hostile files beside it."""
    directory = tmp_path_factory.mktemp("hostile")
    url = f"sqlite:///{directory / LEDGER}"
    scenario = Scenario(url)
    scenario.usage(local(2026, 11, 1))
    scenario.down(local(2026, 11, 4, 10, 0), local(2026, 11, 4, 10, 50))
    store.open_store(url).dispose()
    (directory / "file").write_text("")
    (directory / "garbage.sqlite3").write_text("not a database" * 100)
    (directory / "directory.sqlite3").mkdir()
    (directory / "bad.spool").write_bytes(b'\xff\xfe\x00{"tenant": "acme"}\n')
    return directory


@pytest.fixture
def ledger_dir(template, tmp_path):
    directory = tmp_path / "ledger"
    shutil.copytree(template, directory)
    return directory


def run(directory: Path, argv: tuple[str | bytes, ...]) -> subprocess.CompletedProcess[bytes]:
    url = f"sqlite:///{directory / LEDGER}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "collections"), "VCE_LEDGER_URL": url}
    arguments = [
        a if isinstance(a, bytes) else a.replace("{dir}", str(directory)).encode() for a in argv
    ]
    if argv[0] == "ledger" and "--now" not in argv:
        arguments += [b"--now", NOW.encode()]
    command = [sys.executable, "-m", "ansible_collections.vce.kvm.cli.command", *arguments]
    return subprocess.run(command, capture_output=True, env=env, timeout=120, check=False)


def test_the_table_is_long_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize(("argv", "named"), CASES.values(), ids=CASES.keys())
def test_hostile_input_exits_2_naming_the_field_and_writes_nothing(ledger_dir, argv, named):
    before = snapshot(ledger_dir)
    done = run(ledger_dir, argv)
    stderr = done.stderr.decode("utf-8", "backslashreplace")
    assert done.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert named in stderr
    assert snapshot(ledger_dir) == before


BACKUP_CASES: dict[str, tuple[str, str]] = {
    "config missing": ('{"missing": true}', "No such file"),
    "config not JSON": ("{not json", "Expecting property name"),
    "config without its VM": ('{"tenant": "acme"}', "missing key 'vm'"),
}


@pytest.mark.parametrize(("config", "named"), BACKUP_CASES.values(), ids=BACKUP_CASES.keys())
def test_a_hostile_backup_config_exits_2_with_the_reason(tmp_path, config, named):
    path = tmp_path / "schedule.json"
    if "missing" not in config:
        path.write_text(config)
    before = snapshot(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "collections")}
    command = [sys.executable, "-m", "ansible_collections.vce.kvm.cli.backup", "run"]
    done = subprocess.run(
        [*command, "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"config {path}" in done.stderr and named in done.stderr
    assert snapshot(tmp_path) == before
