"""libvirt's test driver for unit tests: `test:///default` keeps one state for every
connection of the process, and starts again from its defaults once all of them are closed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

URI = "test:///default"


def fresh_driver(monkeypatch) -> Iterator[None]:
    """The engine's connection cache emptied for the test, and its connections closed after
    it, so the next test starts from the driver's defaults."""
    from ansible_collections.vce.kvm.plugins.module_utils.host import connection as host

    connections: dict[str, Any] = {}
    monkeypatch.setattr(host, "_connections", connections)
    yield
    for conn in connections.values():
        with contextlib.suppress(Exception):  # already closed by the code under test
            conn.close()


def image_on_fresh_driver(
    monkeypatch, tmp_path: Path, ledger_url: str, registered: bool = True
) -> Iterator[str]:
    """A fresh driver, tenant acme registered in the ledger (unless not `registered`), and an
    empty base image's path."""
    from tests.support.images import make_image
    from tests.support.ledger import register

    drivers = fresh_driver(monkeypatch)
    next(drivers, None)
    if registered:
        register(ledger_url, "acme")
    path = tmp_path / "base.qcow2"
    make_image(path)
    yield str(path)
    next(drivers, None)


def environment(image: Path | str, tenant: str = "acme", uri: str = URI) -> dict[str, Any]:
    """One network, one data disk and one VM with a fixed address."""
    return {
        "uri": uri,
        "tenant": tenant,
        "default_pool": "default-pool",
        "networks": [{"name": "lan", "cidr": "10.20.0.0/24"}],
        "disks": [{"name": "data1", "size_gib": 2}],
        "vms": [
            {
                "name": "web1",
                "vcpus": 1,
                "max_vcpus": 2,
                "memory_mib": 128,
                "boot_disk": {"image": str(image), "size_gib": 1},
                "disks": ["data1"],
                "nics": [{"network": "lan", "ip": "10.20.0.10"}],
            }
        ],
    }


def objects_of(tenant: str = "acme") -> set[str]:
    """The names of the tenant's domains, networks and volumes on the test driver."""
    from ansible_collections.vce.kvm.plugins.module_utils.host import connection as host

    conn = host.connect(URI)
    names = {d.name() for d in conn.listAllDomains(0)} | {n.name() for n in conn.listAllNetworks(0)}
    for pool in conn.listAllStoragePools(0):
        names |= {v.name() for v in pool.listAllVolumes(0)}
    return {name for name in names if name.startswith(f"{tenant}_")}


def define_copy(conn: Any, source: str, name: str) -> None:
    """Define domain `name` by hand as a copy of domain `source`, ownership metadata included:
    what someone with the host's libvirt would do to slip a VM in as one of a tenant's."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(conn.lookupByName(source).XMLDesc(0))
    root.find("name").text = name
    for element in (root.find("uuid"), root.find("devices")):
        if element is not None:
            root.remove(element)
    conn.defineXML(ET.tostring(root, encoding="unicode"))


def define_unowned(conn: Any, name: str) -> None:
    """A bare domain `name` with no ownership metadata, defined by hand."""
    conn.defineXML(
        f"<domain type='test'><name>{name}</name><memory>131072</memory>"
        "<os><type>hvm</type></os></domain>"
    )
