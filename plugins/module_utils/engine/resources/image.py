# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The catalogue of base images, and what a VM's or disk's base image may be.

The operator registers each base image of a zone in the ledger: its name, its path (the same on
every host of the zone), its format and virtual size as qemu-img reads them, and its checksum.
A registration reads the file on the host; a file with a backing file of its own is refused, so
a catalogue image stands alone.

A declaration names its base image (`boot_disk.image`, `backing_image`) as one of:
  - one of the tenant's own disks (a name; looked up first, since only the tenant changes it);
  - an image of the catalogue of the host's zone (a name);
  - an operator's absolute path, accepted only when its real path lies in one of the host's
    image directories (`image_dirs`), and every file of its backing chain is in an image
    directory, a catalogue image or one of the tenant's disks.
The backing chain of a tenant's disk is followed through libvirt's volume descriptions; a chain
that leaves the catalogue and the tenant's own disks is refused, naming the declared field.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ...core import fields
from ...core.errors import ApplyError, SpecError
from ...core.plan import Change, Plan
from ...core.validation import check_absolute_path, check_choice, check_name, check_prefix
from ...host.connection import TenantInventory
from ...host.ownership import EXTENSIONS, volume_name
from ...host.shell import HostShell
from ...host.xml import VolumeState
from ...ledger.tenants import Ledger, iso, key_of

try:
    import sqlalchemy as sa

    from ...ledger.schema import images
except ImportError:  # reported by the ledger's Store()
    sa = None

KIND = "image"
STATES = ("present", "absent")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
# A longer chain than this is refused: real overlays are one or two deep.
MAX_CHAIN = 16
# Reading a checksum takes about a second per GiB.
CHECKSUM_TIMEOUT = 1800
VALUES = ("path", "format", "virtual_size", "sha256")


@dataclass(frozen=True)
class ImageValues:
    """What the catalogue records of one image besides its zone and name."""

    path: str
    format: str
    virtual_size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ImageRecordSpec:
    zone: str
    name: str
    path: str
    format: str
    sha256: str | None  # the checksum the operator expects, when given


@dataclass(frozen=True)
class Source:
    """What a declared base image resolves to on the host."""

    path: str
    format: str


def find_volume(inventory: TenantInventory, tenant: str, name: str) -> VolumeState | None:
    """The tenant's disk `name`, in whichever pool and format it is."""
    for fmt in EXTENSIONS:
        wanted = volume_name(tenant, name, fmt)
        for (_pool, vol_name), volume in inventory.volumes.items():
            if vol_name == wanted:
                return volume
    return None


def check_sha256(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not SHA256_PATTERN.fullmatch(value.lower()):
        raise SpecError(field, f"must be a SHA-256 checksum (64 hex digits), got {value!r}")
    return value.lower()


def image_dirs_of(params: Mapping[str, Any]) -> tuple[str, ...]:
    """The host's image directories a run accepts operator paths in (none: no paths)."""
    raw = params.get("image_dirs")
    if raw is None:
        return (fields.IMAGE_DIR,)
    if not isinstance(raw, (list, tuple)):
        raise SpecError("image_dirs", "must be a list of absolute directories on the host")
    return tuple(
        check_absolute_path(d, f"image_dirs[{i}]").rstrip("/") or "/" for i, d in enumerate(raw)
    )


def inside(path: str, directories: tuple[str, ...]) -> bool:
    return any(path.startswith(d.rstrip("/") + "/") for d in directories)


def parse_image(params: Mapping[str, Any]) -> ImageRecordSpec:
    zone = check_name(params.get("zone"), "zone")
    name = check_name(params.get("name"), "name")
    if params.get("path") is None:
        raise SpecError("path", "the image's path on the host is required when state=present")
    path = check_absolute_path(params.get("path"), "path")
    fmt = check_choice(params.get("format") or "qcow2", "format", fields.DISK_FORMATS)
    return ImageRecordSpec(zone, name, path, fmt, check_sha256(params.get("sha256"), "sha256"))


class HostFiles:
    """The files of one host that images are made of, read with the host's own tools through
    the run's command prefix (as the planners run nft and ip)."""

    def __init__(self, shell: HostShell) -> None:
        self.shell = shell

    def real_paths(self, paths: list[str], field: str) -> list[str]:
        try:
            output = self.shell.run(["realpath", "-e", "--", *paths], "find", " ".join(paths))
        except ApplyError as error:
            raise SpecError(field, str(error)) from None
        return output.splitlines()

    def chain(self, path: str, fmt: str, field: str) -> list[dict[str, Any]]:
        """qemu-img's description of each file of the backing chain, `path` first; the format
        is given, so that a raw file's content is never probed as a header."""
        argv = ["qemu-img", "info", "-U", "--backing-chain", "--output=json", "-f", fmt, path]
        try:
            found = self.shell.json(argv, "read the backing chain of", path)
        except ApplyError as error:
            raise SpecError(field, str(error)) from None
        return found if isinstance(found, list) else [found]

    def checksum(self, path: str, field: str) -> str:
        try:
            output = self.shell.run(
                ["sha256sum", "--", path], "read the checksum of", path, timeout=CHECKSUM_TIMEOUT
            )
        except ApplyError as error:
            raise SpecError(field, str(error)) from None
        return output.split(" ", 1)[0]


def read_image(
    declared: ImageRecordSpec, files: HostFiles, image_dirs: tuple[str, ...]
) -> ImageValues:
    """The declared file as the host holds it: real path, format, size and checksum."""
    (real,) = files.real_paths([declared.path], "path")
    if not inside(real, image_dirs):
        raise SpecError(
            "path",
            f"{declared.path} (real path {real}) is outside the host's image directories "
            f"({', '.join(image_dirs) or 'none'})",
        )
    chain = files.chain(real, declared.format, "path")
    if len(chain) > 1 or chain[0].get("backing-filename"):
        raise SpecError(
            "path",
            f"{real} has a backing file ({chain[0].get('backing-filename')}); a catalogue image "
            "must stand alone (convert it with qemu-img convert)",
        )
    sha256 = files.checksum(real, "path")
    if declared.sha256 is not None and declared.sha256 != sha256:
        raise SpecError("sha256", f"{real} has checksum {sha256}, not {declared.sha256}")
    return ImageValues(real, declared.format, int(chain[0]["virtual-size"]), sha256)


class ImageRecords:
    """The ledger's `images` table."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    @staticmethod
    def get(connection: Any, zone: str, name: str) -> Any:
        query = sa.select(images).where(images.c.zone == zone, images.c.name == name)
        return connection.execute(query).first()

    @staticmethod
    def in_zone(connection: Any, zone: str | None) -> list[Any]:
        query = sa.select(images).order_by(images.c.zone, images.c.name)
        if zone is not None:
            query = query.where(images.c.zone == zone)
        return list(connection.execute(query))

    def put(self, connection: Any, zone: str, name: str, values: ImageValues) -> None:
        now = self.ledger.now()
        row = {
            **values.as_dict(),
            "updated_at": now,
            "key": key_of(KIND, zone, name, values.as_dict()),
            "run_id": self.ledger.run_id,
            "actor": self.ledger.actor,
        }
        where = (images.c.zone == zone, images.c.name == name)
        updated = connection.execute(images.update().where(*where).values(**row))
        if updated.rowcount == 0:
            connection.execute(
                images.insert().values(zone=zone, name=name, registered_at=now, **row)
            )

    @staticmethod
    def drop(connection: Any, zone: str, name: str) -> None:
        connection.execute(images.delete().where(images.c.zone == zone, images.c.name == name))


def recorded_values(row: Any) -> ImageValues:
    return ImageValues(row.path, row.format, row.virtual_size, row.sha256)


def image_facts(row: Any) -> dict[str, Any]:
    if row is None:
        return {}
    return {
        "zone": row.zone,
        "name": row.name,
        **recorded_values(row).as_dict(),
        "registered_at": iso(row.registered_at),
        "updated_at": iso(row.updated_at),
        "run_id": row.run_id,
        "actor": row.actor,
    }


def read_declared(params: Mapping[str, Any]) -> ImageValues:
    """The registration's file as the host holds it, read through the run's host command."""
    files = HostFiles(HostShell(check_prefix(params.get("host_command"))))
    return read_image(parse_image(params), files, image_dirs_of(params))


class ImageRecordPlanner:
    """Observe, plan and apply one catalogue image's record, inside one transaction."""

    def __init__(self, records: ImageRecords, connection: Any, zone: str, name: str) -> None:
        self.records = records
        self.connection = connection
        self.zone = zone
        self.name = name

    def observe(self) -> Any:
        return self.records.get(self.connection, self.zone, self.name)

    def put(self, values: ImageValues) -> Callable[[], None]:
        return lambda: self.records.put(self.connection, self.zone, self.name, values)

    def plan_present(self, values: ImageValues, row: Any) -> Plan:
        plan = Plan()
        label = f"{self.zone}/{self.name}"
        if row is None:
            plan.add(Change(KIND, label, "create", after=values.as_dict(), run=self.put(values)))
            return plan
        recorded = recorded_values(row)
        if recorded.sha256 != values.sha256:
            # Disks made from the image read the recorded content: a name never changes it.
            raise SpecError(
                "path",
                f"image {label} is recorded with checksum {recorded.sha256}; {values.path} on "
                f"this host has {values.sha256}: register a new content under a new name",
            )
        if recorded == values:
            return plan
        before, after = recorded.as_dict(), values.as_dict()
        changed = [field for field in VALUES if before[field] != after[field]]
        plan.add(
            Change(
                KIND,
                label,
                "update",
                field="record",
                before={field: before[field] for field in changed},
                after={field: after[field] for field in changed},
                run=self.put(values),
            )
        )
        return plan

    def plan_absent(self, row: Any) -> Plan:
        plan = Plan()
        if row is not None:
            plan.add(
                Change(
                    KIND,
                    f"{self.zone}/{self.name}",
                    "delete",
                    before=recorded_values(row).as_dict(),
                    run=lambda: self.records.drop(self.connection, self.zone, self.name),
                )
            )
        return plan


def catalogue_facts(ledger: Ledger, zone: str | None = None) -> dict[str, dict[str, Any]]:
    """The catalogue (of one zone, or every zone) as zone/name -> record, for vce.kvm.info."""
    with ledger.store.read() as connection:
        rows = ImageRecords.in_zone(connection, zone)
    return {f"{row.zone}/{row.name}": image_facts(row) for row in rows}


# -- what a declaration's base image resolves to ----------------------------------------------


class ImageSources:
    """What one run's base images may be: its zone's catalogue (read once, when first needed),
    the tenant's disks, and the host's image directories for an operator's paths."""

    def __init__(
        self,
        ledger: Ledger | None,
        zone: str | None,
        image_dirs: tuple[str, ...],
        files: HostFiles | None,
        local: bool = False,
    ) -> None:
        self.ledger = ledger
        self.zone = zone
        self.image_dirs = image_dirs
        self.files = files  # None: the host's files cannot be read, so no path is accepted
        self.local = local  # the run is on the host: a missing catalogue file is seen at once
        self._catalogue: dict[str, list[Any]] | None = None

    @classmethod
    def nothing(cls) -> ImageSources:
        """For planners that never make a disk from an image (removal, restores)."""
        return cls(None, None, (), None)

    def catalogue(self) -> dict[str, list[Any]]:
        """name -> the catalogue's images of that name (several only without a zone)."""
        if self._catalogue is None:
            self._catalogue = {}
            if self.ledger is not None:
                with self.ledger.store.read() as connection:
                    rows = ImageRecords.in_zone(connection, self.zone)
                for row in rows:
                    self._catalogue.setdefault(row.name, []).append(row)
        return self._catalogue

    def catalogue_paths(self) -> set[str]:
        return {row.path for rows in self.catalogue().values() for row in rows}

    def resolve(self, ref: str, fmt: str | None, inventory: TenantInventory, field: str) -> Source:
        if ref.startswith("/"):
            return self.host_path(ref, fmt or "qcow2", inventory, field)
        if fmt is not None:
            raise SpecError(
                field.rsplit(".", 1)[0] + ".image_format",
                f"{ref!r} has its recorded format; image_format is only for a host path",
            )
        volume = find_volume(inventory, inventory.tenant, ref)
        if volume is not None:
            self.check_volume_chain(volume, inventory, field)
            return Source(volume.path, volume.format)
        return self.catalogue_image(ref, inventory.tenant, field)

    def catalogue_image(self, name: str, tenant: str, field: str) -> Source:
        rows = self.catalogue().get(name, [])
        where = f"zone {self.zone}" if self.zone else "any zone"
        if not rows:
            raise SpecError(
                field,
                f"{name!r} is neither a disk of tenant {tenant!r} nor an image of the catalogue "
                f"of {where}",
            )
        # Without a zone, a name is clear when every zone that has it has the same file.
        if len({(row.path, row.format, row.sha256) for row in rows}) > 1:
            zones = ", ".join(row.zone for row in rows)
            raise SpecError(
                field, f"image {name!r} differs between the catalogues of {zones}: give zone"
            )
        row = rows[0]
        if self.local and not os.path.exists(row.path):
            raise SpecError(field, f"image {row.zone}/{name} is not on this host ({row.path})")
        return Source(row.path, row.format)

    def check_volume_chain(
        self, volume: VolumeState, inventory: TenantInventory, field: str
    ) -> None:
        """Follow the disk's backing files through libvirt's descriptions of the tenant's
        volumes, until a catalogue image or a file of the image directories."""
        owned = {v.path: v for v in inventory.volumes.values()}
        current = volume
        for _hop in range(MAX_CHAIN):
            backing = current.backing
            if backing is None or backing in self.catalogue_paths():
                return
            if backing in owned:
                current = owned[backing]
                continue
            if inside(backing, self.image_dirs):
                self.check_file_chain(backing, current.backing_format, inventory, field)
                return
            raise SpecError(
                field,
                f"disk {volume.name} is backed by {backing}, which is neither an image of the "
                f"catalogue nor one of the tenant's disks",
            )
        raise SpecError(field, f"the backing chain of {volume.name} is over {MAX_CHAIN} deep")

    def host_path(self, path: str, fmt: str, inventory: TenantInventory, field: str) -> Source:
        if not self.image_dirs:
            raise SpecError(
                field, "a host path is not accepted here: name a catalogue image or a disk"
            )
        if self.files is None:
            raise SpecError(
                field,
                f"{path}: a host path needs the host's files (run on the host or give "
                "host_command); name a catalogue image or a disk",
            )
        (real,) = self.files.real_paths([path], field)
        if not inside(real, self.image_dirs):
            raise SpecError(
                field,
                f"{path} (real path {real}) is outside the host's image directories "
                f"({', '.join(self.image_dirs)})",
            )
        self.check_file_chain(real, fmt, inventory, field)
        return Source(real, fmt)

    def check_file_chain(
        self, path: str, fmt: str | None, inventory: TenantInventory, field: str
    ) -> None:
        """Every file qemu-img finds in the chain is in an image directory, a catalogue image
        or one of the tenant's disks."""
        if self.files is None:
            raise SpecError(field, f"{path}: the host's files cannot be read to check its chain")
        chain = self.files.chain(path, fmt or "qcow2", field)
        if len(chain) > MAX_CHAIN:
            raise SpecError(field, f"the backing chain of {path} is over {MAX_CHAIN} deep")
        names = [str(item.get("filename", "")) for item in chain]
        allowed = self.catalogue_paths() | {v.path for v in inventory.volumes.values()}
        for named, real in zip(names, self.files.real_paths(names, field), strict=True):
            if real not in allowed and not inside(real, self.image_dirs):
                raise SpecError(
                    field,
                    f"the backing chain of {path} reaches {named} (real path {real}), which is "
                    "outside the catalogue, the tenant's disks and the image directories",
                )


def image_sources(
    params: Mapping[str, Any], ledger: Ledger, is_local: bool, zone: str | None = None
) -> ImageSources:
    """A run's image sources from its parameters: `zone` (or the given one), `image_dirs`, and
    `host_command` (how the host's files are read; a remote host without one: no paths)."""
    run_zone = zone or params.get("zone")
    if run_zone is not None:
        run_zone = check_name(run_zone, "zone")
    prefix = check_prefix(params.get("host_command"))
    files = HostFiles(HostShell(prefix)) if prefix or is_local else None
    return ImageSources(ledger, run_zone, image_dirs_of(params), files, is_local and not prefix)
