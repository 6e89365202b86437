"""Host commands through a prefix: argv reaches the host word for word, also through ssh,
whose remote side runs one shell line."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import ApplyError
from ansible_collections.vce.kvm.plugins.module_utils.host.shell import HostShell

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
