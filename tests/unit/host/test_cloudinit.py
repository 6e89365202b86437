"""The cloud-init NoCloud seed: the ISO a guest reads (label cidata, meta-data and user-data
under their Rock Ridge/Joliet names), the tenant's #cloud-config parsed as one YAML mapping with
the declared host name and keys merged in (what does not parse is refused), a stable digest."""

from __future__ import annotations

import io
import json

import pytest
import yaml
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.core.spec import CloudInitSpec
from ansible_collections.vce.kvm.plugins.module_utils.host import cloudinit
from hypothesis import given, settings
from hypothesis import strategies as st

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


def cloud_config_of(spec: CloudInitSpec) -> dict:
    text = cloudinit.user_data(spec).decode()
    assert text.startswith("#cloud-config\n")
    [document] = yaml.safe_load_all(text)
    return document


def test_keys_are_merged_into_own_cloud_config_after_the_tenants_own():
    spec = CloudInitSpec(
        "web1",
        (KEY, "ssh-rsa AAAB second"),
        "#cloud-config\n# a comment\npackages: [nginx]\nssh_authorized_keys: [ssh-rsa AAAB second, ssh-rsa mine]\n\n",
    )
    assert cloud_config_of(spec) == {
        "hostname": "web1",
        "packages": ["nginx"],
        "ssh_authorized_keys": ["ssh-rsa AAAB second", "ssh-rsa mine", KEY],
    }


@pytest.mark.parametrize(
    "text",
    [
        "#cloud-config\npackages: [nginx]\n...\n",  # an explicit end of the document
        "#cloud-config\n---\npackages: [nginx]\n",  # an explicit start
        "#cloud-config\npackages:\n- nginx\n",  # no newline after a block list
    ],
)
def test_user_data_ending_or_starting_its_document_keeps_the_keys(text):
    document = cloud_config_of(CloudInitSpec("web1", (KEY,), text))
    assert document == {"hostname": "web1", "packages": ["nginx"], "ssh_authorized_keys": [KEY]}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("#cloud-config\npackages: [nginx\n", "is not valid YAML"),
        ("#cloud-config\npackages: [nginx]\n---\nusers: []\n", "holds 2 YAML documents"),
        ("#cloud-config\n- nginx\n", "must be a YAML mapping of keys to values, got a list"),
        (
            "#cloud-config\njust text\n",
            "must be a YAML mapping of keys to values, got a single str",
        ),
        ("#cloud-config\n1: one\n", "its keys must be text"),
        ('#cloud-config\nx: "\\0"\n\0\n', "is not valid YAML"),
        ("packages: [nginx]\n", "must be a #cloud-config document (its first line)"),
        ("#!/bin/sh\ntrue\n", "with ssh_authorized_keys, user_data must be a #cloud-config"),
    ],
)
def test_user_data_that_does_not_parse_as_one_mapping_is_refused_naming_the_field(text, reason):
    with pytest.raises(SpecError, match=r"^cloud_init\.user_data: ") as caught:
        cloudinit.user_data(CloudInitSpec("web1", (KEY,), text))
    assert reason in caught.value.reason


def test_the_tenants_hostname_and_keys_must_agree_with_the_declaration():
    with pytest.raises(SpecError) as caught:
        cloudinit.user_data(CloudInitSpec("web1", (), "#cloud-config\nhostname: db\n"))
    assert caught.value.field == "cloud_init.user_data.hostname"
    same = CloudInitSpec("web1", (), "#cloud-config\nhostname: web1\n")
    assert cloud_config_of(same) == {"hostname": "web1"}
    with pytest.raises(SpecError) as caught:
        cloudinit.user_data(
            CloudInitSpec("web1", (KEY,), "#cloud-config\nssh_authorized_keys: x\n")
        )
    assert caught.value.field == "cloud_init.user_data.ssh_authorized_keys"


# Fragments that make YAML structure, end or start documents, and name the merged keys.
YAML_TEXT = st.lists(
    st.sampled_from(
        ["a", "b", ": ", "- ", "[", "]", "{", "}", "#", "&x ", "*x", "!!str ", "|", ">", "'",
         '"', ",", " ", "  ", "\n", "\t", "...", "---", "ssh_authorized_keys", "hostname",
         "web1", "1", "\0", "\u2028"]
    ),
    max_size=30,
).map("".join)  # fmt: skip


@settings(max_examples=300)
@given(YAML_TEXT, st.lists(st.sampled_from([KEY, "ssh-rsa AAAB x"]), max_size=2, unique=True))
def test_any_user_data_is_merged_keeping_every_key_or_refused_naming_the_field(body, keys):
    spec = CloudInitSpec("web1", tuple(keys), "#cloud-config\n" + body)
    try:
        document = cloud_config_of(spec)
    except SpecError as error:
        assert error.field.startswith("cloud_init.user_data")
        return
    assert document["hostname"] == "web1"
    assert set(keys) <= set(document.get("ssh_authorized_keys", []))


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
