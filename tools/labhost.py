"""Prepare this machine as the lab KVM host: daemons, the lab storage pool, the base image.

Until the kvm_host role exists this is what `scripts/lab.sh demo` runs before the playbook.
    python -m tools.labhost [--pool NAME] [--pool-dir DIR] [--image PATH]
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from tools.libvirtd import ensure_system_daemons
from tools.tinyguest import build_base_image

DEFAULT_POOL = "vce-lab"
DEFAULT_POOL_DIR = Path("/var/lib/vce-kvm/pool")
DEFAULT_IMAGE = Path("/var/lib/vce-kvm/images/tinyguest.qcow2")


def pool_xml(name: str, path: Path) -> str:
    root = ET.Element("pool", {"type": "dir"})
    ET.SubElement(root, "name").text = name
    ET.SubElement(ET.SubElement(root, "target"), "path").text = str(path)
    return ET.tostring(root, encoding="unicode")


def ensure_pool(conn: libvirt.virConnect, name: str, path: Path) -> bool:
    """Define, build, start and autostart a dir pool; True when something had to be done."""
    path.mkdir(parents=True, exist_ok=True)
    changed = False
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        pool = conn.storagePoolDefineXML(pool_xml(name, path), 0)
        changed = True
    if not pool.isActive():
        pool.create(0)
        changed = True
    if not pool.autostart():
        pool.setAutostart(1)
        changed = True
    return changed


def install_image(target: Path) -> bool:
    """Copy the tiny guest base image where the lab inventory expects it."""
    built = build_base_image()
    if target.exists() and filecmp.cmp(target, built, shallow=False):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_suffix(".partial")
    shutil.copyfile(built, scratch)
    scratch.replace(target)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uri", default="qemu:///system")
    parser.add_argument("--pool", default=DEFAULT_POOL)
    parser.add_argument("--pool-dir", type=Path, default=DEFAULT_POOL_DIR)
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    args = parser.parse_args(argv)
    ensure_system_daemons()
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(args.uri)
    try:
        pool_changed = ensure_pool(conn, args.pool, args.pool_dir)
    finally:
        conn.close()
    image_changed = install_image(args.image)
    print(
        f"lab host ready: pool {args.pool} ({'created' if pool_changed else 'present'}), "
        f"base image {args.image} ({'installed' if image_changed else 'present'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
