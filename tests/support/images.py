"""Base images for tests: small real qcow2 files, and their records in the catalogue."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import run_image

TINY_GUEST = "tinyguest"


def make_image(path: Path, backing: str | None = None, fmt: str = "qcow2") -> Path:
    """A 16 MiB image at `path` (a qcow2 over `backing` when given)."""
    argv = ["qemu-img", "create", "-q", "-f", fmt]
    if backing is not None:
        argv += ["-b", backing, "-F", "raw" if backing.startswith("/etc/") else "qcow2"]
    subprocess.run([*argv, str(path), "16M"], check=True, timeout=30)
    return path


def catalogued_guest(ledger_url: str, *zones: str) -> str:
    """The tiny guest (tools.tinyguest's cached build) in the catalogue of each zone: its name."""
    from tools.tinyguest import build_base_image

    path = build_base_image()
    for zone in zones:
        register_image(ledger_url, path, name=TINY_GUEST, zone=zone)
    return TINY_GUEST


def register_image(
    ledger_url: str, path: Path, name: str = "base", zone: str = "zone-a", image_dir: str = ""
) -> dict:
    """Record `path` in the catalogue of `zone` as `name`; its folder is the image directory."""
    params = {
        "ledger_url": ledger_url,
        "name": name,
        "zone": zone,
        "path": str(path),
        "image_dirs": [image_dir or str(path.parent)],
    }
    return run_image(params).as_dict()
