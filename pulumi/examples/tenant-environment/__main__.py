# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tenant environment: a routed network, a web VM with a public IP, a database VM with a
data disk and nightly backups.

The stack's `vce:tenant` and `vce:zones` configure the default provider; with one zone, no
resource needs to name it. Pulumi runs this file as `__main__`; importing it registers nothing
(call `main()` under mocks to test it).
"""

import pulumi
import pulumi_vce as vce

# Used when the stack does not set them, so a first preview works with the zones alone.
DEFAULT_IMAGE = "debian-12"
DEFAULT_USER_DATA = "#cloud-config\npackage_update: true\npackages: [qemu-guest-agent]\n"


def main() -> None:
    config = pulumi.Config()
    image = config.get("image") or DEFAULT_IMAGE
    ssh_keys = config.get_object("sshAuthorizedKeys") or []
    user_data = config.get_secret("userData") or pulumi.Output.secret(DEFAULT_USER_DATA)

    # Routed, because a public IP is bound 1:1 to a NIC's fixed address on a routed network;
    # it is routed to the zone's uplink (vce:zones), which a tenant does not choose.
    backend = vce.Network("backend", cidr="10.20.0.0/24", mode="routed")

    def vm(name: str, ip: str, memory_mib: int, disk_gib: int) -> vce.Vm:
        return vce.Vm(
            name,
            memory_mib=memory_mib,
            vcpus=2,
            boot_disk=vce.VmBootDiskArgs(image=image, size_gib=disk_gib),
            nics=[vce.VmNicArgs(network=backend.name, ip=ip)],
            cloud_init=vce.VmCloudInitArgs(
                hostname=name, ssh_authorized_keys=ssh_keys, user_data=user_data
            ),
        )

    web = vm("web", "10.20.0.10", memory_mib=2048, disk_gib=20)
    db = vm("db", "10.20.0.20", memory_mib=4096, disk_gib=20)
    data = vce.Disk("db-data", size_gib=50, attach_to=db.name)
    public = vce.PublicIp("web-public", vm=web.name, network=backend.name)
    vce.BackupSchedule(
        "db-nightly",
        vm=db.name,
        calendar="daily",
        retention=vce.BackupScheduleRetentionArgs(keep_daily=7, keep_weekly=4),
    )

    pulumi.export("web_private_ip", web.nic_addresses.apply(lambda nics: nics[0].ip))
    pulumi.export("db_private_ip", db.nic_addresses.apply(lambda nics: nics[0].ip))
    pulumi.export("web_public_ip", public.allocated_address)
    pulumi.export("db_data_path", data.path)


if __name__ == "__main__":
    main()
