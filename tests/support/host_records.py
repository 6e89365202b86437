"""Host records as the kvm_host role leaves them in the ledger: how the control plane reaches
each host (URI, host command) and the zone's settings, for tests of the server's fleet."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import hosts
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger, utcnow


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
        "settings": json.dumps(settings or {}, sort_keys=True),
    }
    with Ledger.open(ledger_url, create=True).store.write() as connection:
        connection.execute(sa.insert(hosts).values(**row))
