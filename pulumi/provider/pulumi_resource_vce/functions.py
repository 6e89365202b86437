# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The provider's functions (data sources): what a program may read to size itself."""

from __future__ import annotations

from dataclasses import dataclass

from .props import Prop

QUOTA_KINDS = (
    "vms",
    "vcpus",
    "ram_gib",
    "disk_gib",
    "public_ips",
    "networks",
    "zone_links",
    "backup_schedules",
    "backup_storage_gib",
)
QUOTA_STATE = (
    Prop("limit", "number", "The most the tenant may hold.", required=True),
    Prop("used", "number", "What the tenant's objects hold now.", required=True),
    Prop(
        "reserved",
        "number",
        "What changes in flight have reserved on top of `used`.",
        required=True,
    ),
    Prop("unit", "string", "`GiB` for sizes, empty for counts.", required=True),
)
IMAGE = (
    Prop("zone", "string", "The zone whose catalogue holds the image.", required=True),
    Prop(
        "name",
        "string",
        "The image's name, as `bootDisk.image` and `backingImage` take it.",
        required=True,
    ),
    Prop("format", "string", "The image's format (`qcow2` or `raw`).", required=True),
    Prop(
        "virtualSize",
        "integer",
        "The disk size the image gives a guest, in bytes (a boot disk is at least this big).",
        required=True,
    ),
    Prop("sha256", "string", "The SHA-256 of the image file, hex.", required=True),
)


@dataclass(frozen=True)
class Function:
    name: str  # as the schema's token names it (camelCase)
    description: str
    inputs: tuple[Prop, ...]
    outputs: tuple[Prop, ...]

    @property
    def token(self) -> str:
        return f"vce:index:{self.name}"


FUNCTIONS = (
    Function(
        "getQuotas",
        "The tenant's quotas (`GET /v1/quotas`): for each quota kind, its limit, what the "
        "tenant's objects use and what changes in flight have reserved, so a program can size "
        "itself to what is left.",
        inputs=(),
        outputs=(
            Prop(
                "quotas",
                "map",
                f"Each quota by kind: {', '.join(f'`{kind}`' for kind in QUOTA_KINDS)}.",
                required=True,
                items=QUOTA_STATE,
                type_name="QuotaState",
            ),
        ),
    ),
    Function(
        "getImages",
        "The base images the tenant may boot from (`GET /v1/images`): the zones' catalogues.",
        inputs=(Prop("zone", "string", "Only this zone's images; every zone's when omitted."),),
        outputs=(
            Prop(
                "images",
                "array",
                "The images, by zone and name.",
                required=True,
                items=IMAGE,
                type_name="Image",
            ),
        ),
    ),
)
