"""Remove every libvirt object named with a prefix: what tests and benchmarks leave behind.

Used in `finally` blocks, so each step swallows libvirt errors and goes on with the next.
"""

from __future__ import annotations

import contextlib

import libvirt
from ansible_collections.vce.kvm.plugins.module_utils.host.firewall import NftTable
from ansible_collections.vce.kvm.plugins.module_utils.host.shell import HostShell

from tools.libvirtd import PrivateLibvirtd


def remove_prefixed(conn: libvirt.virConnect, start: str) -> list[str]:
    """Destroy and delete domains, networks and volumes (in every active pool) whose names
    begin with `start`; return what was removed."""
    removed = []
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(start):
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                # Backups leave checkpoints, which block a plain undefine.
                dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                )
            removed.append(f"domain {dom.name()}")
    for net in conn.listAllNetworks(0):
        if net.name().startswith(start):
            with contextlib.suppress(libvirt.libvirtError):
                if net.isActive():
                    net.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                net.undefine()
            removed.append(f"network {net.name()}")
    for pool in conn.listAllStoragePools(0):
        with contextlib.suppress(libvirt.libvirtError):
            if not pool.isActive():
                continue
            pool.refresh(0)
            for vol in pool.listAllVolumes(0):
                if vol.name().startswith(start):
                    with contextlib.suppress(libvirt.libvirtError):
                        vol.delete(0)
                    removed.append(f"volume {vol.name()}")
    return removed


def stop_emptied(daemon: PrivateLibvirtd) -> None:
    """Stop a test's private daemon after removing every object it holds: a network still
    running when the daemon stops would leave its bridge and firewall rules behind."""
    try:
        if daemon.is_running():
            with contextlib.suppress(libvirt.libvirtError):
                connection = daemon.connect()
                remove_prefixed(connection, "")
                connection.close()
    finally:
        daemon.stop()


def remove_guard() -> None:
    """Delete the guard table (inet vce_guard) the engine's runs install in this machine's own
    namespace, where a private libvirtd's bridges are: no other libvirtd's bridge that takes a
    freed name is ever filtered by it. A test's or benchmark's next run installs it again."""
    NftTable(HostShell(), "inet", "vce_guard").remove()
