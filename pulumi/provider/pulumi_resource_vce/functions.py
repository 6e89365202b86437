# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The data sources: the tenant's quotas and the image catalogue, read through the API, so a
program can size itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .client import Client
from .props import Prop

QUOTA_STATE = (
    Prop("limit", "number", "The plan's limit (with granted increases).", required=True),
    Prop("used", "number", "What the tenant's objects use now.", required=True),
    Prop("reserved", "number", "What changes in flight have reserved.", required=True),
    Prop("unit", "string", "The unit (`GiB` for sizes, empty for counts).", required=True),
)
IMAGE = (
    Prop("zone", "string", "The zone whose catalogue has the image.", required=True),
    Prop("name", "string", "The image's name (a VM's bootDisk.image).", required=True),
    Prop("format", "string", "qcow2 or raw.", required=True),
    Prop("virtualSize", "integer", "The image's virtual size in bytes.", required=True),
    Prop("sha256", "string", "The image file's SHA-256.", required=True),
)


@dataclass(frozen=True)
class Function:
    name: str  # the token's last part, camelCase (getQuotas)
    description: str
    inputs: tuple[Prop, ...]
    outputs: tuple[Prop, ...]
    call: Callable[[Client, Mapping[str, Any]], Awaitable[dict[str, Any]]]

    @property
    def token(self) -> str:
        return f"vce:index:{self.name}"


async def get_quotas(client: Client, args: Mapping[str, Any]) -> dict[str, Any]:
    quotas = await client.get("/v1/quotas")
    return {
        "quotas": {
            kind: {
                "limit": number(state.get("limit")),
                "used": number(state.get("used")),
                "reserved": number(state.get("reserved")),
                "unit": state.get("unit") or "",
            }
            for kind, state in sorted(quotas.items())
            if isinstance(state, Mapping)
        }
    }


async def get_images(client: Client, args: Mapping[str, Any]) -> dict[str, Any]:
    images = (await client.get("/v1/images"))["images"]
    zone = args.get("zone")
    return {
        "images": [
            {
                "zone": image["zone"],
                "name": image["name"],
                "format": image["format"],
                "virtualSize": image["virtual_size"],
                "sha256": image["sha256"],
            }
            for image in images
            if zone is None or image["zone"] == zone
        ]
    }


def number(value: Any) -> int | float:
    """A quota figure as a Pulumi number (GiB arrive as exact decimal strings)."""
    amount = Decimal(str(value if value is not None else 0))
    return int(amount) if amount == amount.to_integral_value() else float(amount)


FUNCTIONS = (
    Function(
        "getQuotas",
        "The tenant's quotas: each kind's limit, what its objects use and what changes in "
        "flight have reserved.",
        (),
        (
            Prop(
                "quotas",
                "map",
                "The quotas by kind (vms, vcpus, ram_gib, disk_gib, public_ips, networks, "
                "zone_links, backup_schedules, backup_storage_gib).",
                type_name="QuotaState",
                items=QUOTA_STATE,
                required=True,
            ),
        ),
        get_quotas,
    ),
    Function(
        "getImages",
        "The base images of the zones' catalogues (never their paths).",
        (Prop("zone", "string", "Only this zone's images."),),
        (
            Prop(
                "images",
                "array",
                "The images, by zone and name.",
                type_name="Image",
                items=IMAGE,
                required=True,
            ),
        ),
        get_images,
    ),
)
