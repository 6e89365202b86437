"""How a process on a KVM host reaches the daemon a controller reaches over SSH."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import (
    HostUnreachable,
    VceError,
    libvirt,
)
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import (
    connect,
    domain_type,
    on_host_uri,
)
from ansible_collections.vce.kvm.plugins.module_utils.host.shell import HostShell


@pytest.mark.parametrize(
    ("uri", "on_host"),
    [
        ("qemu+ssh://root@kvm1.example/system", "qemu:///system"),
        (
            "qemu+ssh://root@172.30.2.10/system?socket=/srv/lab/kvm-a/run/libvirt-sock"
            "&command=/srv/serve/ssh/ssh",
            "qemu:///system?socket=/srv/lab/kvm-a/run/libvirt-sock",
        ),
        (
            "qemu+libssh2://kvm1:2222/system?keyfile=/k&known_hosts=/kh&known_hosts_verify=normal",
            "qemu:///system",
        ),
        ("qemu:///system", None),
        ("qemu+tcp://10.0.0.3/system", None),
        ("test:///default", None),
    ],
)
def test_an_ssh_uri_loses_its_transport_on_the_host(uri, on_host):
    assert on_host_uri(uri) == on_host


@pytest.fixture
def remote(tmp_path):
    """Stand-ins for a host command to a host with and without a hardware module loaded:
    the probe's words arrive as ssh's remote side gets them, and `answer` is its exit."""

    def shell(answer: int) -> HostShell:
        path = tmp_path / f"ssh{answer}" / "ssh"
        path.parent.mkdir()
        path.write_text(f'#!/bin/sh\necho "$2" > {path}.asked\nexit {answer}\n')
        path.chmod(0o755)
        return HostShell([str(path), "root@kvm1"])

    return shell


def test_a_remote_host_s_domain_type_is_asked_of_the_host(remote, monkeypatch):
    monkeypatch.delenv("VCE_DOMAIN_TYPE", raising=False)
    conn = libvirt.open("test:///default")
    try:
        with_module, without = remote(0), remote(1)
        assert domain_type(conn, "qemu+ssh://kvm1/system", False, with_module) == "kvm"
        assert domain_type(conn, "qemu+ssh://kvm1/system", False, without) == "qemu"
    finally:
        conn.close()
    asked = Path(f"{with_module.prefix[0]}.asked").read_text()
    assert "/sys/module/kvm_intel" in asked and "/sys/module/kvm_amd" in asked


def test_a_daemon_that_does_not_answer_is_an_unreachable_host(tmp_path):
    uri = f"qemu:///system?socket={tmp_path}/libvirt-sock"
    with pytest.raises(HostUnreachable) as raised:
        connect(uri)
    assert str(raised.value).startswith(f"Failed to connect to libvirt at {uri}: Failed to")


def test_a_uri_with_an_unknown_transport_is_refused_not_unreachable():
    with pytest.raises(VceError, match="transport in URL not recognised") as raised:
        connect("qemu+nosuch:///system")
    assert not isinstance(raised.value, HostUnreachable)
