# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who owns a libvirt object: the project's <metadata> element, and the tenant name prefix."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ..core.errors import OwnershipError
from ..core.validation import NAME_PATTERN

NAMESPACE = "https://vce-kvm.dev/xmlns/owner/1"
PREFIX = "vce"
OWNER_TAG = f"{{{NAMESPACE}}}owner"
SEPARATOR = "_"  # declared names cannot contain it, so tenant + name never collide
# What an object named like a tenant's can be when it is not the tenant's: named with the
# tenant's prefix but without (valid) ownership, or a second object claiming a declared name.
UNOWNED, DUPLICATED = "unowned", "duplicated"

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


def ownership_problem(owner: Owner | None, tenant: str, kind: str, libvirt_name: str) -> str:
    """Why the object `libvirt_name` is not this tenant's object of this kind ("" when it is).

    The engine names every domain and network it makes after the name in its metadata, so an
    object whose metadata claims another name carries a copied tag, whatever else it says.
    """
    if owner is None:
        return (
            f"{kind} {libvirt_name!r} exists but was not created by vce.kvm (it has no vce "
            "ownership metadata)"
        )
    if owner.tenant != tenant:
        return f"{kind} {libvirt_name!r} belongs to tenant {owner.tenant!r}, not {tenant!r}"
    if owner.kind != kind:
        return f"{libvirt_name!r} is a {owner.kind} of tenant {tenant!r}, not a {kind}"
    if object_name(tenant, owner.name) != libvirt_name:
        return (
            f"{kind} {libvirt_name!r} carries the ownership metadata of {kind} {owner.name!r} "
            f"of tenant {tenant!r}, which vce.kvm names {object_name(tenant, owner.name)!r} "
            "(a copied tag)"
        )
    return ""


def check_owner(owner: Owner | None, tenant: str, kind: str, libvirt_name: str) -> None:
    """Refuse to touch an object that is not this tenant's object of this kind."""
    problem = ownership_problem(owner, tenant, kind, libvirt_name)
    if problem:
        raise OwnershipError(f"{problem}; refusing to modify or delete it")


@dataclass(frozen=True)
class Intruder:
    """An object named with a tenant's prefix that the engine does not take as the tenant's:
    never planned, changed, deleted or counted; drift reports it."""

    kind: str  # vm, network or disk
    libvirt_name: str  # a volume's is pool/name
    problem: str  # UNOWNED or DUPLICATED
    reason: str
    claimed: str = ""  # the declared name it claims, when it claims one

    def refusal(self) -> OwnershipError:
        return OwnershipError(f"{self.reason}; refusing to modify or delete it")


# A volume carries no <metadata>: its name (tenant prefix, declared name, format) is its owner.
EXTENSIONS = {"qcow2": "qcow2", "raw": "img"}


def volume_name(tenant: str, name: str, fmt: str) -> str:
    return f"{object_name(tenant, name)}.{EXTENSIONS[fmt]}"


def disk_claim(tenant: str, volume: str) -> str:
    """The declared disk a volume's name claims ("" for a VM's boot disk or seed, or a name the
    engine never makes)."""
    stem, _dot, ext = volume[len(tenant_prefix(tenant)) :].rpartition(".")
    return stem if ext in EXTENSIONS.values() and NAME_PATTERN.fullmatch(stem) else ""


def is_vm_volume(tenant: str, volume: str) -> bool:
    """A VM's boot disk or cloud-init seed, by its name."""
    rest = volume[len(tenant_prefix(tenant)) :]
    for suffix in (".boot.qcow2", ".seed.iso"):
        if rest.endswith(suffix) and NAME_PATTERN.fullmatch(rest[: -len(suffix)]):
            return True
    return False
