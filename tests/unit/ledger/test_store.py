"""The ledger store on SQLite and on a real PostgreSQL server: migrations, time, locks."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import sqlite3
import threading
import time

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import VceError
from ansible_collections.vce.kvm.plugins.module_utils.ledger import store as ledger_store
from ansible_collections.vce.kvm.plugins.module_utils.ledger.migrations import HEAD
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import events, metadata
from ansible_collections.vce.kvm.plugins.module_utils.ledger.store import (
    Store,
    migrations_dir,
    open_store,
)

from tests.support.files import mode_of


def test_head_constant_is_alembics_head():
    assert ScriptDirectory(migrations_dir()).get_current_head() == HEAD


def test_the_stores_fast_path_knows_the_newest_revision():
    # A stale constant would let a ledger one revision behind skip its migration.
    assert ledger_store.SCHEMA_REVISION == HEAD


def test_migrated_schema_matches_the_tables_the_code_queries(any_ledger_url):
    store = open_store(any_ledger_url, create=True)
    assert store.revision() == HEAD
    inspector = sa.inspect(store.engine)
    for table in metadata.sorted_tables:
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert set(columns) == {c.name for c in table.columns}, table.name
        for column in table.columns:
            assert columns[column.name]["nullable"] == column.nullable, (table.name, column.name)
        primary = inspector.get_pk_constraint(table.name)["constrained_columns"]
        assert primary == [c.name for c in table.primary_key.columns], table.name


def test_times_come_back_aware_and_naive_ones_are_refused(any_ledger_url):
    store = open_store(any_ledger_url, create=True)
    moment = dt.datetime(2026, 11, 24, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    row = dict(key="k", tenant="t", kind="x", detail="{}", actor="a", run_id="r")
    with store.read() as connection:
        connection.execute(events.insert().values(at=moment, **row))
    with store.read() as connection:
        stored = connection.execute(sa.select(events.c.at)).scalar()
    assert stored == moment and stored.utcoffset() == dt.timedelta(0)
    with pytest.raises(sa.exc.StatementError), store.read() as connection:
        connection.execute(
            events.insert().values(at=dt.datetime(2026, 11, 24), **{**row, "key": "k2"})
        )


def _open(url: str) -> str | None:
    ledger_store._stores.clear()
    return open_store(url, create=True).revision()


def test_first_runs_against_a_new_database_can_start_together(any_ledger_url):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        revisions = pool.map(_open, [any_ledger_url] * 4, chunksize=1)
    assert revisions == [HEAD] * 4


def test_default_url_is_a_per_user_sqlite_file(monkeypatch, tmp_path):
    monkeypatch.delenv("VCE_LEDGER_URL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert ledger_store.default_url() == f"sqlite:///{tmp_path}/vce-kvm/ledger.sqlite3"
    monkeypatch.setenv("VCE_LEDGER_URL", "postgresql+psycopg://u@db/ledger")
    assert ledger_store.default_url() == "postgresql+psycopg://u@db/ledger"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("not a url", "not a database URL"),
        ("mysql://u@h/db", "unsupported database 'mysql'"),
    ],
)
def test_bad_urls_are_named_clearly(url, reason):
    with pytest.raises(VceError, match=reason):
        Store(url)


def test_an_unreachable_postgresql_hides_the_password():
    with pytest.raises(VceError) as error:
        Store("postgresql+psycopg://vce:secret@127.0.0.1:1/ledger")
    assert "secret" not in str(error.value)
    assert "Failed to read the ledger at postgresql+psycopg://vce:***@127.0.0.1:1/ledger" in str(
        error.value
    )


def _register(args: tuple[str, str]) -> str:
    from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.tenant import run_tenant

    from tests.support.ledger import plan_catalog

    url, name = args
    ledger_store._stores.clear()
    params = {"ledger_url": url, "name": name, "customer": "one-customer", "plan": "lab"}
    result = run_tenant({**params, "plans": plan_catalog("lab", trial_hours=72)})
    return result.facts["tenant"]["state"]


def test_tenants_registered_at_once_share_their_plan_and_one_trial(any_ledger_url):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        args = [(any_ledger_url, f"t{i}") for i in range(4)]
        states = pool.map(_register, args, chunksize=1)
    assert sorted(states) == ["active", "active", "active", "trial"]


@pytest.mark.usefixtures("umask")
def test_a_created_sqlite_ledger_is_private_whatever_the_umask(tmp_path):
    path = tmp_path / "made" / "vce-kvm" / "ledger.sqlite3"
    store = open_store(f"sqlite:///{path}", create=True)
    try:
        with store.locked("t") as connection:  # a write: WAL and shared memory files appear
            connection.execute(
                events.insert().values(
                    key="k", tenant="t", kind="x", detail="{}", actor="a", run_id="r",
                    at=dt.datetime(2026, 11, 24, tzinfo=dt.UTC),
                )
            )  # fmt: skip
        companions = [p for p in path.parent.iterdir() if p != path]
        assert {p.name for p in companions} >= {"ledger.sqlite3-wal", "ledger.sqlite3-shm"}
        assert {p.name: mode_of(p) for p in [path, *companions]} == dict.fromkeys(
            [path.name, *(p.name for p in companions)], 0o600
        )
        assert [mode_of(d) for d in (path.parent, path.parent.parent)] == [0o700, 0o700]
    finally:
        store.dispose()


@pytest.mark.usefixtures("umask")
def test_a_rollback_journal_is_private_too(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    open_store(f"sqlite:///{path}", create=True).dispose()
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA journal_mode=DELETE")
        connection.execute("PRAGMA locking_mode=EXCLUSIVE")  # keeps the journal after COMMIT
        connection.execute("PRAGMA journal_mode=PERSIST")
        connection.execute("CREATE TABLE t (x)")
        connection.commit()
        assert mode_of(path.with_name("ledger.sqlite3-journal")) == 0o600
    finally:
        connection.close()


@pytest.mark.usefixtures("umask")
def test_an_existing_directory_keeps_its_mode(tmp_path):
    tmp_path.chmod(0o755)
    open_store(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", create=True).dispose()
    assert mode_of(tmp_path) == 0o755
    assert mode_of(tmp_path / "ledger.sqlite3") == 0o600


def test_a_missing_sqlite_ledger_is_refused_naming_its_path_and_not_created(tmp_path):
    path = tmp_path / "typo" / "ledgr.sqlite3"
    with pytest.raises(VceError, match=f"No ledger at {path}: check the ledger URL"):
        open_store(f"sqlite:///{path}")
    assert not path.parent.exists()


def test_the_creating_store_says_so_once(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    store = open_store(f"sqlite:///{path}", create=True)
    try:
        assert store.creation_note() == f"created a new, empty ledger at {path}"
        assert store.creation_note() is None
        ledger_store._stores.clear()  # another process: the file is there, nothing is made
        again = open_store(f"sqlite:///{path}", create=True)
        assert again.creation_note() is None
        again.dispose()
    finally:
        store.dispose()


def event_row(key: str) -> dict:
    moment = dt.datetime(2026, 12, 4, tzinfo=dt.UTC)
    return {
        "key": key, "tenant": "acme", "kind": "note", "detail": "{}", "at": moment,
        "requested_at": moment, "run_id": "r", "actor": "a",
    }  # fmt: skip


def test_a_sqlite_writer_that_reads_first_waits_for_another_writer(tmp_path):
    # Begun deferred (as read() begins), it would read, then find that another writer
    # committed meanwhile and fail at once with "database is locked", whatever the busy
    # timeout (issue 16): a writer takes the lock up front.
    store = Store(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", create=True)
    holding, done = threading.Event(), threading.Event()

    def other_writer() -> None:
        with store.locked("acme") as connection:
            connection.execute(events.insert().values(**event_row("other")))
            holding.set()
            time.sleep(0.3)
        done.set()

    writer = threading.Thread(target=other_writer)
    writer.start()
    assert holding.wait(10)
    with store.write() as connection:
        connection.execute(sa.select(sa.func.count()).select_from(events)).scalar()
        assert done.wait(10)  # the other writer committed after this transaction began
        connection.execute(events.insert().values(**event_row("mine")))
    writer.join(10)
    with store.read() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 2
    store.dispose()
