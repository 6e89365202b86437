"""Host commands through a prefix: argv reaches the host word for word, also through ssh,
whose remote side runs one shell line."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import (
    ApplyError,
    HostUnreachable,
)
from ansible_collections.vce.kvm.plugins.module_utils.host.shell import HostShell

# The real ssh to a loopback port nothing listens on: ssh itself fails, with its exit 255.
UNREACHABLE = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
               "-p", "1", "root@127.0.0.1"]  # fmt: skip
TRICKY = ["printf", "%s|", "a b", "c;d", "$HOME", "'q'", "*"]


@pytest.fixture
def ssh(tmp_path: Path) -> Path:
    """A stand-in named `ssh` that does what ssh's remote side does with its words: join
    them with spaces and give the line to a shell."""
    path = tmp_path / "ssh"
    path.write_text('#!/bin/sh\nshift\nexec sh -c "$*"\n')
    path.chmod(0o755)
    return path


def test_through_ssh_every_word_arrives_as_it_was(ssh: Path):
    assert HostShell([str(ssh), "root@kvm1"]).run(TRICKY, "read", "x") == "a b|c;d|$HOME|'q'|*|"


def test_a_prefix_that_is_not_ssh_gets_the_words_themselves():
    assert HostShell(["env"]).run(TRICKY, "read", "x") == "a b|c;d|$HOME|'q'|*|"
    assert HostShell().command(["ls", "a b"]) == ["ls", "a b"]


def test_a_failure_names_the_action_and_the_object(ssh: Path):
    with pytest.raises(ApplyError, match=r"Failed to list the table: .*exited 3"):
        HostShell([str(ssh), "root@kvm1"]).run(["sh", "-c", "exit 3"], "list", "the table")


def test_an_ssh_that_cannot_connect_is_an_unreachable_host():
    shell = HostShell(UNREACHABLE)
    with pytest.raises(HostUnreachable, match=r"^Failed to list the table: ssh: .*refused"):
        shell.run(["nft", "list", "ruleset"], "list", "the table")
    # A question the host could not be asked has no answer: not a "no".
    with pytest.raises(HostUnreachable, match=r"^Failed to ask the host \(test\): ssh: "):
        shell.succeeds(["test", "-d", "/sys/module/kvm_intel"])


def test_an_exit_255_of_a_prefix_that_is_not_ssh_is_the_command_s_own_failure():
    with pytest.raises(ApplyError, match="exited 255") as raised:
        HostShell(["env"]).run(["sh", "-c", "exit 255"], "list", "the table")
    assert not isinstance(raised.value, HostUnreachable)
    assert not HostShell(["env"]).succeeds(["sh", "-c", "exit 255"])
