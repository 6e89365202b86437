# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the ledger lives: a SQLite file by default, PostgreSQL through a URL.

Opening a store brings its schema to the newest Alembic revision, under the same lock that
writers take, so the first runs against a new database can start together.

A SQLite file is created only when the caller asks for it (the entry points that register or
record, docs/ledger.md): a mistyped URL for a read must fail, not answer from an empty ledger. The
file holds every tenant's records, so it is made 0600 in directories made 0700, whatever the
process umask; SQLite gives its -wal, -shm and -journal files the database file's mode.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..core.errors import VceError
from ..host.files import make_private_dir, open_private

try:
    import sqlalchemy as sa
    from sqlalchemy import event
except ImportError:  # reported by Store() with an install hint
    sa = None

URL_ENV = "VCE_LEDGER_URL"
# A writer waits this long for another run's lock before giving up with a clear message.
LOCK_TIMEOUT_SECONDS = 120
_stores: dict[str, Store] = {}


def default_url() -> str:
    """The ledger's URL: $VCE_LEDGER_URL, else a SQLite file in the user's data directory."""
    url = os.environ.get(URL_ENV)
    if url:
        return url
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return "sqlite:///" + os.path.join(data_home, "vce-kvm", "ledger.sqlite3")


# The newest revision of migrations/ (a test keeps them equal): every module run opens
# the ledger, and importing the revisions loads Alembic, which costs more than the run's reads.
SCHEMA_REVISION = "0010"


def open_store(url: str | None = None, create: bool = False) -> Store:
    """The store at `url` (default: default_url()), opened and migrated once per process.

    With `create`, a missing SQLite file is made (Store.created says so); without, it is a
    VceError naming the path.
    """
    url = url or default_url()
    store = _stores.get(url)
    if store is None:
        store = Store(url, create=create)
        _stores[url] = store
    return store


def safe_url(url: str) -> str:
    """The URL as it may be shown: without its password."""
    if sa is None:
        return url
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(an unparsable ledger URL)"


class Store:
    def __init__(self, url: str, create: bool = False) -> None:
        if sa is None:
            raise VceError(
                "The ledger needs SQLAlchemy and Alembic on the machine that runs the module "
                "(pip install 'sqlalchemy>=2' alembic, or pip install vce-kvm)"
            )
        self.url = url
        self.shown_url = safe_url(url)
        # The SQLite file this store made, for the entry points to tell the operator.
        self.created: Path | None = None
        try:
            parsed = sa.engine.make_url(url)
        except sa.exc.ArgumentError:
            raise VceError(f"ledger_url: not a database URL: {self.shown_url}") from None
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            self.engine = self.sqlite_engine(parsed, create)
        elif self.dialect == "postgresql":
            self.engine = self.postgresql_engine(parsed)
        else:
            raise VceError(
                f"ledger_url: unsupported database {self.dialect!r}; use sqlite:///<file> or "
                "postgresql+psycopg://user@host/db"
            )
        self.migrate()

    def sqlite_engine(self, url: Any, create: bool) -> Any:
        if url.database and url.database != ":memory:":
            path = Path(url.database).expanduser()
            if not path.exists():
                if not create:
                    raise VceError(
                        f"No ledger at {path}: check the ledger URL ({URL_ENV} or "
                        "ledger_url); a ledger is created only by registering a tenant or host"
                    )
                if create_private_file(path):
                    self.created = path
        engine = sa.create_engine(url, connect_args={"timeout": LOCK_TIMEOUT_SECONDS})

        # pysqlite's own transaction handling defers BEGIN and cannot take the write lock up
        # front; the ledger begins its transactions itself (SQLAlchemy's documented recipe).
        # A writer takes the write lock up front (write(), locked()): one begun deferred that
        # reads and then writes gets "database is locked" at once when another writer
        # committed in between (SQLite does not wait there, to avoid a deadlock), whatever the
        # busy timeout. Readers begin deferred and never wait for writers (WAL).
        @event.listens_for(engine, "connect")
        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def on_begin(connection: Any) -> None:
            locked = connection.get_execution_options().get("vce_lock")
            connection.exec_driver_sql("BEGIN IMMEDIATE" if locked else "BEGIN")

        return engine

    def holds(self, path: str | os.PathLike[str]) -> bool:
        """Whether `path` names this SQLite ledger's file or one of its -wal, -shm, -journal
        files (an output written there would destroy every tenant's records)."""
        database = self.engine.url.database if self.dialect == "sqlite" else None
        if not database or database == ":memory:":
            return False
        ledger = Path(database).expanduser().resolve()
        target = Path(path).expanduser().resolve()
        return target.parent == ledger.parent and target.name in {
            ledger.name + suffix for suffix in ("", "-wal", "-shm", "-journal")
        }

    def creation_note(self) -> str | None:
        """A note that this store made a new ledger file, given once: a process that opens
        the store again (a Pulumi plugin, a test) did not create it again."""
        if self.created is None:
            return None
        note = f"created a new, empty ledger at {self.created}"
        self.created = None
        return note

    def postgresql_engine(self, url: Any) -> Any:
        try:
            return sa.create_engine(url, pool_pre_ping=True)
        except ImportError as error:
            raise VceError(
                f"The ledger at {self.shown_url} needs a PostgreSQL driver: "
                f"pip install 'psycopg[binary]' ({error})"
            ) from None

    @contextmanager
    def read(self) -> Iterator[Any]:
        """A transaction for reading only: on SQLite, a transaction begun this way that then
        writes cannot wait for another writer; writers use write() or locked()."""
        with self.errors("read"), self.engine.begin() as connection:
            yield connection

    @contextmanager
    def write(self) -> Iterator[Any]:
        """A transaction that writes and needs no tenant's lock: on SQLite it holds the file's
        write lock from its start, waiting for another writer up to LOCK_TIMEOUT_SECONDS."""
        engine = self.engine.execution_options(vce_lock=True)
        with self.errors("write to"), engine.begin() as connection:
            yield connection

    @contextmanager
    def locked(self, name: str) -> Iterator[Any]:
        """A transaction holding the ledger's write lock for `name` (a tenant) until it ends.

        SQLite has one write lock per file; PostgreSQL gets a transaction-scoped advisory lock
        per name, so runs of different tenants do not wait for each other.
        """
        engine = self.engine.execution_options(vce_lock=True)
        with self.errors("lock"), engine.begin() as connection:
            if self.dialect == "postgresql":
                # SET takes no bind parameters; the value is our own constant.
                connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_SECONDS}s'")
            self.also_lock(connection, name)
            yield connection

    def also_lock(self, connection: Any, name: str) -> None:
        """Take the lock for `name` too, until the transaction ends (SQLite's one write lock
        already covers every name)."""
        if self.dialect == "postgresql":
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(name)}
            )

    @contextmanager
    def errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sa.exc.DatabaseError as error:
            # An unreachable, locked or read-only database (OperationalError) and a file that
            # is not a database or is corrupt (SQLite's plain DatabaseError) are the ledger's
            # state, told by name; constraint and SQL errors (the other subclasses) are bugs.
            bugs = (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.DataError)
            if isinstance(error, (*bugs, sa.exc.InternalError, sa.exc.NotSupportedError)):
                raise
            reason = str(error.orig) if error.orig is not None else str(error)
            raise VceError(f"Failed to {action} the ledger at {self.shown_url}: {reason}") from None

    def migrate(self) -> None:
        """Bring the schema to the newest revision (Alembic), unless it is there already."""
        if self.revision() == SCHEMA_REVISION:
            return  # the usual case, decided without loading Alembic and the revisions
        from .migrations import HEAD

        if self.revision() == HEAD:
            return
        with self.locked("(schema)") as connection:
            current = (
                connection.execute(self.revision_query()).scalar()
                if self.has_version_table(connection)
                else None
            )
            if current == HEAD:
                return
            run_migrations(connection)

    def revision(self) -> str | None:
        with self.read() as connection:
            if not self.has_version_table(connection):
                return None
            return connection.execute(self.revision_query()).scalar()

    @staticmethod
    def has_version_table(connection: Any) -> bool:
        return sa.inspect(connection).has_table("alembic_version")

    @staticmethod
    def revision_query() -> Any:
        return sa.text("SELECT version_num FROM alembic_version")

    def dispose(self) -> None:
        self.engine.dispose()
        _stores.pop(self.url, None)


def create_private_file(path: Path) -> bool:
    """Make `path` an empty file of mode 0600, and its missing directories 0700; False when
    another process made it first."""
    make_private_dir(path.parent)
    try:
        os.close(open_private(path, os.O_WRONLY | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for PostgreSQL's advisory locks."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def run_migrations(connection: Any) -> None:
    """Alembic's upgrade to head on `connection`, inside the caller's transaction."""
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(migrations_dir())

    def upgrade(revision: Any, _context: Any) -> Any:
        return script._upgrade_revs("head", revision)

    with EnvironmentContext(Config(), script, fn=upgrade) as env:
        env.configure(connection=connection)
        env.run_migrations()


def migrations_dir() -> str:
    """A directory holding the revision files, as Alembic reads them.

    Installed, they are files beside this one. Inside an Ansible module's payload they are
    entries of a zip archive, so they are written out once, keyed by their content.
    """
    from . import migrations

    here = Path(migrations.__file__).parent
    if (here / "versions").is_dir():
        return str(here)
    sources = {
        f"{module.__name__.rsplit('.', 1)[-1]}.py": module.__loader__.get_source(module.__name__)
        for module in migrations.REVISION_MODULES
    }
    digest = hashlib.sha256(repr(sorted(sources.items())).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    target = cache / "vce-kvm" / "ledger-migrations" / digest
    if not (target / "versions").is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        (staging / "versions").mkdir()
        for name, source in sources.items():
            (staging / "versions" / name).write_text(source)
        try:
            staging.rename(target)
        except OSError:  # another process wrote the same revisions first
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)
