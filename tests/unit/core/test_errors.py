"""The one place libvirt failures become the engine's errors: a connection that cannot be
opened or was lost is a HostUnreachable (an outage), a daemon that answered and refused is an
ApplyError, and a wrapped failure is still told by its cause. The failures are libvirt's own,
raised by its client library (a socket nothing listens on, the test driver)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import (
    ApplyError,
    HostUnreachable,
    VceError,
    connection_failed,
    host_unreachable,
    libvirt,
    libvirt_action,
)
from ansible_collections.vce.kvm.plugins.module_utils.core.plan import Change, Plan


@pytest.fixture(autouse=True)
def quiet() -> None:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def failure_of(call) -> libvirt.libvirtError:
    with pytest.raises(libvirt.libvirtError) as raised:
        call()
    return raised.value


@pytest.fixture
def no_daemon(tmp_path: Path) -> str:
    """A URI whose daemon is not there: its socket path exists nowhere."""
    return f"qemu:///system?socket={tmp_path}/libvirt-sock"


@pytest.fixture
def test_driver() -> Iterator[object]:
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


def test_a_daemon_that_cannot_be_reached_is_a_failed_connection(no_daemon: str):
    error = failure_of(lambda: libvirt.open(no_daemon))
    assert connection_failed(error, opening=True)
    assert connection_failed(error)  # the same error from a call on a dropped connection
    assert host_unreachable(error)


def test_a_uri_the_client_refuses_is_not_an_outage():
    # Refused by the client library itself, with or without a daemon on this machine (a URI no
    # driver takes is the daemon's answer: tests/integration/test_host_connection.py).
    error = failure_of(lambda: libvirt.open("qemu+nosuch:///system"))
    assert error.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
    assert not connection_failed(error, opening=True)
    assert not host_unreachable(error)


def test_a_refusal_of_a_daemon_that_answered_is_not_an_outage(test_driver):
    error = failure_of(lambda: test_driver.lookupByName("absent"))
    assert not connection_failed(error)
    assert not host_unreachable(error)
    assert not host_unreachable(VceError("refused"))


def test_libvirt_action_maps_a_lost_connection_to_host_unreachable(no_daemon: str, test_driver):
    lost = failure_of(lambda: libvirt.open(no_daemon))
    expected = r"^Failed to list domains on kvm1: Failed to connect socket"
    with pytest.raises(HostUnreachable, match=expected), libvirt_action("list", "domains on kvm1"):
        raise lost
    refused = failure_of(lambda: test_driver.lookupByName("absent"))
    expected = r"^Failed to read domain absent: Domain not found"
    with (
        pytest.raises(ApplyError, match=expected) as raised,
        libvirt_action("read", "domain absent"),
    ):
        raise refused
    assert not isinstance(raised.value, HostUnreachable)


def test_a_change_that_failed_on_a_lost_host_is_told_by_its_cause():
    def first() -> None:
        pass

    def second() -> None:
        raise HostUnreachable("Failed to define domain acme_web: Cannot write data")

    plan = Plan(
        [
            Change("network", "lan", "create", run=first),
            Change("vm", "web", "create", run=second),
        ]
    )
    with pytest.raises(ApplyError) as raised:
        plan.apply()
    assert not isinstance(raised.value, HostUnreachable)
    assert raised.value.applied and host_unreachable(raised.value)
    assert "Cannot write data" in str(raised.value)
