"""KVM hosts for unit tests: libvirt's test driver loaded from a node file of our own, so each
host (one URI per file) has its own objects, e.g. the two zones of a zone link."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from ansible_collections.vce.kvm.plugins.module_utils.core.spec import parse_network
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.network import (
    network_owner,
)
from ansible_collections.vce.kvm.plugins.module_utils.host.xml import network_xml

POOL = "<pool type='dir'><name>default-pool</name><target><path>{}</path></target></pool>"


def host_file(
    path: Path,
    tenant: str,
    networks: list[dict],
    bridge: str = "virbr1",
    pool_path: str = "/default-pool",
) -> str:
    """A node file with the tenant's networks (as the engine defines them, with the bridge
    name libvirt would give) and a pool 'default-pool' at `pool_path`; returns its URI."""
    parts = []
    for i, raw in enumerate(networks):
        spec = parse_network(raw, "")
        root = ET.fromstring(
            network_xml(f"{tenant}_{spec.name}", spec, network_owner(tenant, spec), [])
        )
        root.find("bridge").set("name", f"{bridge}{i}" if i else bridge)
        parts.append(ET.tostring(root, encoding="unicode"))
    path.write_text(f"<node>{''.join(parts)}{POOL.format(pool_path)}</node>")
    return f"test://{path}"
