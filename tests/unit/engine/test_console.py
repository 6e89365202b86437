"""The engine's console stream refuses what is not the tenant's running VM, and closes its own
connection whatever happened (libvirt's test driver has no console to open: the last step is
refused by libvirt, which the stream reports naming the VM)."""

from __future__ import annotations

import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import (
    HostUnreachable,
    VceError,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine
from ansible_collections.vce.kvm.plugins.module_utils.engine.console import ConsoleStream

from tests.support.testdriver import URI, environment, image_on_fresh_driver
from tools.cleanup import remove_prefixed


@pytest.fixture
def acme(monkeypatch, tmp_path, ledger_url):
    """Tenant acme's running VM web1 on the test driver (shared by every connection, and
    kept while any is open: what the test made is removed after it)."""
    drivers = image_on_fresh_driver(monkeypatch, tmp_path, ledger_url)
    image = next(drivers, "")
    engine.run_environment({**environment(image), "ledger_url": ledger_url})
    yield
    conn = libvirt.open(URI)
    try:
        for domain in conn.listAllDomains(0):
            if domain.name().startswith(("acme_", "other_")):
                if domain.isActive():
                    domain.destroy()
                domain.undefine()
        for tenant in ("acme", "other"):
            remove_prefixed(conn, f"{tenant}_")
    finally:
        conn.close()
    next(drivers, None)


def refusal(tenant: str, name: str) -> str:
    delivered: list[bytes | None] = []
    stream = ConsoleStream(URI, tenant, name, delivered.append)
    with pytest.raises(VceError) as refused:
        stream.open()
    assert stream.connection is None and stream.stream is None
    assert delivered == []
    return str(refused.value)


def test_another_tenants_vm_is_not_available(acme) -> None:
    conn = libvirt.open(URI)
    try:
        # A domain named with tenant other's prefix but carrying acme's ownership tag.
        xml = conn.lookupByName("acme_web1").XMLDesc(0).replace("acme_web1", "other_web1", 1)
        xml = xml.replace("<uuid>", "<!--", 1).replace("</uuid>", "-->", 1)
        conn.defineXML(xml).create()
        assert refusal("other", "web1") == "vm web1 is not available"
    finally:
        conn.close()


def test_a_stopped_vm_has_no_console(acme) -> None:
    conn = libvirt.open(URI)
    try:
        conn.lookupByName("acme_web1").destroy()
        assert refusal("acme", "web1") == "vm web1 is not running: start it first"
    finally:
        conn.close()


def test_a_missing_vm_and_a_host_without_consoles_are_refused_naming_the_vm(acme) -> None:
    assert refusal("acme", "nope").startswith("the console of vm nope could not be opened: ")
    assert refusal("acme", "web1").startswith("the console of vm web1 could not be opened: ")


def test_a_host_that_cannot_be_reached_is_told_apart(tmp_path) -> None:
    stream = ConsoleStream(f"qemu:///system?socket={tmp_path}/sock", "acme", "web1", print)
    with pytest.raises(
        HostUnreachable,
        match=r"^the console of vm web1 could not be opened: Failed to connect socket",
    ):
        stream.open()
    assert stream.connection is None and stream.stream is None
