"""Integration fixtures: a private libvirtd for the session, a storage pool, the tiny guest
base image, and tenants whose objects are removed after each test whatever happens."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.backups import runner_script
from tests.support.images import make_image, register_image
from tests.support.ledger import forget_stores, register
from tools.cleanup import remove_guard, remove_prefixed, stop_emptied
from tools.labhost import ensure_pool
from tools.libvirtd import PrivateLibvirtd
from tools.tinyguest import build_base_image

POOL_NAME = "default"
IMAGE_ZONE = "zone-a"  # the zone whose catalogue holds the session's base images (as Pulumi's)
_tenant_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[PrivateLibvirtd]:
    base = Path(tempfile.mkdtemp(prefix="vce-it-", dir="/tmp"))
    daemon = PrivateLibvirtd(base)
    daemon.start()
    os.environ["VCE_CONSOLE_LOG_DIR"] = str(daemon.log_dir / "qemu")
    try:
        yield daemon
    finally:
        stop_emptied(daemon)  # whatever a test left
        remove_guard()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def conn(libvirtd: PrivateLibvirtd) -> Iterator[libvirt.virConnect]:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    connection = libvirtd.connect()
    yield connection
    with contextlib.suppress(libvirt.libvirtError):
        connection.close()


@pytest.fixture(scope="session")
def pool(libvirtd: PrivateLibvirtd, conn: libvirt.virConnect) -> str:
    ensure_pool(conn, POOL_NAME, libvirtd.base_dir / "pool")
    return POOL_NAME


@pytest.fixture(scope="session")
def image_dir(libvirtd: PrivateLibvirtd) -> Path:
    """The session's image directory (the operator's /var/lib/vce-kvm/images)."""
    path = libvirtd.base_dir / "images"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def base_image_path(image_dir: Path) -> Path:
    """The tiny guest, copied from its build cache into the image directory."""
    path = image_dir / "tinyguest.qcow2"
    shutil.copyfile(build_base_image(), path)
    return path


@pytest.fixture(scope="session")
def base_image(base_image_path: Path, ledger_url: str) -> str:
    """The tiny guest's name in the catalogue of the session's ledger."""
    register_image(ledger_url, base_image_path, name="tinyguest", zone=IMAGE_ZONE)
    return "tinyguest"


@pytest.fixture(scope="session")
def blank_image_path(image_dir: Path) -> Path:
    """A small empty qcow2 base: VMs on it start (firmware only), which is all most tests need."""
    return make_image(image_dir / "blank-base.qcow2")


@pytest.fixture(scope="session")
def blank_image(blank_image_path: Path, ledger_url: str) -> str:
    """The blank base's name in the catalogue of the session's ledger (tests on a ledger of
    their own register it there with tests.support.images.register_image)."""
    register_image(ledger_url, blank_image_path, name="blank", zone=IMAGE_ZONE)
    return "blank"


@pytest.fixture
def uri(libvirtd: PrivateLibvirtd, pool: str) -> str:
    return libvirtd.uri


@pytest.fixture(scope="session")
def ledger_url(libvirtd: PrivateLibvirtd) -> Iterator[str]:
    """The session's ledger (SQLite), also for the ansible processes the tests start."""
    url = f"sqlite:///{libvirtd.base_dir / 'ledger.sqlite3'}"
    Ledger.open(url, create=True)  # the operator's ledger exists before any test reads it
    previous = os.environ.get("VCE_LEDGER_URL")
    os.environ["VCE_LEDGER_URL"] = url
    try:
        yield url
    finally:
        forget_stores()
        if previous is None:
            os.environ.pop("VCE_LEDGER_URL", None)
        else:
            os.environ["VCE_LEDGER_URL"] = previous


@pytest.fixture
def tenant(conn: libvirt.virConnect, pool: str, ledger_url: str) -> Iterator[str]:
    """A tenant registered in the ledger with roomy quotas; its objects removed afterwards."""
    name = f"t{os.getpid() % 10000}x{next(_tenant_numbers)}"
    register(ledger_url, name)
    try:
        yield name
    finally:
        remove_prefixed(conn, f"{name}_")
        remove_guard()


_subnets = itertools.count(1)


@pytest.fixture
def subnet() -> str:
    """A /24 no other test of this session uses (10.213.N.0/24), given as '10.213.N'."""
    return f"10.213.{next(_subnets)}"


def wait_for(predicate, timeout: float, interval: float = 0.25):
    """Poll `predicate` until it returns something truthy; bounded by `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


@pytest.fixture
def backup_host(tmp_path: Path) -> dict[str, str]:
    """Where a test's backup schedules live: its own backup root, unit and config
    directories, and a runner that runs this checkout's code (as the installed `vce-backup`
    console script would)."""
    runner = tmp_path / "bin" / "vce-backup"
    runner.parent.mkdir()
    root = Path(__file__).resolve().parents[2]
    runner.write_text(runner_script(root))
    runner.chmod(0o755)
    return {
        "backup_root": str(tmp_path / "backups"),
        "unit_dir": str(tmp_path / "units"),
        "config_dir": str(tmp_path / "config"),
        "runner": str(runner),
    }


def run_backup(config: str, now: str | None = None, timeout: float = 300) -> dict:
    """One run of the schedule's runner, as its systemd service starts it; the run's JSON."""
    runner = Path(config).parents[1] / "bin" / "vce-backup"
    argv = [str(runner), "run", "--config", config, *(["--now", now] if now else [])]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise AssertionError(f"vce-backup exited {proc.returncode}: {proc.stderr}")
    return json.loads(proc.stdout)
