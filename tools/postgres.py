"""A private, throw-away PostgreSQL server for the test suite.

Why this exists and looks the way it does:

* Tests need a real PostgreSQL, but must never touch a cluster the machine may already run,
  and several test processes (pytest-xdist workers) must be able to run one each. So every
  instance gets its own data directory, port and socket directory under a caller's base dir.
* It listens on 127.0.0.1 only, with ``trust`` authentication: good enough for tests, and
  nothing outside this machine can reach it.
* The test suite runs as root, and postgres refuses to run as root. Its processes therefore
  run as the ``postgres`` system user (created by Debian's ``postgresql`` package, or here),
  which is why the base dir is handed over to that user.
* Durability is worthless here, so fsync and friends are off: start, stop and
  ``create_database`` stay fast.

CLI::

    python -m tools.postgres    # start one, print its URL and version(), stop it
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg
from psycopg import sql

PG_ROOT = Path("/usr/lib/postgresql")
DEBIAN_PACKAGE = "postgresql"
SYSTEM_USER = "postgres"
SUPERUSER = "vce"
DEFAULT_DB = "postgres"
HOST = "127.0.0.1"

DATA_SUBDIR = "data"
SOCK_SUBDIR = "sock"
LOG_NAME = "postgres.log"

INITDB_TIMEOUT = 120.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.05
# Another process may grab the port between our probe and postgres binding it.
PORT_ATTEMPTS = 3

# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
# NAMEDATALEN - 1: postgres silently truncates longer names, which would break the URL.
MAX_NAME_BYTES = 63
DB_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

SERVER_SETTINGS: dict[str, str] = {
    "listen_addresses": HOST,
    "max_connections": "100",
    # Test data need not survive a crash of the machine.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


def find_bin_dir(root: Path = PG_ROOT) -> Path:
    """Return the bin directory of the newest PostgreSQL installed under root."""
    candidates: list[tuple[tuple[int, ...], Path]] = []
    for bin_dir in root.glob("*/bin"):
        version = bin_dir.parent.name
        if re.fullmatch(r"\d+(\.\d+)*", version) and (bin_dir / "postgres").is_file():
            candidates.append((tuple(int(part) for part in version.split(".")), bin_dir))
    if not candidates:
        raise RuntimeError(
            f"no PostgreSQL server found under {root}/*/bin: "
            f"install the Debian package '{DEBIAN_PACKAGE}' (apt-get install {DEBIAN_PACKAGE})"
        )
    return max(candidates)[1]


def free_port(host: str = HOST) -> int:
    """A TCP port on host that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll predicate until it is true or timeout seconds passed; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)


def _run(argv: list[str], timeout: float = 60.0, cwd: Path | None = None) -> None:
    """Run a short command, raising with its output when it fails."""
    proc = subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=timeout, cwd=cwd
    )
    if proc.returncode != 0:
        output = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {output}")


def _ensure_system_user() -> pwd.struct_passwd:
    """Return the postgres account, creating a system user when the package did not."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SYSTEM_USER)
    try:
        grp.getgrnam(SYSTEM_USER)
    except KeyError:
        group_args = ["--user-group"]
    else:
        # useradd --user-group refuses when the group already exists.
        group_args = ["--gid", SYSTEM_USER]
    _run(
        [
            "useradd",
            "--system",
            *group_args,
            "--home-dir",
            "/var/lib/postgresql",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            SYSTEM_USER,
        ]
    )
    return pwd.getpwnam(SYSTEM_USER)


def _unreachable_parent(path: Path, uid: int, gids: set[int]) -> Path | None:
    """The first ancestor of path that uid (with gids) may not enter, None when all may be.

    A 0700 root directory above base_dir (pytest's /tmp/pytest-of-root is one) makes initdb
    fail with a puzzling message, so this is checked up front.
    """
    for parent in path.parents:
        info = parent.stat()
        if info.st_uid == uid:
            allowed = bool(info.st_mode & stat.S_IXUSR)
        elif info.st_gid in gids:
            allowed = bool(info.st_mode & stat.S_IXGRP)
        else:
            allowed = bool(info.st_mode & stat.S_IXOTH)
        if not allowed:
            return parent
    return None


def _children(pid: int) -> list[int]:
    """Pids of the live children of pid."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the ")" that ends the command name come state, then ppid.
        if fields[1] == str(pid) and fields[0] not in ("Z", "X"):
            children.append(int(entry.name))
    return children


def _log_tail(path: Path, offset: int = 0, lines: int = 20) -> str:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    tail = "\n".join(text.splitlines()[-lines:])
    return f"\n{path.name}:\n{tail}" if tail else ""


class PrivatePostgres:
    """A PostgreSQL server of our own under base_dir, usable as a context manager.

    base_dir holds the data directory, the unix socket directory and ``postgres.log``.
    ``stop()`` removes the first two and keeps the log; base_dir itself stays the caller's
    to delete. When running as root, base_dir is chowned to the ``postgres`` user and every
    directory above it must be enterable by that user (a mkdtemp under /tmp is).
    """

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.bin_dir = find_bin_dir()
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        socket_path = self.sock_dir / ".s.PGSQL.65535"
        if len(str(socket_path).encode()) > MAX_SOCKET_PATH:
            raise ValueError(f"base_dir too long for a unix socket path: {socket_path}")

    # ---- paths and URLs

    @property
    def data_dir(self) -> Path:
        return self.base_dir / DATA_SUBDIR

    @property
    def sock_dir(self) -> Path:
        return self.base_dir / SOCK_SUBDIR

    @property
    def log_file(self) -> Path:
        return self.base_dir / LOG_NAME

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the server's default database."""
        return self.database_url(DEFAULT_DB)

    def database_url(self, name: str) -> str:
        """SQLAlchemy URL of database name on this server (which need not exist)."""
        if self.port is None:
            raise RuntimeError("PrivatePostgres is not running: call start() first")
        return f"postgresql+psycopg://{SUPERUSER}@{HOST}:{self.port}/{name}"

    def conninfo(self, name: str = DEFAULT_DB) -> str:
        """libpq connection string for psycopg.connect()."""
        if self.port is None:
            raise RuntimeError("PrivatePostgres is not running: call start() first")
        return f"host={HOST} port={self.port} user={SUPERUSER} dbname={name}"

    # ---- life cycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """initdb a fresh cluster and start postgres; return once it accepts connections.

        Cleans up after itself when it fails. Started from the main thread, the server gets
        SIGQUIT (an immediate shutdown) when this process dies, so a killed test run leaves
        no server behind; from other threads it outlives a crash until stop() is called.
        """
        if self.is_running():
            return
        try:
            self._prepare()
            self._initdb()
            for attempt in range(1, PORT_ATTEMPTS + 1):
                if self._launch_and_wait(last_attempt=attempt == PORT_ATTEMPTS):
                    return
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server at once and remove its data. Safe to repeat and after a bad start."""
        proc, self._proc = self._proc, None
        self.port = None
        if proc is not None:
            self._terminate(proc)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.sock_dir, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """Create an empty database name (dropping an old one first); return its URL."""
        if not DB_NAME_RE.fullmatch(name) or len(name.encode()) > MAX_NAME_BYTES:
            raise ValueError(
                f"database name must match {DB_NAME_RE.pattern} and be at most "
                f"{MAX_NAME_BYTES} bytes: {name!r}"
            )
        if name == DEFAULT_DB:
            raise ValueError(f"{DEFAULT_DB!r} is the maintenance database and is never recreated")
        ident = sql.Identifier(name)
        # CREATE/DROP DATABASE cannot run inside a transaction block.
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            # FORCE: a previous repetition may have leaked a connection to it.
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
        return self.database_url(name)

    # ---- internals

    def _as_server_user(self) -> list[str]:
        """Command prefix that runs the rest as the postgres user (nothing when not root)."""
        if os.geteuid() != 0:
            return []
        account = _ensure_system_user()
        # setpriv execs in place (runuser forks and waits), so our Popen is the postmaster
        # itself: signals reach it directly and wait() reaps it.
        argv = [
            "setpriv",
            "--reuid",
            str(account.pw_uid),
            "--regid",
            str(account.pw_gid),
            "--init-groups",
        ]
        # A killed test run (timeout, SIGKILL) then takes its server down instead of leaving
        # it running. setpriv sets it after the uid change, which would clear it. Linux sends
        # it when the forking *thread* exits, so only the main thread can safely ask for it.
        if threading.current_thread() is threading.main_thread():
            argv += ["--pdeathsig", "QUIT"]
        return [*argv, "--"]

    def _prepare(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        # Leftovers from an earlier run: initdb insists on an empty data directory.
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.sock_dir, ignore_errors=True)
        self.sock_dir.mkdir(mode=0o700)
        if os.geteuid() != 0:
            return
        account = _ensure_system_user()
        gids = set(os.getgrouplist(account.pw_name, account.pw_gid))
        blocked = _unreachable_parent(self.base_dir, account.pw_uid, gids)
        if blocked is not None:
            raise RuntimeError(
                f"user {SYSTEM_USER} cannot enter {blocked} (mode "
                f"{stat.filemode(blocked.stat().st_mode)}), so it cannot use {self.base_dir}: "
                "put base_dir somewhere world-enterable, e.g. tempfile.mkdtemp()"
            )
        for path in (self.base_dir, self.sock_dir):
            os.chown(path, account.pw_uid, account.pw_gid)

    def _initdb(self) -> None:
        _run(
            [
                *self._as_server_user(),
                str(self.bin_dir / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--auth",
                "trust",
                "--username",
                SUPERUSER,
                "--encoding",
                "UTF8",
                # The C locale always exists; the machine's LANG may name one that does not.
                "--no-locale",
                "--no-sync",
            ],
            timeout=INITDB_TIMEOUT,
            # The caller's cwd (often /root) is closed to the postgres user.
            cwd=self.base_dir,
        )

    def _launch_and_wait(self, last_attempt: bool) -> bool:
        """Start postgres on a fresh port; False when that port was taken meanwhile."""
        port = free_port()
        argv = [
            *self._as_server_user(),
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(port),
            "-k",
            str(self.sock_dir),
        ]
        for key, value in SERVER_SETTINGS.items():
            argv += ["-c", f"{key}={value}"]
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                # Keep a Ctrl-C on the test run's terminal from reaching postgres directly;
                # stop() (or the parent-death signal) shuts it down.
                start_new_session=True,
            )
        self.port = port
        proc = self._proc

        def ready() -> bool:
            if proc.poll() is not None:
                return True
            try:
                with psycopg.connect(self.conninfo(), connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                return False

        answered = _wait_until(ready, START_TIMEOUT)
        if answered and proc.poll() is None:
            return True
        tail = _log_tail(self.log_file, log_offset)
        if not answered:
            raise RuntimeError(
                f"postgres did not accept connections on {HOST}:{port} within "
                f"{START_TIMEOUT:.0f} s{tail}"
            )
        # proc.poll() above reaped it, so there is nothing left to stop.
        self._proc = None
        self.port = None
        if "could not bind" in tail and not last_attempt:
            return False
        raise RuntimeError(f"postgres exited with status {proc.returncode} during start-up{tail}")

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes]) -> None:
        """SIGQUIT (immediate shutdown, no checkpoint), then SIGKILL; always reap proc."""
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            pass
        # Backends put themselves in process groups of their own, so killpg would miss them;
        # they are found as the postmaster's children before it dies and they are re-parented.
        for pid in [*_children(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT)


def main() -> int:
    server_dir = Path(tempfile.mkdtemp(prefix="vce-postgres-"))
    server = PrivatePostgres(server_dir)
    try:
        server.start()
        print(server.url)
        with psycopg.connect(server.conninfo()) as conn:
            row = conn.execute("SELECT version()").fetchone()
        print(row[0] if row else "no version?")
    finally:
        server.stop()
        shutil.rmtree(server_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
