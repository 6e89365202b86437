"""Host records as the kvm_host role leaves them in the ledger: how the control plane reaches
each host (URI, host command) and the zone's settings, for tests of the server's fleet."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.host import connection
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import hosts
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger, utcnow

from tests.support.kvm_hosts import host_file
from tests.support.server import backup_settings


def add_host(
    ledger_url: str,
    name: str,
    zone: str,
    uri: str,
    host_command: list[str] | None = None,
    uplink: str | None = None,
    public_pools: list[dict[str, Any]] | None = None,
    settings: dict[str, Any] | None = None,
) -> None:
    now = utcnow()
    row = {
        "name": name,
        "zone": zone,
        "uri": uri,
        "uplink": uplink,
        "public_pools": json.dumps(public_pools or [], sort_keys=True),
        "cpus": 4,
        "memory_mib": 8192,
        "libvirt_version": "10.0.0",
        "qemu_version": "8.2.0",
        "registered_at": now,
        "updated_at": now,
        "key": f"test-{name}",
        "run_id": "test",
        "actor": "test",
        "host_command": json.dumps(host_command) if host_command is not None else None,
        "settings": json.dumps(
            settings if settings is not None else beside_node(uri), sort_keys=True
        ),
    }
    with Ledger.open(ledger_url, create=True).store.write() as connection:
        connection.execute(sa.insert(hosts).values(**row))


def beside_node(uri: str) -> dict[str, str]:
    """A test-driver host's backup directories beside its node file: a host record without
    them sends backup schedules to the machine's own /etc/systemd/system and /etc/vce-kvm."""
    if not uri.startswith("test:///") or uri == "test:///default":
        return {}
    return backup_settings(Path(uri[len("test://") :]).parent / "host-dirs")


def private_host(path: Path) -> str:
    """A test-driver host of the test's own (libvirt's test:///default is shared by every
    test of the process): a pool `default-pool` and another tenant's network on
    192.168.122.0/24, where test:///default has its `default` network."""
    return host_file(path, "neighbour", [{"name": "default", "cidr": "192.168.122.0/24"}])


def closing_connections(monkeypatch: Any) -> Iterator[dict[str, Any]]:
    """The engine's libvirt connections, fresh for a test and closed after it: libvirt's test
    driver keeps its objects while any connection to it is open, so a test that leaves one
    open hands its networks and domains to the next."""
    opened: dict[str, Any] = {}
    monkeypatch.setattr(connection, "_connections", opened)
    yield opened
    for conn in opened.values():
        with contextlib.suppress(Exception):  # closed already
            conn.close()
