"""Run ``ansible-test sanity`` for this collection on a machine without ansible-test's CI host.

ansible-test builds one virtual environment per sanity test (``--venv``) and bootstraps pip
into each with a script it downloads from a host that cannot be reached from here. It first
looks in its cache (``~/.ansible/test/cache/get_pip_<version>.py``), so this tool writes a
stand-in there for every pip version ansible-test asks for (read from ansible-test's own
source). The stand-in installs pip from the interpreter's ``ensurepip`` and then upgrades it
to the pinned version from the package index, the way the real script would.

ansible-test runs pip with a cleaned environment (``PIP_*`` variables are dropped), so the
stand-in also writes the index, certificate and link settings this process sees into the new
environment's own ``pip.conf``: every later pip call in that environment keeps them.

ansible-test also wants the collection under ``ansible_collections/<namespace>/<name>/``. The
repository root is the collection root, so its files (tracked, or new and not ignored by git)
are copied into such a tree under ``~/.cache/vce-kvm-sanity/``: copies, not symlinks, since the
``symlinks`` sanity test would flag them and ansible-test resolves the working directory to its
real path. Left out: local environments and outputs, and what galaxy.yml's ``build_ignore``
keeps out of the built collection (``bench/``, ``.ci/``), so sanity checks what ships. The tree
is laid anew on every run except its ``tests/output``, where ansible-test keeps the virtual
environment it delegates to (reusing it saves ~10 s a run); a lock keeps runs apart.

Usage::

    python -m tools.ansible_test_sanity                      # every sanity test, Python 3.11
    python -m tools.ansible_test_sanity --test validate-modules
    python -m tools.ansible_test_sanity --timeout 900 -- -v  # arguments after -- go to it

It exits with ansible-test's status (124 when the time limit ends the run).
"""

from __future__ import annotations

import argparse
import fcntl
import fnmatch
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON_VERSION = "3.11"
CACHE_DIR = Path.home() / ".ansible" / "test" / "cache"
TREE_CACHE = Path.home() / ".cache" / "vce-kvm-sanity"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEFAULT_TIMEOUT = 900.0  # cold: ~2.5 minutes (venvs built); warm: ~30 s
STANDIN_MARKER = "# vce.kvm get-pip stand-in"

# Paths never copied into the collection tree: local environments and outputs. galaxy.yml's
# build_ignore patterns are added to these unless --all-files is given.
EXCLUDED = ("collections", "tests/output", "bench/.venv-peer", ".venv")

# Sanity tests skipped on purpose: none. All 24 run; each needs only packages from the package
# index (reachable here), except two that need a program: shellcheck (scripts/lab.sh installs
# the Debian package; without it ansible-test warns and skips that test) and pslint (pwsh, which
# no registry here has; it has nothing to check, as the collection holds no PowerShell).
SKIPPED_TESTS: tuple[str, ...] = ()

# pip settings that ansible-test's cleaned environment would lose, as PIP_* variable -> key.
PIP_ENV_SETTINGS = {
    "PIP_INDEX_URL": "index-url",
    "PIP_EXTRA_INDEX_URL": "extra-index-url",
    "PIP_FIND_LINKS": "find-links",
    "PIP_TRUSTED_HOST": "trusted-host",
    "PIP_CERT": "cert",
    "PIP_DEFAULT_TIMEOUT": "timeout",
    "PIP_TIMEOUT": "timeout",
    "PIP_RETRIES": "retries",
    "PIP_PROXY": "proxy",
}

STANDIN_TEMPLATE = '''\
{marker} (written by tools/ansible_test_sanity.py; safe to delete).
"""Stand-in for get-pip.py {version}: ensurepip, then pip install with the given arguments."""

import os
import subprocess
import sys

PIP_CONF = {pip_conf!r}
CERT = {cert!r}
DROPPED = ("--no-setuptools", "--no-wheel")  # get-pip.py options that pip install lacks

with open(os.path.join(sys.prefix, "pip.conf"), "w", encoding="utf-8") as handle:
    handle.write(PIP_CONF)
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
command = [sys.executable, "-m", "pip", "install"]
command += [arg for arg in sys.argv[1:] if arg not in DROPPED]
if CERT:
    command += ["--cert", CERT]
sys.exit(subprocess.call(command))
'''


def pip_versions() -> list[str]:
    """Return the pip versions ansible-test bootstraps into its environments."""
    try:
        from types import SimpleNamespace

        from ansible_test._internal.constants import SUPPORTED_PYTHON_VERSIONS
        from ansible_test._internal.python_requirements import get_venv_packages

        versions = {
            get_venv_packages(SimpleNamespace(version=python))["pip"]  # type: ignore[arg-type]
            for python in SUPPORTED_PYTHON_VERSIONS
        }
    except (ImportError, AttributeError, KeyError, TypeError):
        # Fall back to the source text: pip='24.2' in get_venv_packages().
        import ansible_test

        source = Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
        versions = set(re.findall(r"\bpip\s*=\s*['\"]([0-9][0-9.]*)['\"]", source.read_text()))
    if not versions:
        raise SystemExit("ansible_test_sanity: cannot tell which pip version ansible-test wants")
    return sorted(versions)


def pip_conf() -> str:
    """Return a pip.conf holding the PIP_* settings of this process (and the CA bundle)."""
    settings: dict[str, str] = {}
    if CA_BUNDLE.is_file():
        settings["cert"] = str(CA_BUNDLE)
    for variable, key in PIP_ENV_SETTINGS.items():
        value = os.environ.get(variable, "").strip()
        if value:
            settings[key] = value
    lines = ["[global]"] + [f"{key} = {value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def write_standins(cache_dir: Path = CACHE_DIR) -> list[Path]:
    """Write the get-pip stand-in for each pip version ansible-test wants; return their paths."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    config = pip_conf()
    cert = os.environ.get("PIP_CERT") or (str(CA_BUNDLE) if CA_BUNDLE.is_file() else "")
    written = []
    for version in pip_versions():
        path = cache_dir / f"get_pip_{version.replace('.', '_')}.py"
        text = STANDIN_TEMPLATE.format(
            marker=STANDIN_MARKER, version=version, pip_conf=config, cert=cert
        )
        if not path.is_file() or path.read_text() != text:
            temporary = path.with_suffix(".tmp")
            temporary.write_text(text)
            temporary.replace(path)
        written.append(path)
    return written


def build_ignore(root: Path = REPO_ROOT) -> list[str]:
    """Return galaxy.yml's build_ignore patterns (a block list of scalars; no YAML needed)."""
    patterns: list[str] = []
    inside = False
    for line in (root / "galaxy.yml").read_text().splitlines():
        if re.match(r"^build_ignore:\s*(#.*)?$", line):
            inside = True
        elif inside and (item := re.match(r"^\s*-\s+(.+?)\s*$", line)):
            patterns.append(item.group(1).strip("'\""))
        elif inside and line.strip() and not line.lstrip().startswith("#"):
            break
    return patterns


def excluded(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """Whether path name, or a folder it is in, matches a pattern (as ansible-galaxy build)."""
    parts = name.split("/")
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes for pattern in patterns)


def collection_files(root: Path = REPO_ROOT, all_files: bool = False) -> list[str]:
    """Return the collection's files: tracked or untracked-but-not-ignored, minus exclusions."""
    patterns = list(EXCLUDED) + ([] if all_files else build_ignore(root))
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    files = []
    for name in sorted(set(filter(None, listing.split("\0")))):
        if excluded(name, patterns):
            continue
        if (root / name).is_file():  # skips files deleted in the work tree
            files.append(name)
    return files


def read_galaxy_name(root: Path = REPO_ROOT) -> tuple[str, str]:
    """Return (namespace, name) from galaxy.yml (two top-level scalar keys; no YAML needed)."""
    text = (root / "galaxy.yml").read_text()
    found = dict(re.findall(r"^(namespace|name):\s*['\"]?([A-Za-z0-9_]+)", text, re.MULTILINE))
    return found["namespace"], found["name"]


def lay_out(destination: Path, root: Path = REPO_ROOT, all_files: bool = False) -> Path:
    """Copy the collection into destination/ansible_collections/<ns>/<name>; return that path.

    Whatever the tree held before goes, except ansible-test's own tests/output.
    """
    namespace, name = read_galaxy_name(root)
    collection = destination / "ansible_collections" / namespace / name
    collection.mkdir(parents=True, exist_ok=True)
    for entry in collection.iterdir():
        if entry.name == "tests" and entry.is_dir() and not entry.is_symlink():
            for inner in entry.iterdir():
                if inner.name != "output":
                    remove(inner)
        else:
            remove(entry)
    for relative in collection_files(root, all_files):
        target = collection / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, target)
    return collection


def remove(path: Path) -> None:
    """Remove a file, link or folder tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def tree_dir(root: Path = REPO_ROOT) -> Path:
    """Return the folder holding this checkout's collection tree (one per checkout)."""
    return TREE_CACHE / hashlib.sha256(str(root).encode()).hexdigest()[:12]


def lock(path: Path, timeout: float) -> int:
    """Take an exclusive lock on path, waiting at most timeout seconds; return its descriptor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return descriptor
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(descriptor)
                message = f"ansible_test_sanity: {path} stays locked by another run"
                raise SystemExit(message) from None
            time.sleep(1)


def ansible_test_command(extra: list[str]) -> list[str]:
    """Return the ansible-test sanity command line."""
    beside = Path(sys.executable).parent / "ansible-test"
    program = str(beside) if beside.is_file() else shutil.which("ansible-test")
    if not program:
        raise SystemExit("ansible_test_sanity: ansible-test not found (pip install ansible-core)")
    # --venv: one environment per test with the requirements ansible-test pins for it, kept
    # under ~/.ansible/test/venv and reused. --local would need all of those (pylint, yamllint,
    # voluptuous, ... at pinned versions) in the project's own virtualenv.
    command = [program, "sanity", "--python", PYTHON_VERSION, "--venv", "--color", "no"]
    for test in SKIPPED_TESTS:
        command += ["--skip-test", test]
    return command + extra


def run(command: list[str], cwd: Path, timeout: float) -> int:
    """Run command in its own process group; end the whole group when timeout passes."""
    # ansible-test re-executes itself with the venv's python: put this interpreter's bin first.
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', os.defpath)}"
    process = subprocess.Popen(command, cwd=cwd, env=env, start_new_session=True)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"ansible_test_sanity: no result after {timeout:.0f} s, stopping", file=sys.stderr)
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        return 124
    except KeyboardInterrupt:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait()
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds")
    parser.add_argument("--test", action="append", default=[], help="run only this test")
    parser.add_argument(
        "--fresh", action="store_true", help="drop the kept tree and its tests/output first"
    )
    parser.add_argument(
        "--all-files", action="store_true", help="also check galaxy.yml's build_ignore paths"
    )
    parser.add_argument("extra", nargs="*", help="more ansible-test arguments (after --)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    for path in write_standins():
        print(f"ansible_test_sanity: pip bootstrap stand-in {path}")
    extra = [item for test in args.test for item in ("--test", test)] + args.extra
    workdir = tree_dir()
    descriptor = lock(workdir.with_suffix(".lock"), args.timeout)
    try:
        if args.fresh and workdir.exists():
            shutil.rmtree(workdir)
        collection = lay_out(workdir, all_files=args.all_files)
        command = ansible_test_command(extra)
        print(f"ansible_test_sanity: {' '.join(command)}  (in {collection})", flush=True)
        remaining = args.timeout - (time.monotonic() - started)
        status = run(command, collection, max(remaining, 1.0))
    finally:
        os.close(descriptor)
    print(f"ansible_test_sanity: exit {status} after {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
