# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""cloud-init NoCloud seed: an ISO 9660 image labelled 'cidata', built in memory.

Built here and uploaded through a libvirt stream, so it works over qemu+ssh:// too.
"""

from __future__ import annotations

import hashlib
import io
import json

from ..core.cloud_config import cloud_config, dump
from ..core.errors import VceError
from ..core.spec import CloudInitSpec

try:
    import pycdlib
except ImportError:
    pycdlib = None


def meta_data(instance_id: str, spec: CloudInitSpec) -> bytes:
    # JSON is valid YAML, and json.dumps quotes whatever a key or host name holds.
    return json.dumps(
        {"instance-id": instance_id, "local-hostname": spec.hostname}, sort_keys=True
    ).encode()


def user_data(spec: CloudInitSpec) -> bytes:
    """The seed's user-data: the tenant's script as written, or their #cloud-config with the
    declared host name and keys merged in (core/cloud_config.py has the precedence)."""
    if spec.user_data is None:
        # JSON is YAML; kept as it always was, so the seeds of existing VMs keep their digest.
        document = {
            "hostname": spec.hostname,
            "ssh_authorized_keys": list(spec.ssh_authorized_keys),
        }
        return b"#cloud-config\n" + json.dumps(document, sort_keys=True).encode() + b"\n"
    merged = cloud_config(
        spec.user_data, spec.hostname, spec.ssh_authorized_keys, "cloud_init.user_data"
    )
    return spec.user_data.encode() if merged is None else dump(merged)


def seed_digest(instance_id: str, spec: CloudInitSpec) -> str:
    digest = hashlib.sha256(meta_data(instance_id, spec) + b"\0" + user_data(spec))
    return digest.hexdigest()[:16]


def seed_image(instance_id: str, spec: CloudInitSpec) -> bytes:
    if pycdlib is None:
        raise VceError("cloud_init needs the pycdlib Python package: pip install pycdlib")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for name, payload in (
        ("meta-data", meta_data(instance_id, spec)),
        ("user-data", user_data(spec)),
    ):
        iso_name = name.upper().replace("-", "_") + ".;1"
        iso.add_fp(
            io.BytesIO(payload),
            len(payload),
            f"/{iso_name}",
            rr_name=name,
            joliet_path=f"/{name}",
        )
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()
