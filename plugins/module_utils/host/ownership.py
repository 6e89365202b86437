# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who owns a libvirt object: the project's <metadata> element, and the tenant name prefix."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ..core.errors import OwnershipError

NAMESPACE = "https://vce-kvm.dev/xmlns/owner/1"
PREFIX = "vce"
OWNER_TAG = f"{{{NAMESPACE}}}owner"
SEPARATOR = "_"  # declared names cannot contain it, so tenant + name never collide

ET.register_namespace(PREFIX, NAMESPACE)


@dataclass(frozen=True)
class Owner:
    tenant: str
    kind: str
    name: str
    spec_hash: str = ""
    extra: tuple[tuple[str, str], ...] = ()

    def get(self, key: str, default: str = "") -> str:
        return dict(self.extra).get(key, default)


def object_name(tenant: str, name: str) -> str:
    return f"{tenant}{SEPARATOR}{name}"


def tenant_prefix(tenant: str) -> str:
    return f"{tenant}{SEPARATOR}"


def owner_element(owner: Owner, qualified: bool = True) -> ET.Element:
    """The <owner> element; unqualified for virDomainSetMetadata, which adds the namespace."""
    element = ET.Element(OWNER_TAG if qualified else "owner")
    element.set("tenant", owner.tenant)
    element.set("kind", owner.kind)
    element.set("name", owner.name)
    element.set("spec-hash", owner.spec_hash)
    for key, value in owner.extra:
        element.set(key, value)
    return element


def add_metadata(root: ET.Element, owner: Owner) -> None:
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.SubElement(root, "metadata")
    metadata.append(owner_element(owner))


def read_owner(root: ET.Element) -> Owner | None:
    element = root.find(f"metadata/{OWNER_TAG}")
    if element is None:
        return None
    known = {"tenant", "kind", "name", "spec-hash"}
    extra = tuple(sorted((k, v) for k, v in element.attrib.items() if k not in known))
    return Owner(
        tenant=element.get("tenant", ""),
        kind=element.get("kind", ""),
        name=element.get("name", ""),
        spec_hash=element.get("spec-hash", ""),
        extra=extra,
    )


def check_owner(owner: Owner | None, tenant: str, kind: str, libvirt_name: str) -> None:
    """Refuse to touch an object that is not this tenant's object of this kind."""
    if owner is None:
        raise OwnershipError(
            f"{kind} {libvirt_name!r} exists but was not created by vce.kvm (it has no vce "
            "ownership metadata); refusing to modify or delete it"
        )
    if owner.tenant != tenant:
        raise OwnershipError(
            f"{kind} {libvirt_name!r} belongs to tenant {owner.tenant!r}, not {tenant!r}; "
            "refusing to modify or delete it"
        )
    if owner.kind != kind:
        raise OwnershipError(
            f"{libvirt_name!r} is a {owner.kind} of tenant {tenant!r}, not a {kind}; "
            "refusing to modify or delete it"
        )


# A volume carries no <metadata>: its name (tenant prefix, declared name, format) is its owner.
EXTENSIONS = {"qcow2": "qcow2", "raw": "img"}


def volume_name(tenant: str, name: str, fmt: str) -> str:
    return f"{object_name(tenant, name)}.{EXTENSIONS[fmt]}"
