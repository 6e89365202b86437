"""Prove the README's commands on a pristine Debian 12 root, with nothing of this machine in it.

    python -m tools.pristine_root build [--rebuild]   # the cached minbase root only
    python -m tools.pristine_root check [--keep]      # build if needed, then run the check

A minbase bookworm root is built with debootstrap from Debian's mirror and cached under
/var/cache/vce-kvm/pristine/<key>/root (rebuilt when its recipe changes or it is a week old).
Each check runs in a fresh overlay on that root, so the cache stays pristine, holding a copy
of the checkout's tracked files (no .venv, no build output) at /srv/vce-kvm, in two phases:

1. install (network: apt and pip): `scripts/lab.sh install`, the first step of
   `scripts/lab.sh test`, then the tiny guest's Debian packages are fetched, since
   2. runs without network.
2. demo (its own network namespace): `scripts/lab.sh demo`. Its install step finds everything
   installed; the kvm_host role starts libvirtd and virtlogd in the root; playbooks/demo.yml
   ends by waiting until both demo VMs answer ping and fails otherwise.

Each phase runs in `unshare --mount --pid --fork` (+ `--net` for the demo) and `chroot` with an
empty environment: mounts, daemons, QEMU and the demo's bridges end with the phase, and no
group, user, daemon, socket or virtualenv of this machine is visible inside. Only download
caches (apt's .debs, pip's wheels) are shared between runs, and pip's network settings (its CA
bundle and index) are copied in, because PyPI is reached through them here.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import ctypes
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CACHE_DIR = Path("/var/cache/vce-kvm/pristine")
SUITE = "bookworm"
VARIANT = "minbase"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SECURITY_SUFFIX = "-security"
# Rebuilt after this long, so that the root does not drift far behind Debian's point releases.
MAX_AGE = 7 * 24 * 3600
# Bump when the recipe of the cached root changes.
RECIPE = 1

CHECKOUT = "/srv/vce-kvm"
PIP_CA = "/etc/vce-kvm-pristine/pip-ca.pem"
PHASE_TIMEOUT = {"install": 900.0, "demo": 600.0}
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Runs as PID 1 of the phase's namespaces: mounts the overlay and the kernel file systems,
# then the command in the chroot with an empty environment. The mount namespace is private,
# so nothing is mounted outside it, and when this shell exits the kernel kills every process
# left in the PID namespace (daemons, QEMU) and drops the mounts.
PHASE_SCRIPT = r"""
set -euo pipefail
lower=$1 upper=$2 work=$3 root=$4 pip_cache=$5 apt_cache=$6 command=$7
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
# A /dev of its own with a new devpts instance: QEMU's serial console PTY fails on this
# machine's devpts (ptmxmode=000) inside libvirt's per-domain /dev, and the root sees none of
# this machine's terminals.
mount -t tmpfs -o mode=0755,nosuid tmpfs "$root/dev"
for node in null zero full random urandom tty kvm net/tun; do
  if [ -e "/dev/$node" ]; then
    mkdir -p "$(dirname "$root/dev/$node")"
    cp -a "/dev/$node" "$root/dev/$node"
  fi
done
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mkdir -p "$root/root/.cache/pip" "$root/var/cache/apt/archives"
mount --bind "$pip_cache" "$root/root/.cache/pip"
mount --bind "$apt_cache" "$root/var/cache/apt/archives"
ip link set lo up
status=0
chroot "$root" /usr/bin/env -i PATH="$CLEAN_PATH" HOME=/root LANG=C.UTF-8 TERM=dumb \
  DEBIAN_FRONTEND=noninteractive /bin/bash -euo pipefail -c "$command" || status=$?
exit "$status"
"""

# Before anything is installed: what the issue says leaked in on the CI machine must be absent.
ASSERT_PRISTINE = r"""
for name in kvm libvirt-qemu; do
  if getent group "$name" > /dev/null; then echo "pristine: group $name exists" >&2; exit 1; fi
done
if getent passwd libvirt-qemu > /dev/null; then
  echo "pristine: user libvirt-qemu exists" >&2; exit 1
fi
if [ -e .venv ] || command -v libvirtd > /dev/null; then
  echo "pristine: .venv or libvirtd already there" >&2; exit 1
fi
if [ -n "$(ls -A /run)" ]; then echo "pristine: /run is not empty" >&2; exit 1; fi
echo "pristine: no kvm/libvirt-qemu group, no libvirt-qemu user, no .venv, no libvirtd, empty /run"
"""

INSTALL_PHASE = f"""
cd {CHECKOUT}
{ASSERT_PRISTINE}
scripts/lab.sh install
# The demo phase has no network: fetch the tiny guest's kernel and busybox now (cached in the
# root, where tools.labhost looks for them).
.venv/bin/python -c 'from tools.tinyguest import build_base_image; print(build_base_image())'
"""

DEMO_PHASE = f"""
cd {CHECKOUT}
scripts/lab.sh demo
echo "pristine: virsh list --all after the demo:"
virsh -c qemu:///system list --all
"""


class PristineError(RuntimeError):
    pass


_STARTED = time.monotonic()


def log(message: str) -> None:
    """Lines CI's log can be searched for, with the seconds since the start."""
    print(f"pristine: [{time.monotonic() - _STARTED:4.0f} s] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# the cached root


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (deb822 sources), else deb.debian.org."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in path.read_text().splitlines():
            key, _sep, value = line.partition(":")
            if key.strip() == "URIs" and value.strip().rstrip("/").endswith("/debian"):
                return value.strip().rstrip("/")
    return DEFAULT_MIRROR


def cache_key(mirror: str) -> str:
    recipe = f"{RECIPE} {SUITE} {VARIANT} {mirror} {APT_SOURCES_TEMPLATE}"
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


APT_SOURCES_TEMPLATE = """Types: deb
URIs: {mirror}
Suites: {suite} {suite}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {mirror}{security}
Suites: {suite}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


@contextlib.contextmanager
def locked(path: Path, shared: bool = False) -> Iterator[None]:
    """Builds of the cached root take it exclusively, runs on the root shared: a rebuild
    never removes a root under a running check."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _fresh(stamp: Path) -> bool:
    return stamp.exists() and time.time() - stamp.stat().st_mtime < MAX_AGE


def ensure_root(rebuild: bool = False) -> Path:
    """The cached pristine root, built (about a minute) when missing, stale or asked for."""
    mirror = debian_mirror()
    key_dir = CACHE_DIR / cache_key(mirror)
    root, stamp = key_dir / "root", key_dir / "built"
    with locked(CACHE_DIR / ".lock"):
        if not rebuild and _fresh(stamp) and root.is_dir():
            return root
        if shutil.which("debootstrap") is None:
            raise PristineError("debootstrap is missing: run scripts/lab.sh install")
        log(f"building a {VARIANT} {SUITE} root from {mirror} in {root}")
        started = time.monotonic()
        scratch = Path(tempfile.mkdtemp(prefix="root.", dir=key_dir.parent))
        try:
            subprocess.run(
                ["debootstrap", f"--variant={VARIANT}", SUITE, str(scratch), mirror],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            _configure_apt(scratch, mirror)
            key_dir.mkdir(exist_ok=True)
            stamp.unlink(missing_ok=True)
            if root.exists():
                shutil.rmtree(root)
            scratch.rename(root)
        finally:
            if scratch.exists():
                shutil.rmtree(scratch)
        stamp.write_text(f"{mirror}\n")
        log(f"root built in {time.monotonic() - started:.0f} s")
        _prune_other_roots(key_dir)
    return root


def _configure_apt(root: Path, mirror: str) -> None:
    """Debian's updates and security suites, like a Debian 12 installation (debootstrap
    writes only the release), and apt's downloads kept for the shared cache."""
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(
        APT_SOURCES_TEMPLATE.format(mirror=mirror, suite=SUITE, security=SECURITY_SUFFIX)
    )
    (root / "etc/apt/apt.conf.d/90vce-keep-debs").write_text(
        'Binary::apt::APT::Keep-Downloaded-Packages "true";\n'
    )
    # debootstrap leaves the build machine's resolv.conf; each run writes its own.
    (root / "etc/resolv.conf").unlink(missing_ok=True)


def _prune_other_roots(keep: Path) -> None:
    """Roots of older recipes are never used again."""
    for entry in CACHE_DIR.iterdir():
        if entry.is_dir() and (entry / "built").exists() and entry != keep:
            shutil.rmtree(entry)


# --------------------------------------------------------------------------------------------
# one run: an overlay with the checkout and this machine's network settings


def tracked_files(repo: Path) -> list[str]:
    """The checkout's tracked files as they are in the work tree (uncommitted edits included,
    untracked files such as .venv and build output not)."""
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached"],
        check=True,
        capture_output=True,
    ).stdout
    names = sorted({name for name in out.decode().split("\0") if name})
    return [name for name in names if os.path.lexists(repo / name)]


def copy_checkout(repo: Path, dest: Path) -> int:
    """Copy the tracked files (symlinks as links) into dest; return how many."""
    names = tracked_files(repo)
    dest.mkdir(parents=True)
    with tempfile.TemporaryFile() as buffer:
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name in names:
                tar.add(repo / name, arcname=name, recursive=False)
        buffer.seek(0)
        with tarfile.open(fileobj=buffer, mode="r") as tar:
            tar.extractall(dest, filter="tar")
    return len(names)


def pip_network_settings() -> tuple[str, Path | None]:
    """pip.conf text for the root with how this machine's pip reaches PyPI (index, proxy, CA
    bundle), and the CA bundle to copy in. Local wheel directories and file:// indexes of this
    machine are left out: they are not the project's and are not in the root."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(
        ["/etc/pip.conf", Path.home() / ".config/pip/pip.conf", Path.home() / ".pip/pip.conf"]
    )
    section = dict(parser["global"]) if parser.has_section("global") else {}
    env = {
        "cert": os.environ.get("PIP_CERT"),
        "index-url": os.environ.get("PIP_INDEX_URL"),
        "proxy": os.environ.get("PIP_PROXY"),
        "timeout": os.environ.get("PIP_DEFAULT_TIMEOUT") or os.environ.get("PIP_TIMEOUT"),
    }
    settings = {k: v for k, v in section.items() if k in env} | {k: v for k, v in env.items() if v}
    ca = Path(settings["cert"]) if settings.get("cert") else None
    if ca is not None:
        settings["cert"] = PIP_CA
    settings["disable-pip-version-check"] = "true"
    lines = ["[global]", *(f"{key} = {value}" for key, value in sorted(settings.items()))]
    return "\n".join(lines) + "\n", ca


def prepare_upper(upper: Path, repo: Path) -> None:
    """What each run adds on top of the cached root before it starts."""
    count = copy_checkout(repo, upper / CHECKOUT.lstrip("/"))
    log(f"copied {count} tracked files of {repo} to {CHECKOUT}")
    etc = upper / "etc"
    etc.mkdir(exist_ok=True)
    shutil.copyfile("/etc/resolv.conf", etc / "resolv.conf")
    pip_conf, ca = pip_network_settings()
    (etc / "pip.conf").write_text(pip_conf)
    if ca is not None:
        (upper / PIP_CA.lstrip("/")).parent.mkdir(parents=True)
        shutil.copyfile(ca, upper / PIP_CA.lstrip("/"))


def _die_with_parent() -> None:
    """In unshare, before exec: if this check is killed, unshare gets SIGKILL, and its
    --kill-child takes the namespace's PID 1, so every daemon of the phase goes too."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def run_phase(name: str, command: str, root: Path, run_dir: Path, network: bool) -> float:
    """Run one phase in fresh namespaces on the overlay; return its duration in seconds."""
    unshare = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private"]
    if not network:
        unshare.append("--net")
    args = [
        str(root),
        str(run_dir / "upper"),
        str(run_dir / "work"),
        str(run_dir / "merged"),
        str(CACHE_DIR / "pip-cache"),
        str(CACHE_DIR / "apt-archives"),
        command,
    ]
    log(f"phase {name} ({'with network' if network else 'own network namespace'})")
    started = time.monotonic()
    env = {"PATH": CLEAN_PATH, "CLEAN_PATH": CLEAN_PATH, "LANG": "C.UTF-8"}
    try:
        result = subprocess.run(
            [*unshare, "bash", "-c", PHASE_SCRIPT, "phase", *args],
            env=env,
            timeout=PHASE_TIMEOUT[name],
            preexec_fn=_die_with_parent,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        # subprocess.run killed unshare; --kill-child took the namespace's PID 1 with it.
        raise PristineError(f"phase {name} ran over {PHASE_TIMEOUT[name]:.0f} s") from exc
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise PristineError(f"phase {name} failed (exit {result.returncode}) after {elapsed:.0f} s")
    log(f"phase {name} passed in {elapsed:.0f} s")
    return elapsed


PHASES = {"install": (INSTALL_PHASE, True), "demo": (DEMO_PHASE, False)}
# Where the daemons of the root wrote why they stopped (the run dir goes after the check).
DAEMON_LOGS = ("var/log/libvirt/libvirtd.log", "var/log/libvirt/virtlogd.log")
LOG_TAIL_LINES = 15


def show_daemon_logs(upper: Path) -> None:
    """The last lines of the root's libvirt logs, for a failed phase's report in CI."""
    paths = [upper / name for name in DAEMON_LOGS]
    paths += sorted((upper / "var/log/libvirt/qemu").glob("*.log"))
    for path in paths:
        if path.is_file():
            lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            log(f"last lines of /{path.relative_to(upper)}:")
            print("\n".join(lines), flush=True)


def check(
    repo: Path,
    keep: bool = False,
    rebuild: bool = False,
    phases: list[str] | None = None,
    run_dir: Path | None = None,
) -> None:
    """The whole check; phases and an existing (kept) run_dir are for debugging a phase."""
    started = time.monotonic()
    root = ensure_root(rebuild)
    for cache in ("pip-cache", "apt-archives"):
        (CACHE_DIR / cache).mkdir(exist_ok=True)
    if run_dir is None:
        run_dir = Path(tempfile.mkdtemp(prefix="run.", dir=CACHE_DIR))
        for part in ("upper", "work", "merged"):
            (run_dir / part).mkdir()
        prepare_upper(run_dir / "upper", repo)
    try:
        with locked(CACHE_DIR / ".lock", shared=True):
            for name in phases or list(PHASES):
                command, network = PHASES[name]
                run_phase(name, command, root, run_dir, network=network)
    except PristineError:
        show_daemon_logs(run_dir / "upper")
        raise
    finally:
        if keep:
            log(f"kept the run's changes to the root in {run_dir}/upper")
        else:
            log(f"removing {run_dir}")
            shutil.rmtree(run_dir, ignore_errors=True)
    log(f"check passed in {time.monotonic() - started:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["build", "check"])
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached root")
    parser.add_argument("--keep", action="store_true", help="keep the run's overlay upper dir")
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--phases", type=lambda text: text.split(","), help="e.g. demo")
    parser.add_argument("--run-dir", type=Path, help="a run directory kept with --keep")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (debootstrap, mounts, namespaces)")
    # A CI timeout's SIGTERM unwinds like an error: the run directory is removed.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        if args.action == "build":
            print(ensure_root(args.rebuild))
        else:
            check(args.repo, args.keep, args.rebuild, args.phases, args.run_dir)
    except (PristineError, subprocess.CalledProcessError) as exc:
        log(f"FAILED: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
