# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tenant environment: a routed network, web VMs (the first with a public IP), a database VM
with a data disk and nightly backups.

The stack's `vce:endpoint` and `vce:token` (or VCE_ENDPOINT and VCE_TOKEN) are all the
provider needs: the tenant is the token's, and the server places every object. The program
sizes itself: `get_images` picks the newest Debian image of the catalogue and `get_quotas` how
many web VMs the tenant's plan holds beside the database.

Pulumi runs this file as `__main__`; importing it registers nothing (call `main()` under mocks
to test it).
"""

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import pulumi
import pulumi_vce as vce

GIB = 1024**3
IMAGE_PREFIX = "debian-"
MAX_WEB = 3
DATA_DISK_GIB = 50
DEFAULT_USER_DATA = "#cloud-config\npackage_update: true\npackages: [qemu-guest-agent]\n"


class Size(NamedTuple):
    vcpus: int
    memory_mib: int
    disk_gib: int


WEB = Size(vcpus=2, memory_mib=2048, disk_gib=20)
DB = Size(vcpus=2, memory_mib=4096, disk_gib=20)


def pick_image(images: Sequence[vce.outputs.Image]) -> vce.outputs.Image:
    """The newest Debian of the catalogue (`debian-12` over `debian-11`)."""
    debian = [i for i in images if i.name.startswith(IMAGE_PREFIX)]
    if not debian:
        names = ", ".join(sorted({i.name for i in images})) or "none"
        raise pulumi.RunError(f"no {IMAGE_PREFIX}* image in the catalogue (it has: {names})")
    return max(debian, key=lambda i: (len(i.name), i.name))


def web_count(quotas: Mapping[str, vce.outputs.QuotaState]) -> int:
    """How many web VMs the plan's limits hold beside the database, at most MAX_WEB.

    Sized from the limits, not from what is free: this stack's own VMs count as used once
    created, so a second `up` must come to the same number. Objects of other stacks are the
    provider's business: a preview over the quotas fails in Check, naming the quota.
    """
    ram_gib = quotas["ram_gib"].limit - DB.memory_mib / 1024
    disk_gib = quotas["disk_gib"].limit - DB.disk_gib - DATA_DISK_GIB
    fits = [
        quotas["vms"].limit - 1,
        (quotas["vcpus"].limit - DB.vcpus) // WEB.vcpus,
        ram_gib // (WEB.memory_mib / 1024),
        disk_gib // WEB.disk_gib,
    ]
    count = int(min(MAX_WEB, *fits))
    if count < 1:
        raise pulumi.RunError(
            "the plan's quotas hold no web VM beside the database: ask for a quota increase"
        )
    return count


def main() -> None:
    config = pulumi.Config()
    ssh_keys = config.get_object("sshAuthorizedKeys") or []
    user_data = config.get_secret("userData") or pulumi.Output.secret(DEFAULT_USER_DATA)

    image = pick_image(vce.get_images().images)
    count = web_count(vce.get_quotas().quotas)

    # Routed, because a public IP is bound 1:1 to a NIC's fixed address on a routed network.
    backend = vce.Network("backend", cidr="10.20.0.0/24", mode="routed")

    def vm(name: str, ip: str, size: Size) -> vce.Vm:
        return vce.Vm(
            name,
            memory_mib=size.memory_mib,
            vcpus=size.vcpus,
            # A boot disk is at least as big as its image.
            boot_disk=vce.VmBootDiskArgs(
                image=image.name, size_gib=max(size.disk_gib, math.ceil(image.virtual_size / GIB))
            ),
            nics=[vce.VmNicArgs(network=backend.name, ip=ip)],
            cloud_init=vce.VmCloudInitArgs(
                hostname=name, ssh_authorized_keys=ssh_keys, user_data=user_data
            ),
        )

    webs = [vm(f"web-{n}", f"10.20.0.{10 + n}", WEB) for n in range(1, count + 1)]
    db = vm("db", "10.20.0.20", DB)
    data = vce.Disk("db-data", size_gib=DATA_DISK_GIB, attach_to=db.name)
    public = vce.PublicIp("web-public", vm=webs[0].name, network=backend.name)
    vce.BackupSchedule(
        "db-nightly",
        vm=db.name,
        calendar="daily",
        retention=vce.BackupScheduleRetentionArgs(keep_daily=7, keep_weekly=4),
    )

    pulumi.export("image", image.name)
    pulumi.export("web_private_ips", [w.nic_addresses.apply(lambda n: n[0].ip) for w in webs])
    pulumi.export("db_private_ip", db.nic_addresses.apply(lambda nics: nics[0].ip))
    pulumi.export("web_public_ip", public.allocated_address)
    pulumi.export("db_data_attached_to", data.attached_to)


if __name__ == "__main__":
    main()
