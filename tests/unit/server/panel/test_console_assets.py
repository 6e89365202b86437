"""The console's browser library is served from the server's own files (no CDN): copies of the
pinned npm package @xterm/xterm. This checks each copy byte for byte against the package
tarball whose SHA-512 is the integrity package-lock.json pins; npm keeps that tarball in its
cache once `npm ci` ran in server/vce_server/panel (scripts/lab.sh test does, before pytest)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

from vce_server.panel.render import STATIC

PANEL = STATIC.parent
PACKAGE = "@xterm/xterm"
# Served file -> its path in the package's tarball.
COPIES = {
    "xterm.js": "package/lib/xterm.js",
    "xterm.css": "package/css/xterm.css",
    "xterm.LICENSE.txt": "package/LICENSE",
}


def locked() -> dict:
    lock = json.loads((PANEL / "package-lock.json").read_text())
    return lock["packages"][f"node_modules/{PACKAGE}"]


def cached_tarball(integrity: str) -> bytes:
    """The tarball npm's content-addressed cache holds for the integrity, checked again."""
    algorithm, digest = integrity.split("-", 1)
    assert algorithm == "sha512", integrity
    hexdigest = base64.b64decode(digest).hex()
    cache = Path(os.environ.get("NPM_CONFIG_CACHE") or Path.home() / ".npm")
    path = cache / "_cacache" / "content-v2" / "sha512" / hexdigest[:2] / hexdigest[2:4]
    path /= hexdigest[4:]
    assert path.exists(), f"no {PACKAGE} tarball in {cache}: run `npm ci` in {PANEL}"
    data = path.read_bytes()
    assert hashlib.sha512(data).hexdigest() == hexdigest
    return data


def test_the_package_is_pinned_to_one_version() -> None:
    wanted = json.loads((PANEL / "package.json").read_text())["dependencies"][PACKAGE]
    assert wanted == locked()["version"] and wanted[0].isdigit()


def test_the_served_files_are_the_locked_packages() -> None:
    tarball = cached_tarball(locked()["integrity"])
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for served, inside in COPIES.items():
            packed = archive.extractfile(inside)
            assert packed is not None, inside
            assert (STATIC / served).read_bytes() == packed.read(), served
