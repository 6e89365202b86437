"""The ledger spool: what the callback could not write, replayed into a real SQLite ledger
once, and only once; a damaged line is reported and kept, never fatal."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import UsageChange
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import runs, usage_intervals
from ansible_collections.vce.kvm.plugins.module_utils.ledger.spool import (
    HEADER_LINE,
    RunRecord,
    replay,
    spool,
    spool_path,
    spool_run,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.store import open_store
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

HOST = "qemu+ssh://root@kvm1/system"
AT = dt.datetime(2026, 11, 24, 9, 0, tzinfo=dt.UTC)
UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/none"


@pytest.fixture(autouse=True)
def existing_ledger(request):
    """The ledger a spool names exists (its runs were writing to it): a replay, like any write
    that does not register, never creates a SQLite ledger (store.py)."""
    if "ledger_url" in request.fixturenames:
        open_store(request.getfixturevalue("ledger_url"), create=True)


def change(name="web1", minutes=0, state="running", vcpus=2):
    return {
        "key": "ignored-the-ledger-computes-its-own",
        "tenant": "acme",
        "host": HOST,
        "kind": "vm",
        "name": name,
        "action": "created",
        "at": (AT + dt.timedelta(minutes=minutes)).isoformat(),
        "state": state,
        "vm": name,
        "vcpus": vcpus,
        "ram_mib": 1024,
        "disk_mib": 10240,
        "public_ips": 0,
        "zone_links": 0,
    }


def run_record(run_id="run-1", result=None):
    record = RunRecord(run_id, "ops", "ansible", AT, {"playbook": "/srv/site.yml"})
    if result:
        record.result, record.ended_at = result, AT + dt.timedelta(minutes=5)
        record.end_detail = {"hosts": {"kvm1": {"ok": 3, "failures": 0}}}
    return record


def rows(url, table):
    store = Ledger.open(url).store
    with store.read() as connection:
        return connection.execute(sa.select(table)).fetchall()


def into(url):
    """A factory that writes every line into `url`, whatever ledger the line names."""
    return lambda _named: Ledger.open(url)


def test_spooled_changes_and_run_replay_into_the_ledger_and_the_file_goes(tmp_path, ledger_url):
    spool_dir = tmp_path / "spool"
    run = run_record()
    spool_run(spool_dir, ledger_url, run, "start")
    path = spool(spool_dir, "run-1", ledger_url, [change(), change("web2")], actor="ops")
    stopped = UsageChange.from_dict(change("web1", 3, "stopped"))
    spool(spool_dir, "run-1", ledger_url, [stopped], actor="ops")
    spool_run(spool_dir, ledger_url, run_record(result="ok"), "finish")
    assert path == spool_path(spool_dir, "run-1")
    assert oct(path.stat().st_mode & 0o777) == "0o600"  # it may hold a password in its URL
    header, *lines = path.read_text().splitlines()
    assert json.loads(header) == {"vce_spool": 1} and len(lines) == 5

    assert replay(path, Ledger.open) == (3, 0)
    assert not path.exists()
    usage = sorted(rows(ledger_url, usage_intervals), key=lambda r: (r.name, r.started_at))
    assert [(r.name, r.state, r.vcpus, r.ram_mib, r.disk_mib) for r in usage] == [
        ("web1", "running", 2, 1024, 10240),
        ("web1", "stopped", 2, 1024, 10240),
        ("web2", "running", 2, 1024, 10240),
    ]
    assert usage[0].ended_at == usage[1].started_at == AT + dt.timedelta(minutes=3)
    assert {(r.run_id, r.actor, r.source) for r in usage} == {("run-1", "ops", "run")}
    (row,) = rows(ledger_url, runs)
    assert (row.id, row.source, row.actor, row.result) == ("run-1", "ansible", "ops", "ok")
    assert row.ended_at == AT + dt.timedelta(minutes=5)
    detail = json.loads(row.detail)
    assert detail["playbook"] == "/srv/site.yml" and detail["hosts"]["kvm1"]["ok"] == 3


def test_replaying_the_same_changes_twice_counts_them_once(tmp_path, ledger_url):
    spool_dir = tmp_path / "spool"
    changes = [change(), change("web2")]
    first = spool(spool_dir, "run-2", ledger_url, changes)
    assert replay(first, Ledger.open) == (2, 0)
    again = spool(spool_dir, "run-2", ledger_url, changes)  # e.g. a copy kept by hand
    spool(spool_dir, "run-2", ledger_url, changes)
    assert replay(again, Ledger.open) == (0, 0)
    assert not again.exists()
    assert len(rows(ledger_url, usage_intervals)) == 2


def test_a_bad_line_is_reported_and_kept_while_the_others_are_written(tmp_path, ledger_url):
    spool_dir = tmp_path / "spool"
    path = spool(spool_dir, "run-3", ledger_url, [change(), change("web2", vcpus=-1)])
    with path.open("a") as handle:
        handle.write("{not json\n")
    spool(spool_dir, "run-3", ledger_url, [change("web3")])
    told = []

    assert replay(path, Ledger.open, told.append) == (2, 2)
    assert any("change.vcpus" in message and "-1" in message for message in told), told
    assert any(":4: not a JSON line" in message for message in told), told
    header, *kept = path.read_text().splitlines()
    assert header == HEADER_LINE
    assert kept[1] == "{not json" and json.loads(kept[0])["change"]["vcpus"] == -1
    assert {r.name for r in rows(ledger_url, usage_intervals)} == {"web1", "web3"}
    # Replaying what is left changes nothing and still reports it: never raised.
    assert replay(path, Ledger.open, told.append) == (0, 2)


def test_an_unreachable_ledger_keeps_its_lines_and_the_others_are_written(tmp_path, ledger_url):
    spool_dir = tmp_path / "spool"
    spool_run(spool_dir, UNREACHABLE, run_record("run-4"), "start")
    spool(spool_dir, "run-4", UNREACHABLE, [change("far")])
    path = spool(spool_dir, "run-4", ledger_url, [change("near")])
    told = []

    assert replay(path, Ledger.open, told.append) == (1, 2)
    assert any("nobody@127.0.0.1:1/none" in message for message in told), told
    urls = [json.loads(line).get("url") for line in path.read_text().splitlines()]
    assert urls == [None, UNREACHABLE, UNREACHABLE]

    # The CLI's way to write them elsewhere: a factory that ignores the URL in the file.
    assert replay(path, into(ledger_url)) == (1, 0)
    assert {r.name for r in rows(ledger_url, usage_intervals)} == {"near", "far"}
    assert [r.id for r in rows(ledger_url, runs)] == ["run-4"]


def test_replaying_a_missing_file_does_nothing(tmp_path):
    assert replay(tmp_path / "none.jsonl", Ledger.open) == (0, 0)


def test_an_odd_run_id_still_makes_one_file_in_the_spool_directory(tmp_path):
    path = spool_path(tmp_path, "../../etc/passwd run")
    assert path.parent == tmp_path and os.sep not in path.name and path.suffix == ".jsonl"


def entry_line(url, name="web1"):
    return json.dumps({"v": 1, "type": "usage", "url": url, "run_id": "run-9", "actor": "ops",
                       "change": change(name)})  # fmt: skip


@pytest.mark.parametrize(
    "text",
    [
        "",
        "root:x:0:0:root:/root:/bin/bash\n\nbin:x:1:1::/:/usr/sbin/nologin\n",
        '{"url": "sqlite:////tmp/x"}\n',  # a JSON object is not a spool line
        '{entry}\n{"v": 1}\n',  # without the header, one foreign line is enough
        "\x7fELF\x02\x01\x01\xd0\x00",  # not even UTF-8
    ],
)
def test_a_file_that_is_not_a_spool_file_is_refused_and_left_as_it_was(tmp_path, text):
    path = tmp_path / "passwd"
    path.write_bytes(text.replace("{entry}", entry_line("sqlite:////tmp/x")).encode("latin-1"))
    path.chmod(0o644)
    before = path.read_bytes()
    with pytest.raises(SpecError, match="not a spool file"):
        replay(path, Ledger.open)
    assert path.read_bytes() == before and oct(path.stat().st_mode & 0o777) == "0o644"


def test_a_spool_file_of_an_older_version_without_its_header_still_replays(tmp_path, ledger_url):
    path = tmp_path / "old.jsonl"
    path.write_text(entry_line(ledger_url) + "\n" + entry_line(UNREACHABLE, "far") + "\n")
    assert replay(path, Ledger.open) == (1, 1)
    header, kept = path.read_text().splitlines()  # rewritten as today's spool files are
    assert header == HEADER_LINE and json.loads(kept)["url"] == UNREACHABLE


def test_a_rewrite_keeps_the_files_mode_and_owner(tmp_path, ledger_url):
    path = spool(tmp_path, "run-5", UNREACHABLE, [change("far")])
    spool(tmp_path, "run-5", ledger_url, [change("near")])
    path.chmod(0o640)
    owner = (path.stat().st_uid, path.stat().st_gid)
    assert replay(path, Ledger.open) == (1, 1)
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert (path.stat().st_uid, path.stat().st_gid) == owner


def test_links_are_refused_and_neither_they_nor_their_target_change(tmp_path, ledger_url):
    target = spool(tmp_path / "spool", "run-6", ledger_url, [change()])
    before = target.read_bytes()
    symlink, hardlink = tmp_path / "symlink.jsonl", tmp_path / "hardlink.jsonl"
    symlink.symlink_to(target)
    os.link(target, hardlink)
    with pytest.raises(SpecError, match="symbolic link"):
        replay(symlink, Ledger.open)
    with pytest.raises(SpecError, match="hard links"):
        replay(hardlink, Ledger.open)
    assert symlink.is_symlink() and target.read_bytes() == before == hardlink.read_bytes()
    assert rows(ledger_url, usage_intervals) == []


def test_a_header_alone_is_left_alone(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text(HEADER_LINE + "\n")
    assert replay(path, Ledger.open) == (0, 0)
    assert path.read_text() == HEADER_LINE + "\n"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vcpus", 65),
        ("ram_mib", 1024 * 1024 + 1),
        ("disk_mib", 64 * 1024 * 1024 + 1),
        ("public_ips", 2),
        ("zone_links", -1),
        ("vcpus", 1e9),
    ],
)
def test_a_change_beyond_what_one_resource_can_hold_is_refused_naming_its_field(field, value):
    with pytest.raises(SpecError, match=f"change.{field}: must be a whole number from 0 to"):
        UsageChange.from_dict({**change(), field: value}, "change")
