"""Start libvirt daemons on a machine without systemd, for development and tests.

Two things live here:

* ``ensure_system_daemons()`` makes the machine's normal libvirtd answer at ``qemu:///system``.
* ``PrivateLibvirtd`` runs a throw-away virtlogd + libvirtd pair whose configuration, state,
  run and log directories are private (a mount namespace of their own), so tests never see
  or disturb the user's daemon, and several instances can run side by side. By default the
  network namespace is the host's on purpose: tests must reach the bridges and guests it
  creates. Given a named network namespace (``netns``), the daemons run inside it instead, so
  that several instances act as separate KVM hosts (see tools.multihost).

CLI::

    python -m tools.libvirtd system         # ensure the system daemons run
    python -m tools.libvirtd private DIR    # start a private instance in DIR, print its URI
    python -m tools.libvirtd stop DIR       # stop the private instance in DIR
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import libvirt

SYSTEM_URI = "qemu:///system"
SYSTEM_QEMU_CONF = Path("/etc/libvirt/qemu.conf")
SYSTEM_RUN_DIR = Path("/var/run/libvirt")
SYSTEM_LOG_DIR = Path("/var/log/libvirt")
SYSTEM_SOCKET = Path("/var/run/libvirt/libvirt-sock")
SYSTEM_VIRTLOGD_SOCKET = Path("/var/run/libvirt/virtlogd-sock")
SYSTEM_LIBVIRTD_PID = Path("/var/run/libvirtd.pid")
SYSTEM_VIRTLOGD_PID = Path("/var/run/virtlogd.pid")

# libvirt-daemon-system normally creates these. Debian's libvirtd resolves the built-in
# default user and group (both "libvirt-qemu") before it reads qemu.conf, so its QEMU driver
# fails to start while they are missing, even when qemu.conf says to run QEMU as root.
QEMU_USER = "libvirt-qemu"
QEMU_PRIMARY_GROUP = "kvm"
QEMU_GROUPS = ("kvm", "libvirt-qemu")

START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.05

# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107

# Host directories that a private instance replaces by bind mounts, keyed by the name of the
# sub-directory of its base dir that takes their place.
PRIVATE_MOUNTS: dict[str, str] = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}
CAPS_SUBDIR = "cache/qemu/capabilities"
SOCK_SUBDIR = "sock"
MNTNS_FILE = "mntns"
SUBDIRS = (*PRIVATE_MOUNTS, SOCK_SUBDIR)


def default_caps_cache() -> Path:
    """Shared store of QEMU capability files: $VCE_CACHE_DIR/libvirt-caps or ~/.cache/vce-kvm."""
    root = os.environ.get("VCE_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "vce-kvm"
    return base / "libvirt-caps"


def domain_type() -> str:
    """Return the libvirt domain type to use on this machine: 'kvm' or 'qemu' (TCG).

    /dev/kvm alone proves nothing: some sandboxes expose a shim there on which a guest never
    boots, so only trust the real vendor modules.
    """
    for module in ("kvm_intel", "kvm_amd"):
        if Path("/sys/module", module).exists():
            return "kvm"
    return "qemu"


# --------------------------------------------------------------------------------------------
# small process and file helpers


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll predicate until it is true or timeout seconds passed; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)


def _pid_alive(pid: int) -> bool:
    """True when pid names a live (non-zombie) process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    match = re.search(r"^State:\s+(\S)", status, re.MULTILINE)
    return match is not None and match.group(1) not in ("Z", "X")


def _read_pid(pid_file: Path) -> int | None:
    """Return the pid recorded in pid_file when that process still runs."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def _socket_answers(path: Path) -> bool:
    """True when a unix stream socket at path accepts a connection."""
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _can_open(uri: str) -> bool:
    """True when libvirt accepts a connection to uri (closed again at once)."""
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    conn.close()
    return True


@contextlib.contextmanager
def _quiet_libvirt() -> Iterator[None]:
    """Keep libvirt from printing every failed connection attempt to stderr while we poll.

    libvirt cannot report the handler in place, so afterwards its default one is restored.
    """
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        yield
    finally:
        libvirt.registerErrorHandler(None, None)


def _write_if_changed(path: Path, text: str) -> None:
    """Write text to path atomically, leaving the file untouched when it already matches."""
    try:
        if path.read_text() == text:
            return
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _run(argv: list[str]) -> None:
    """Run a short command, raising with its output when it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")


# --------------------------------------------------------------------------------------------
# qemu.conf editing


def set_conf_values(text: str, values: dict[str, str]) -> str:
    """Return libvirt config text with each key set to its (already quoted) value.

    Active assignments of the key are replaced in place; the key is appended when absent.
    Comments and every other line are kept, so repeated calls change nothing.
    """
    lines = text.splitlines()
    for key, value in values.items():
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        wanted = f"{key} = {value}"
        hits = [i for i, line in enumerate(lines) if pattern.match(line)]
        if not hits:
            lines.append(wanted)
            continue
        lines[hits[0]] = wanted
        # A later duplicate would win in libvirt's parser, so drop it.
        for i in reversed(hits[1:]):
            del lines[i]
    return "\n".join(lines) + "\n"


def _ensure_qemu_runs_as_root(conf: Path = SYSTEM_QEMU_CONF) -> None:
    """Make qemu.conf run QEMU as root (no libvirt-qemu owned files to prepare)."""
    try:
        text = conf.read_text()
    except FileNotFoundError:
        text = "# Written by tools.libvirtd: run QEMU as root on this test machine.\n"
    _write_if_changed(conf, set_conf_values(text, {"user": '"root"', "group": '"root"'}))


def _ensure_qemu_account() -> None:
    """Create the user libvirt-qemu and groups kvm and libvirt-qemu that libvirtd insists on."""
    for group in QEMU_GROUPS:
        try:
            grp.getgrnam(group)
        except KeyError:
            _run(["groupadd", "--system", group])
    try:
        pwd.getpwnam(QEMU_USER)
    except KeyError:
        _run(
            [
                "useradd",
                "--system",
                "--gid",
                QEMU_PRIMARY_GROUP,
                "--groups",
                ",".join(QEMU_GROUPS),
                "--home-dir",
                "/var/lib/libvirt",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                QEMU_USER,
            ]
        )


# --------------------------------------------------------------------------------------------
# the system daemons


def _system_virtlogd_running() -> bool:
    return _read_pid(SYSTEM_VIRTLOGD_PID) is not None or _socket_answers(SYSTEM_VIRTLOGD_SOCKET)


def _system_libvirtd_running() -> bool:
    return _read_pid(SYSTEM_LIBVIRTD_PID) is not None or _socket_answers(SYSTEM_SOCKET)


def ensure_system_daemons(timeout: float = START_TIMEOUT) -> None:
    """Make qemu:///system usable, starting virtlogd and libvirtd when none is running.

    Idempotent. When the daemon already answers this costs one connection attempt.
    """
    # Packaged set-ups make these; without them virtlogd cannot open guests' console logs.
    for directory in (SYSTEM_LOG_DIR / "qemu", SYSTEM_RUN_DIR):
        directory.mkdir(parents=True, exist_ok=True)
    # Only try a connection when the socket is there: a failing open prints an error.
    if SYSTEM_SOCKET.exists() and _can_open(SYSTEM_URI):
        return
    _ensure_qemu_account()
    _ensure_qemu_runs_as_root()
    if not _system_virtlogd_running():
        _run(["virtlogd", "-d"])
    if not _system_libvirtd_running():
        _run(["libvirtd", "-d"])
    with _quiet_libvirt():
        answered = _wait_until(lambda: _can_open(SYSTEM_URI), timeout)
    if not answered:
        raise RuntimeError(f"libvirtd did not answer at {SYSTEM_URI} within {timeout:.0f} s")


# --------------------------------------------------------------------------------------------
# private instances


def _mount_namespace(pid: int) -> str | None:
    """Return the mount namespace id of pid (e.g. 'mnt:[4026532301]'), None when gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _pids_in_namespace(namespace: str) -> list[int]:
    """Every live process whose mount namespace is namespace."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _mount_namespace(int(entry.name)) == namespace:
            pids.append(int(entry.name))
    return [pid for pid in pids if _pid_alive(pid)]


def _signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _libvirtd_conf(sock_dir: Path, log_dir: Path) -> str:
    return (
        "# Private libvirtd for tests (tools.libvirtd.PrivateLibvirtd).\n"
        f'unix_sock_dir = "{sock_dir}"\n'
        'unix_sock_group = "root"\n'
        'unix_sock_rw_perms = "0700"\n'
        'unix_sock_ro_perms = "0700"\n'
        'unix_sock_admin_perms = "0700"\n'
        'auth_unix_rw = "none"\n'
        'auth_unix_ro = "none"\n'
        # Without syslog or journald here, the default output would go nowhere.
        f'log_outputs = "3:file:{log_dir}/libvirtd.log"\n'
    )


def _virtlogd_conf(log_dir: Path) -> str:
    return f'log_outputs = "3:file:{log_dir}/virtlogd.log"\n'


def _private_qemu_conf() -> str:
    return (
        "# Private libvirtd for tests (tools.libvirtd.PrivateLibvirtd).\n"
        'user = "root"\n'
        'group = "root"\n'
        'security_driver = "none"\n'
        "dynamic_ownership = 0\n"
        # QEMU must stay in our mount namespace so stop() can find it there, and its machine
        # cgroups would be named alike ('qemu-1-NAME') by every private instance.
        "namespaces = [ ]\n"
        "cgroup_controllers = [ ]\n"
    )


class PrivateLibvirtd:
    """A private virtlogd + libvirtd for tests, usable as a context manager.

    The daemons run in a mount namespace of their own in which /etc/libvirt, /run/libvirt,
    /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt are bind mounts of directories
    under base_dir. Their sockets live in base_dir/sock, outside those mounts, so the host
    reaches them through ``uri``. Files a domain writes (e.g. serial logs) should be given by
    their base_dir paths, which mean the same thing inside and outside the namespace.

    With ``netns`` (the name of an existing ``ip netns``) the daemons are started through
    ``ip netns exec``, so they, their dnsmasq and QEMU processes, bridges, taps and firewall
    rules all live in that network namespace; ``ip netns exec`` also mounts a sysfs of that
    namespace, which libvirt reads for its bridges. The unix socket stays reachable from
    anywhere, being a file. With ``hostname`` they also get a UTS namespace of their own with
    that host name, so that ``getHostname()`` tells such hosts apart.
    """

    def __init__(
        self,
        base_dir: Path | str | None = None,
        timeout: float = START_TIMEOUT,
        caps_cache: Path | None = None,
        share_caps: bool = True,
        netns: str | None = None,
        hostname: str | None = None,
    ) -> None:
        # A temp dir made here is ours to delete whole; a caller's dir only loses what we add.
        self.owns_base_dir = base_dir is None
        if base_dir is None:
            base_dir = tempfile.mkdtemp(prefix="vce-libvirtd-")
        self.base_dir = Path(base_dir).absolute()
        self.timeout = timeout
        self.netns = netns
        self.hostname = hostname
        # Probing QEMU costs ~4 s under TCG on an instance's first domain operation. libvirt
        # checks cached capability files against the binaries itself, so sharing them between
        # instances is safe and saves that time.
        self.caps_cache: Path | None = None
        if share_caps:
            self.caps_cache = caps_cache or default_caps_cache()
        if len(str(self.socket_path)) > MAX_SOCKET_PATH:
            if self.owns_base_dir:
                self.base_dir.rmdir()
            raise ValueError(f"socket path too long for a unix socket: {self.socket_path}")

    # ---- paths

    @property
    def sock_dir(self) -> Path:
        return self.base_dir / SOCK_SUBDIR

    @property
    def socket_path(self) -> Path:
        return self.sock_dir / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket_path}"

    @property
    def etc_dir(self) -> Path:
        return self.base_dir / "etc"

    @property
    def run_dir(self) -> Path:
        return self.base_dir / "run"

    @property
    def log_dir(self) -> Path:
        """Private /var/log/libvirt; QEMU's per-domain logs land in log_dir / 'qemu'."""
        return self.base_dir / "log"

    @property
    def libvirtd_pid_file(self) -> Path:
        return self.run_dir / "libvirtd.pid"

    @property
    def virtlogd_pid_file(self) -> Path:
        return self.run_dir / "virtlogd.pid"

    # ---- life cycle

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def connect(self) -> libvirt.virConnect:
        """Open a read-write connection to this instance."""
        return libvirt.open(self.uri)

    def is_running(self) -> bool:
        return _read_pid(self.libvirtd_pid_file) is not None and self.socket_path.exists()

    def start(self) -> Self:
        """Start virtlogd and libvirtd; return once the URI answers. Cleans up on failure."""
        if self.is_running():
            return self
        try:
            # libvirtd refuses to start without this account, whatever qemu.conf says.
            _ensure_qemu_account()
            self._prepare_dirs()
            self._launch()
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, remove: bool = True) -> None:
        """Kill every process of this instance (daemons, QEMU, dnsmasq) and remove its dirs.

        With remove, a base dir this object created is deleted whole (with whatever tests put
        there); a base dir given by the caller loses only the sub-directories made here.

        Domains and networks are not destroyed through libvirt: tests own that. Works after
        a half-failed start and from another process (the CLI's ``stop DIR``).
        """
        pids = self._instance_pids()
        _signal_all(pids, signal.SIGTERM)
        if not _wait_until(lambda: not any(_pid_alive(p) for p in pids), STOP_TIMEOUT):
            _signal_all((p for p in pids if _pid_alive(p)), signal.SIGKILL)
            _wait_until(lambda: not any(_pid_alive(p) for p in pids), STOP_TIMEOUT)
        self._save_caps()
        if remove:
            self._remove_dirs()

    def restart_libvirtd(self) -> None:
        """Restart libvirtd alone, as ``systemctl restart libvirtd`` does on a real host.

        virtlogd, dnsmasq and QEMU keep running; the new libvirtd joins the instance's mount
        (and UTS) namespace, where virtlogd still lives, and on start-up rewrites its firewall
        rules for the active networks. Returns once the URI answers again.
        """
        old, virtlogd = _read_pid(self.libvirtd_pid_file), _read_pid(self.virtlogd_pid_file)
        if old is None or virtlogd is None:
            raise RuntimeError(f"private libvirtd in {self.base_dir} is not running")
        _signal_all([old], signal.SIGTERM)
        if not _wait_until(lambda: not _pid_alive(old), STOP_TIMEOUT):
            _signal_all([old], signal.SIGKILL)
            _wait_until(lambda: not _pid_alive(old), STOP_TIMEOUT)
        argv = ["ip", "netns", "exec", self.netns] if self.netns else []
        argv += ["nsenter", f"--mount=/proc/{virtlogd}/ns/mnt"]
        argv += [f"--uts=/proc/{virtlogd}/ns/uts"] if self.hostname else []
        argv += ["libvirtd", "-d", "-f", "/etc/libvirt/libvirtd.conf"]
        argv += ["-p", str(self.libvirtd_pid_file)]
        self._run_launcher(argv, "restarting")
        self._wait_until_ready()

    # ---- internals

    def _prepare_dirs(self) -> None:
        for name in SUBDIRS:
            (self.base_dir / name).mkdir(parents=True, exist_ok=True)
        (self.log_dir / "qemu").mkdir(exist_ok=True)
        # Both configs are read by path from inside the namespace, where etc is /etc/libvirt.
        _write_if_changed(
            self.etc_dir / "libvirtd.conf", _libvirtd_conf(self.sock_dir, self.log_dir)
        )
        _write_if_changed(self.etc_dir / "virtlogd.conf", _virtlogd_conf(self.log_dir))
        _write_if_changed(self.etc_dir / "qemu.conf", _private_qemu_conf())
        self._load_caps()

    def _load_caps(self) -> None:
        """Seed the private capability cache from the shared one."""
        if self.caps_cache is None or not self.caps_cache.is_dir():
            return
        target = self.base_dir / CAPS_SUBDIR
        target.mkdir(parents=True, exist_ok=True)
        for cached in self.caps_cache.glob("*.xml"):
            shutil.copy2(cached, target / cached.name)

    def _save_caps(self) -> None:
        """Offer capability files this instance probed to later instances (atomic renames)."""
        if self.caps_cache is None:
            return
        for probed in (self.base_dir / CAPS_SUBDIR).glob("*.xml"):
            shared = self.caps_cache / probed.name
            if shared.exists() and shared.read_bytes() == probed.read_bytes():
                continue
            try:
                self.caps_cache.mkdir(parents=True, exist_ok=True)
                tmp = shared.with_name(f".{probed.name}.{os.getpid()}.tmp")
                shutil.copy2(probed, tmp)
                os.replace(tmp, shared)
            except OSError:
                pass  # only an optimisation

    def _namespace_script(self) -> str:
        """Shell run by unshare inside the new mount namespace."""
        lines = [
            "set -e",
            # Recorded first, so that stop() finds the namespace even if a later step fails.
            f"readlink /proc/$$/ns/mnt > {shlex.quote(str(self.base_dir / MNTNS_FILE))}",
        ]
        if self.hostname:
            lines.append(f"hostname {shlex.quote(self.hostname)}")
        for name, target in PRIVATE_MOUNTS.items():
            source = shlex.quote(str(self.base_dir / name))
            lines.append(f"mkdir -p {target}")
            lines.append(f"mount --bind {source} {target}")
        virtlogd_pid = shlex.quote(str(self.virtlogd_pid_file))
        libvirtd_pid = shlex.quote(str(self.libvirtd_pid_file))
        lines.append(f"virtlogd -d -f /etc/libvirt/virtlogd.conf -p {virtlogd_pid}")
        lines.append(f"exec libvirtd -d -f /etc/libvirt/libvirtd.conf -p {libvirtd_pid}")
        return "\n".join(lines)

    def _launch(self) -> None:
        argv = ["ip", "netns", "exec", self.netns] if self.netns else []
        argv += ["unshare", "--mount", "--propagation", "private"]
        argv += ["--uts"] if self.hostname else []
        argv += ["sh", "-c"]
        argv.append(self._namespace_script())
        # With -d both daemons fork away; sh (libvirtd's parent) returns once it is set up.
        self._run_launcher(argv, "starting")

    def _run_launcher(self, argv: list[str], what: str) -> None:
        """Run the command that forks the daemons away; fail with its stderr and the log."""
        proc = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=self.timeout
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{what} private libvirtd failed ({proc.returncode}): "
                f"{proc.stderr.strip()}{self._log_tail()}"
            )

    def _wait_until_ready(self) -> None:
        """Wait for the URI to answer; fail early when libvirtd died during its set-up."""

        def ready() -> bool:
            if _can_open(self.uri):
                return True
            if _read_pid(self.libvirtd_pid_file) is None:
                raise RuntimeError(f"private libvirtd exited during start-up{self._log_tail()}")
            return False

        with _quiet_libvirt():
            answered = _wait_until(ready, self.timeout)
        if not answered:
            raise RuntimeError(
                f"private libvirtd did not answer at {self.uri} within {self.timeout:.0f} s"
                f"{self._log_tail()}"
            )

    def _instance_pids(self) -> list[int]:
        """Processes of this instance: all members of its namespace, else its pid files."""
        pids: set[int] = set()
        try:
            namespace = (self.base_dir / MNTNS_FILE).read_text().strip()
        except OSError:
            namespace = ""
        # Guard against ever killing the host: a bad record must not name our own namespace.
        if namespace and namespace != _mount_namespace(os.getpid()):
            pids.update(_pids_in_namespace(namespace))
        for pid_file in (self.libvirtd_pid_file, self.virtlogd_pid_file):
            pid = _read_pid(pid_file)
            if pid is not None and _mount_namespace(pid) != _mount_namespace(os.getpid()):
                pids.add(pid)
        return sorted(pids)

    def _remove_dirs(self) -> None:
        if self.owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            return
        # Only what this class made: base_dir may be a directory the caller cares about.
        for name in SUBDIRS:
            shutil.rmtree(self.base_dir / name, ignore_errors=True)
        (self.base_dir / MNTNS_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: it holds the caller's own files
            self.base_dir.rmdir()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.log_dir / "libvirtd.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\nlibvirtd.log:\n" + "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.libvirtd",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("system", help="ensure virtlogd and libvirtd for qemu:///system run")
    private = sub.add_parser("private", help="start a private instance in DIR, print its URI")
    private.add_argument("dir", type=Path)
    stop = sub.add_parser("stop", help="stop the private instance in DIR and remove its files")
    stop.add_argument("dir", type=Path)
    args = parser.parse_args(argv)

    if args.command == "system":
        ensure_system_daemons()
        print(SYSTEM_URI)
    elif args.command == "private":
        print(PrivateLibvirtd(args.dir).start().uri)
    else:
        PrivateLibvirtd(args.dir).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
