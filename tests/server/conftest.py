"""Server fixtures: the integration tier's private libvirtd, storage pool and blank base image;
per module a ledger of its own with the host registered and the image in its catalogue, and a
`vce serve` process on it; tenants registered as an operator does and removed afterwards."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.conftest import fresh_database_url
from tests.integration.conftest import (
    IMAGE_ZONE,
    blank_image_path,
    conn,
    image_dir,
    libvirtd,
    pool,
)
from tests.support.images import register_image
from tests.support.ledger import forget_stores, register
from tests.support.server import Server, backup_settings, register_host, running_server
from tools.cleanup import remove_guard, remove_prefixed
from tools.libvirtd import PrivateLibvirtd

__all__ = ["blank_image_path", "conn", "image_dir", "libvirtd", "pool"]

HOST = "kvm-s1"
ZONE = IMAGE_ZONE
IMAGE = "blank"
HOST_DIR = "host"
_tenant_numbers = itertools.count(1)
# 10.214.N.0/24: no network of the integration tier (10.213.N) overlaps them.
_subnets = itertools.count(1)


@dataclass(frozen=True)
class Fleet:
    """What the operator set up before starting the server: a ledger, one host, an image."""

    ledger_url: str
    uri: str
    zone: str
    image: str
    logs: Path

    @property
    def host_dir(self) -> Path:
        """Where the host keeps backup schedules' units and configs, and backups."""
        return self.logs / HOST_DIR


def set_up_fleet(ledger_url: str, uri: str, image_path: Path, logs: Path) -> Fleet:
    register_host(ledger_url, HOST, ZONE, uri, backup_settings(logs / HOST_DIR))
    register_image(ledger_url, image_path, name=IMAGE, zone=ZONE)
    return Fleet(ledger_url, uri, ZONE, IMAGE, logs)


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
    libvirtd: PrivateLibvirtd,
    pool: str,
    blank_image_path: Path,
) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("server")
    url = f"sqlite:///{directory / 'ledger.sqlite3'}"
    yield set_up_fleet(url, libvirtd.uri, blank_image_path, directory)
    forget_stores()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def any_fleet(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    libvirtd: PrivateLibvirtd,
    pool: str,
    blank_image_path: Path,
) -> Iterator[Fleet]:
    """A fleet on each ledger back end in turn: a SQLite file, a PostgreSQL database."""
    directory = tmp_path_factory.mktemp(f"server-{request.param}")
    url = fresh_database_url(request.param, directory, request)
    yield set_up_fleet(url, libvirtd.uri, blank_image_path, directory)
    forget_stores()


@pytest.fixture(scope="module")
def any_server(any_fleet: Fleet) -> Iterator[Server]:
    with running_server(any_fleet.ledger_url, any_fleet.logs / "serve.log") as started:
        yield started


@pytest.fixture(scope="module")
def server(fleet: Fleet) -> Iterator[Server]:
    with running_server(fleet.ledger_url, fleet.logs / "serve.log") as started:
        yield started


def next_subnet() -> str:
    """A /24 no other network of this session uses, as '10.214.N'."""
    return f"10.214.{next(_subnets)}"


@pytest.fixture
def subnet() -> str:
    return next_subnet()


@pytest.fixture
def new_tenant(
    conn: libvirt.virConnect,
) -> Iterator[Callable[..., str]]:
    """Registers tenants (roomy quotas, or the ones given) in a fleet's ledger; removes their
    libvirt objects after the test whatever happened."""
    made: list[str] = []

    def make(fleet: Fleet, **quotas: Any) -> str:
        name = f"s{os.getpid() % 10000}x{next(_tenant_numbers)}"
        register(fleet.ledger_url, name, **quotas)
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            remove_prefixed(conn, f"{name}_")
        remove_guard()
