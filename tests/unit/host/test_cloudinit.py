"""The cloud-init NoCloud seed: the ISO a guest reads (label cidata, meta-data and user-data
under their Rock Ridge/Joliet names), keys merged into a #cloud-config, a stable digest."""

from __future__ import annotations

import io
import json

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import VceError
from ansible_collections.vce.kvm.plugins.module_utils.core.spec import CloudInitSpec
from ansible_collections.vce.kvm.plugins.module_utils.host import cloudinit

pycdlib = pytest.importorskip("pycdlib")

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0 admin@example"


def read_seed(image: bytes) -> tuple[str, dict[str, bytes]]:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    files = {}
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        for name in ("meta-data", "user-data"):
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            files[name] = out.getvalue()
            joliet = io.BytesIO()
            iso.get_file_from_iso_fp(joliet, joliet_path=f"/{name}")
            assert joliet.getvalue() == files[name]
    finally:
        iso.close()
    return label, files


def test_the_seed_is_a_cidata_iso_with_meta_data_and_user_data():
    spec = CloudInitSpec("web1", (KEY,))
    label, files = read_seed(cloudinit.seed_image("acme_web1-1", spec))
    assert label == "cidata"
    assert json.loads(files["meta-data"]) == {
        "instance-id": "acme_web1-1",
        "local-hostname": "web1",
    }
    user = files["user-data"].decode()
    assert user.startswith("#cloud-config\n")
    assert json.loads(user.split("\n", 1)[1]) == {"hostname": "web1", "ssh_authorized_keys": [KEY]}


def test_own_user_data_without_keys_is_passed_as_written():
    script = "#!/bin/sh\necho hello > /tmp/x\n"
    spec = CloudInitSpec("web1", (), script)
    assert cloudinit.user_data(spec) == script.encode()
    _label, files = read_seed(cloudinit.seed_image("i-1", spec))
    assert files["user-data"] == script.encode()


def test_keys_are_merged_into_own_cloud_config():
    spec = CloudInitSpec(
        "web1", (KEY, "ssh-rsa AAAB second"), "#cloud-config\npackages: [nginx]\n\n"
    )
    assert cloudinit.user_data(spec).decode() == (
        f'#cloud-config\npackages: [nginx]\nssh_authorized_keys: ["{KEY}", "ssh-rsa AAAB second"]\n'
    )


def test_keys_with_a_script_as_user_data_are_refused_naming_the_option():
    spec = CloudInitSpec("web1", (KEY,), "#!/bin/sh\ntrue\n")
    with pytest.raises(VceError, match=r"^cloud_init\.user_data: .*#cloud-config"):
        cloudinit.user_data(spec)


def test_a_hostname_that_is_not_plain_yaml_stays_one_string():
    spec = CloudInitSpec('web1: "x"\nevil: true')
    assert json.loads(cloudinit.meta_data("i-1", spec))["local-hostname"] == spec.hostname


def test_the_digest_follows_the_content():
    spec = CloudInitSpec("web1", (KEY,))
    digest = cloudinit.seed_digest("i-1", spec)
    assert len(digest) == 16 and digest == cloudinit.seed_digest("i-1", spec)
    assert digest != cloudinit.seed_digest("i-2", spec)
    assert digest != cloudinit.seed_digest("i-1", CloudInitSpec("web2", (KEY,)))


def test_without_pycdlib_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(cloudinit, "pycdlib", None)
    with pytest.raises(VceError, match="pip install pycdlib"):
        cloudinit.seed_image("i-1", CloudInitSpec("web1"))
