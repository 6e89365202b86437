"""The catalogue of base images: registered from the file on the host (format, size, checksum)
in the ledger, and the only source, with the tenant's own disks and the operator's image
directories, that a disk or VM may start from. Whatever else a declaration names is refused
with its field, and nothing is made."""

from __future__ import annotations

import hashlib
import os

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.core.spec import parse_disk, parse_vm
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.disk import (
    DiskPlanner,
    find_volume,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.image import (
    HostFiles,
    ImageSources,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.vm import (
    Context,
    VmPlanner,
)
from ansible_collections.vce.kvm.plugins.module_utils.host.shell import HostShell
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.images import make_image, register_image

POOL = "default-pool"


@pytest.fixture(autouse=True)
def made(request):
    """The test's ledger exists, as an operator's does before images are registered."""
    for fixture in ("ledger_url", "any_ledger_url"):
        if fixture in request.fixturenames:
            Ledger.open(request.getfixturevalue(fixture), create=True)


@pytest.fixture
def images(tmp_path):
    """The operator's image directory, with one plain base image in it."""
    directory = tmp_path / "images"
    directory.mkdir()
    make_image(directory / "base.qcow2")
    return directory


def registration(ledger_url, directory, **changes):
    return {
        "ledger_url": ledger_url,
        "name": "base",
        "zone": "zone-a",
        "path": str(directory / "base.qcow2"),
        "image_dirs": [str(directory)],
        **changes,
    }


def test_an_image_is_recorded_with_what_the_host_reads_once_and_then_unchanged(
    any_ledger_url, images
):
    path = images / "base.qcow2"
    checked = facade.run_image(registration(any_ledger_url, images), check_mode=True).as_dict()
    assert (checked["changed"], checked["image"]) == (True, {})
    first = facade.run_image(registration(any_ledger_url, images)).as_dict()
    expected = {
        "path": str(path),
        "format": "qcow2",
        "virtual_size": 16 << 20,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    assert first["changed"] is True
    assert first["plan"][0]["after"] == expected
    assert {k: first["image"][k] for k in expected} == expected
    again = facade.run_image(registration(any_ledger_url, images)).as_dict()
    assert (again["changed"], again["plan"]) == (False, [])


def test_a_link_is_recorded_as_its_real_path(ledger_url, images):
    os.symlink(images / "base.qcow2", images / "current.qcow2")
    done = facade.run_image(
        registration(ledger_url, images, path=str(images / "current.qcow2"))
    ).as_dict()
    assert done["image"]["path"] == str(images / "base.qcow2")


@pytest.mark.parametrize(
    ("setup", "field", "reason"),
    [
        (lambda d: {"path": "/etc/shadow", "format": "raw"}, "path", "outside the host's image"),
        (lambda d: {"sha256": "0" * 64}, "sha256", "not " + "0" * 64),
        (lambda d: {"sha256": "abc"}, "sha256", "64 hex digits"),
        (lambda d: {"format": "vmdk"}, "format", "must be one of qcow2, raw"),
        (lambda d: {"path": str(d / "missing.qcow2")}, "path", "No such file"),
        (
            lambda d: {"path": str(make_image(d / "over.qcow2", backing=str(d / "base.qcow2")))},
            "path",
            "must stand alone",
        ),
        (
            lambda d: {"path": str(make_image(d / "raw.img", fmt="raw"))},
            "path",
            "not in qcow2 format",
        ),
    ],
)
def test_a_bad_registration_names_the_field_and_records_nothing(
    ledger_url, images, setup, field, reason
):
    with pytest.raises(SpecError) as caught:
        facade.run_image(registration(ledger_url, images, **setup(images)))
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert facade.catalogue_facts(Ledger.open(ledger_url)) == {}


def test_another_file_under_a_recorded_name_is_refused(ledger_url, images):
    facade.run_image(registration(ledger_url, images))
    make_image(images / "other.qcow2", fmt="raw")
    with pytest.raises(SpecError) as caught:
        facade.run_image(
            registration(ledger_url, images, path=str(images / "other.qcow2"), format="raw")
        )
    assert (caught.value.field, "register a new content under a new name") == (
        "path",
        caught.value.reason.split(": ", 1)[1],
    )


def test_an_image_taken_out_of_the_catalogue_is_gone_from_it(ledger_url, images):
    facade.run_image(registration(ledger_url, images))
    params = {"ledger_url": ledger_url, "name": "base", "zone": "zone-a", "state": "absent"}
    assert facade.run_image(params).as_dict()["changed"] is True
    assert facade.catalogue_facts(Ledger.open(ledger_url)) == {}
    assert facade.run_image(params).as_dict()["changed"] is False


# -- resolution -------------------------------------------------------------------------------


@pytest.fixture
def sources(ledger_url, images, test_host):
    register_image(ledger_url, images / "base.qcow2")
    files = HostFiles(HostShell())
    return ImageSources(Ledger.open(ledger_url), "zone-a", (str(images),), files, True)


def make_disk(test_host, sources, raw, tenant="acme"):
    spec = parse_disk(raw, "", POOL)
    engine = DiskPlanner(test_host, tenant, sources)
    engine.plan_present(spec, test_host.inventory(tenant)).apply()
    return find_volume(test_host.inventory(tenant), tenant, spec.name)


def test_a_disk_starts_from_a_catalogue_image_or_one_of_the_tenants_disks(
    test_host, sources, images
):
    data = make_disk(test_host, sources, {"name": "data1", "size_gib": 1, "backing_image": "base"})
    assert (data.backing, data.backing_format) == (str(images / "base.qcow2"), "qcow2")
    copy = make_disk(test_host, sources, {"name": "copy", "size_gib": 1, "backing_image": "data1"})
    assert copy.backing == data.path


def raises_on(field, action):
    with pytest.raises(SpecError) as caught:
        action()
    assert caught.value.field == field
    return caught.value.reason


@pytest.mark.parametrize(
    ("backing", "reason"),
    [
        ("/etc/shadow", "outside the host's image directories"),
        ("/default-pool/other_data.qcow2", "No such file or directory"),
        ("data", "neither a disk of tenant 'acme' nor an image of the catalogue of zone zone-a"),
    ],
)
def test_what_is_not_the_tenants_is_refused_naming_the_field_and_nothing_is_made(
    test_host, sources, backing, reason
):
    make_disk(test_host, sources, {"name": "data", "size_gib": 1}, tenant="other")
    spec = parse_disk({"name": "d", "size_gib": 1, "backing_image": backing}, "", POOL)
    engine = DiskPlanner(test_host, "acme", sources)
    refused = raises_on(
        "disks[0].backing_image",
        lambda: engine.plan_present(spec, test_host.inventory("acme"), "disks[0]."),
    )
    assert reason in refused
    assert test_host.inventory("acme").volumes == {}


def test_a_path_in_the_image_directory_is_accepted_only_with_a_chain_that_stays_in(
    test_host, sources, images, tmp_path
):
    make_image(images / "own.qcow2")
    disk = make_disk(
        test_host,
        sources,
        {"name": "d1", "size_gib": 1, "backing_image": str(images / "own.qcow2")},
    )
    assert disk.backing == str(images / "own.qcow2")
    outside = make_image(tmp_path / "outside.qcow2")
    make_image(images / "leak.qcow2", backing=str(outside))
    make_image(images / "shadow.qcow2", backing="/etc/shadow")
    for name, reached in (("leak", outside), ("shadow", "/etc/shadow")):
        spec = parse_disk(
            {"name": "d2", "size_gib": 1, "backing_image": str(images / f"{name}.qcow2")}, "", POOL
        )
        reason = raises_on(
            "backing_image",
            lambda spec=spec: DiskPlanner(test_host, "acme", sources).plan_present(
                spec, test_host.inventory("acme")
            ),
        )
        assert f"reaches {reached}" in reason
    assert {v.name for v in test_host.inventory("acme").volumes.values()} == {"acme_d1.qcow2"}


def test_a_tenant_run_without_image_directories_takes_no_path(test_host, sources, images):
    tenant_sources = ImageSources(sources.ledger, "zone-a", (), sources.files, True)
    spec = parse_disk(
        {"name": "d", "size_gib": 1, "backing_image": str(images / "base.qcow2")}, "", POOL
    )
    reason = raises_on(
        "backing_image",
        lambda: DiskPlanner(test_host, "acme", tenant_sources).plan_present(
            spec, test_host.inventory("acme")
        ),
    )
    assert "a host path is not accepted here" in reason


def test_a_vm_boots_from_a_catalogue_image_and_names_its_field_when_refused(
    test_host, sources, images
):
    raw = {"name": "web1", "memory_mib": 128, "boot_disk": {"image": "base", "size_gib": 1}}
    engine = VmPlanner(test_host, "acme", images=sources)
    engine.plan_present(
        parse_vm(raw, "", "acme", POOL), test_host.inventory("acme"), Context()
    ).apply()
    boot = find_volume(test_host.inventory("acme"), "acme", "web1.boot")
    assert (boot.backing, boot.backing_format) == (str(images / "base.qcow2"), "qcow2")
    bad = {**raw, "name": "web2", "boot_disk": {"image": "/etc/shadow", "size_gib": 1}}
    reason = raises_on(
        "vms[0].boot_disk.image",
        lambda: engine.plan_present(
            parse_vm(bad, "vms[0]", "acme", POOL),
            test_host.inventory("acme"),
            Context(path="vms[0]."),
        ),
    )
    assert "outside the host's image directories" in reason


def test_without_a_zone_a_name_is_clear_only_when_its_zones_agree(ledger_url, images, test_host):
    register_image(ledger_url, images / "base.qcow2", zone="zone-b")
    register_image(ledger_url, images / "base.qcow2", zone="zone-a")
    files = HostFiles(HostShell())
    inventory = test_host.inventory("acme")

    def anywhere():
        return ImageSources(Ledger.open(ledger_url), None, (), files, True)

    assert anywhere().resolve("base", None, inventory, "f").path == str(images / "base.qcow2")
    facade.run_image(
        registration(ledger_url, images, zone="zone-c", path=str(make_image(images / "c.qcow2")))
    )
    reason = raises_on("f", lambda: anywhere().resolve("base", None, inventory, "f"))
    assert (
        reason == "image 'base' differs between the catalogues of zone-a, zone-b, zone-c: give zone"
    )
    in_zone = ImageSources(Ledger.open(ledger_url), "zone-b", (), files, True)
    assert in_zone.resolve("base", None, inventory, "f").path == str(images / "base.qcow2")
    assert sorted(facade.catalogue_facts(Ledger.open(ledger_url))) == [
        "zone-a/base",
        "zone-b/base",
        "zone-c/base",
    ]
    reason = raises_on(
        "f.image_format", lambda: in_zone.resolve("base", "raw", inventory, "f.image")
    )
    assert "image_format is only for a host path" in reason
