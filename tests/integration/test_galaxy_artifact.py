"""The galaxy artifact gate: `ansible-galaxy collection build` makes a tarball without the
development files, and a fresh virtualenv with only ansible-core installs it and reads every
plugin's documentation from it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

from tests.support.ansible_runner import ROOT

pytestmark = pytest.mark.integration
ANSIBLE_GALAXY = Path(sys.executable).with_name("ansible-galaxy")
ANSIBLE_CORE = "ansible-core>=2.16,<2.20"
PIP_TIMEOUT = 600  # a first download; later runs install from pip's cache

# What galaxy.yml's build_ignore must hold: the development tree that is no part of the
# collection. ansible-galaxy itself already leaves out __pycache__, *.pyc and .git.
BUILD_IGNORE = [
    ".venv",
    ".ci",
    ".hypothesis",
    ".pytest_cache",
    ".ruff_cache",
    "bench",
    "build",
    "dist",
    "collections",
    "pulumi",
    "server",
    "tests/output",
    "tests/browser/node_modules",
    "*.egg-info",
    "*.tar.gz",
]
# One file in each of those places, planted in the copy that is built.
PLANTED = [
    ".venv/pyvenv.cfg",
    ".ci/run",
    ".hypothesis/examples/x",
    ".pytest_cache/v/x",
    ".ruff_cache/x",
    "bench/bench_drift.py",
    "build/lib/x.py",
    "dist/vce_kvm-0.1.0-py3-none-any.whl",
    "collections/requirements.yml",
    "pulumi/provider/x.py",
    "server/vce_server/x.py",
    "tests/output/junit.xml",
    "tests/browser/node_modules/axe-core/axe.min.js",
    "vce_kvm.egg-info/PKG-INFO",
    "vce-kvm-0.0.1.tar.gz",
    "plugins/module_utils/__pycache__/x.cpython-311.pyc",
]
REQUIRED = [
    "MANIFEST.json",
    "FILES.json",
    "README.md",
    "meta/runtime.yml",
    "plugins/modules/vm.py",
    "plugins/modules/environment.py",
    "plugins/inventory/libvirt_tenants.py",
    "plugins/module_utils/engine/facade.py",
    "plugins/module_utils/finance/templates/statement.html.j2",
    "plugins/module_utils/ledger/migrations/versions/v0001_initial.py",
    "plugins/doc_fragments/common.py",
]
# Not copied from the checkout: big, and what build_ignore must leave out anyway.
NOT_COPIED = shutil.ignore_patterns(*BUILD_IGNORE, ".git", "__pycache__")


def test_galaxy_yml_ignores_the_development_files():
    listed = yaml.safe_load((ROOT / "galaxy.yml").read_text()).get("build_ignore") or []
    missing = [entry for entry in BUILD_IGNORE if entry not in listed]
    assert not missing, f"galaxy.yml build_ignore lacks {missing}"


def collection_copy(tmp_path: Path) -> Path:
    """The checkout as a clean tree, with a file planted where each ignored thing lives and
    galaxy.yml's build_ignore completed with BUILD_IGNORE."""
    tree = tmp_path / "src"
    shutil.copytree(ROOT, tree, symlinks=True, ignore=NOT_COPIED)
    for planted in PLANTED:
        (tree / planted).parent.mkdir(parents=True, exist_ok=True)
        (tree / planted).write_text("planted by the galaxy artifact test\n")
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    listed = galaxy.get("build_ignore") or []
    galaxy["build_ignore"] = listed + [entry for entry in BUILD_IGNORE if entry not in listed]
    (tree / "galaxy.yml").write_text(yaml.safe_dump(galaxy, sort_keys=False))
    return tree


def run(argv: list[str], timeout: float, env: dict[str, str] | None = None, cwd=None):
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False
    )
    assert proc.returncode == 0, f"{argv[:3]} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def fresh_env(venv: Path, collections: Path) -> dict[str, str]:
    """Only the fresh virtualenv and the installed artifact: no checkout, no project venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "PYTHON"))}
    env.pop("VIRTUAL_ENV", None)
    env.update(
        {
            "PATH": f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
            "ANSIBLE_COLLECTIONS_PATH": str(collections),
            "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCAL_TEMP": str(venv / "tmp"),
            "ANSIBLE_HOME": str(venv / "ansible-home"),
        }
    )
    return env


def test_artifact_installs_and_documents_in_a_fresh_virtualenv(tmp_path):
    timings = {}
    started = time.monotonic()
    run([str(ANSIBLE_GALAXY), "collection", "build", "--output-path", str(tmp_path),
         str(collection_copy(tmp_path))], timeout=120)  # fmt: skip
    [tarball] = tmp_path.glob("vce-kvm-*.tar.gz")
    timings["build"] = time.monotonic() - started

    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert set(REQUIRED) <= set(names)
    if (ROOT / "roles").is_dir():
        assert any(name.startswith("roles/") and name.endswith("tasks/main.yml") for name in names)
    leaked = [
        name
        for name in names
        for pattern in [*BUILD_IGNORE, "__pycache__", "*.pyc"]
        if fnmatch(name, pattern) or name.startswith(f"{pattern}/") or f"/{pattern}/" in name
    ]
    assert not leaked, leaked

    venv = tmp_path / "venv"
    started = time.monotonic()
    # pip from this interpreter installs into the new one: seeding the venv with its own pip
    # would cost as much as the install.
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
    run([*pip, "--quiet", ANSIBLE_CORE], timeout=PIP_TIMEOUT)
    timings["venv"] = time.monotonic() - started

    collections = venv / "collections"
    env = fresh_env(venv, collections)
    started = time.monotonic()
    run(["ansible-galaxy", "collection", "install", str(tarball), "-p", str(collections)],
        timeout=120, env=env, cwd=tmp_path)  # fmt: skip
    installed = collections / "ansible_collections" / "vce" / "kvm"
    manifest = json.loads((installed / "MANIFEST.json").read_text())
    assert manifest["collection_info"]["name"] == "kvm"

    for argv in (
        ["ansible-doc", "vce.kvm.vm"],
        ["ansible-doc", "vce.kvm.environment"],
        ["ansible-doc", "-t", "inventory", "vce.kvm.libvirt_tenants"],
    ):
        shown = run(argv, timeout=120, env=env, cwd=tmp_path)
        assert f"{argv[-1]} (" in shown.stdout and str(installed) in shown.stdout, shown.stdout
    listing = run(["ansible-doc", "-l", "vce.kvm"], timeout=120, env=env, cwd=tmp_path)
    listed = {line.split()[0] for line in listing.stdout.splitlines() if line.strip()}
    modules = {
        f"vce.kvm.{Path(name).stem}"
        for name in names
        if name.startswith("plugins/modules/") and name.endswith(".py")
        and not name.endswith("__init__.py")
    }  # fmt: skip
    assert modules and modules == listed, listing.stdout
    timings["install and docs"] = time.monotonic() - started
    print(", ".join(f"{step} {seconds:.1f} s" for step, seconds in timings.items()))
