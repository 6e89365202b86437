"""The server's one mapping of the engine's errors: a host that cannot be reached is an outage
(503 `host_unavailable` with Retry-After), told scrubbed of every host detail, also when the
engine wrapped it in the failure of a plan; a refusal stays a 409."""

from __future__ import annotations

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import (
    ApplyError,
    HostUnreachable,
    OwnershipError,
    VceError,
    libvirt,
)
from ansible_collections.vce.kvm.plugins.module_utils.core.plan import Change, Plan
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import connect
from ansible_collections.vce.kvm.plugins.module_utils.host.shell import HostShell
from vce_server.errors import HOST_RETRY_AFTER, from_engine
from vce_server.service.fleet import HostPlace, Scrubber

HOST = HostPlace(
    name="kvm1",
    zone="zone-a",
    uri="qemu+ssh://root@127.0.0.1:1/system?command=/srv/serve/ssh/ssh",
    host_command=["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-p", "1", "root@127.0.0.1"],
)
SECRETS = ("127.0.0.1", "root@", "qemu+ssh", "/srv/serve", "kvm1", "-F /dev/null")


@pytest.fixture
def scrub() -> Scrubber:
    return Scrubber([HOST])


def caught(call) -> VceError:
    with pytest.raises(VceError) as raised:
        call()
    return raised.value


def assert_unavailable(answer, scrubbed_start: str) -> None:
    assert (answer.status, answer.code) == (503, "host_unavailable")
    assert answer.headers == {"Retry-After": str(HOST_RETRY_AFTER)}
    assert answer.message.startswith("the zone's host cannot be reached now, retry after ")
    assert scrubbed_start in answer.message, answer.message
    assert not [secret for secret in SECRETS if secret in answer.message], answer.message


def test_libvirt_that_cannot_be_reached_over_ssh_is_a_scrubbed_503():
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    # The record's URI with ssh's own command: nothing listens on port 1, ssh fails at once.
    uri = HOST.uri.replace("command=/srv/serve/ssh/ssh", "command=/usr/bin/ssh")
    host = HostPlace(HOST.name, HOST.zone, uri, HOST.host_command)
    error = caught(lambda: connect(uri))
    assert isinstance(error, HostUnreachable)
    answer = from_engine(error, Scrubber([host]))
    assert_unavailable(answer, "Failed to connect to libvirt at zone zone-a: ")
    assert "/usr/bin/ssh" not in answer.message


def test_an_ssh_host_command_that_cannot_connect_is_a_scrubbed_503(scrub):
    shell = HostShell(HOST.host_command)
    error = caught(lambda: shell.run(["nft", "list", "ruleset"], "list", "the guard table"))
    assert_unavailable(from_engine(error, scrub), "Failed to list the guard table: ssh: ")


def test_a_change_that_failed_on_a_lost_host_is_a_503_naming_what_was_applied(scrub):
    def lose_the_host() -> None:
        raise HostUnreachable(f"Failed to define domain acme_web on {HOST.uri}: Cannot write")

    plan = Plan(
        [
            Change("network", "lan", "create", run=lambda: None),
            Change("vm", "web", "create", run=lose_the_host),
        ]
    )
    error = caught(plan.apply)
    assert isinstance(error, ApplyError)  # the plan's failure, raised from the lost host
    answer = from_engine(error, scrub)
    assert_unavailable(answer, "Failed to define domain acme_web on zone zone-a: Cannot write")
    assert "applied before the failure: 1 of 2 changes: network lan create" in answer.message


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (VceError(f"vm web is blocked on {HOST.uri}"), 409, "refused"),
        (ApplyError("Failed to define domain acme_web: XML error"), 409, "refused"),
        (OwnershipError("network acme_lan belongs to another tenant"), 409, "conflict"),
    ],
)
def test_a_refusal_stays_a_409_without_retry_after(scrub, error, status, code):
    answer = from_engine(error, scrub)
    assert (answer.status, answer.code, answer.headers) == (status, code, {})
    assert "127.0.0.1" not in answer.message
