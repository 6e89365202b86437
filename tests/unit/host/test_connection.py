"""How a process on a KVM host reaches the daemon a controller reaches over SSH."""

from __future__ import annotations

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import on_host_uri


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
