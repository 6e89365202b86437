"""The control plane's own SSH identity for a multi-host lab, and host records that reach the
lab's hosts through it, as an operator sets up `vce serve` for KVM hosts over SSH.

The server never uses the operator's (the lab controller's) key: it gets a key of its own,
authorized on every host, a copy of the lab's pinned known_hosts, an ssh_config of its own
(StrictHostKeyChecking yes) and an `ssh` wrapper that uses that config. The host records name
the wrapper: in the URI's `command` parameter (libvirt over qemu+ssh) and as the program of
the host command (nft, ip, systemd, the backup units' files)."""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.host import run_host

from tools.multihost import LabHost, MultiHostLab, keygen, ssh_config, write_private

KEY = "id_ed25519"


@dataclass(frozen=True)
class SshIdentity:
    """A directory holding a client's key, known_hosts, ssh_config and `ssh` wrapper."""

    directory: Path

    @property
    def ssh(self) -> Path:
        return self.directory / "ssh"

    @property
    def key(self) -> Path:
        return self.directory / KEY

    def public_key(self) -> str:
        return (self.directory / f"{KEY}.pub").read_text().strip()

    def uri(self, host: LabHost) -> str:
        """The host's libvirt over SSH through this identity's wrapper."""
        return f"qemu+ssh://root@{host.mgmt_ip}/system?socket={host.socket_path}&command={self.ssh}"

    def host_command(self, host: LabHost) -> list[str]:
        return [str(self.ssh), f"root@{host.mgmt_ip}"]


def server_identity(directory: Path, lab: MultiHostLab) -> SshIdentity:
    """A new key for the server in `directory` (created), authorized on every lab host, with
    the lab's host keys pinned: what an operator sets up for the service's user."""
    directory.mkdir(mode=0o700, parents=True)
    identity = SshIdentity(directory)
    keygen(identity.key, "vce-serve@control-plane")
    shutil.copyfile(lab.ssh_dir / "known_hosts", directory / "known_hosts")
    (directory / "known_hosts").chmod(0o600)
    write_private(directory / "ssh_config", ssh_config(directory))
    identity.ssh.write_text(
        "#!/bin/sh\n# ssh as the control plane: its own key and config, the hosts pinned.\n"
        f'exec /usr/bin/ssh -F {shlex.quote(str(directory / "ssh_config"))} "$@"\n'
    )
    identity.ssh.chmod(0o700)
    lab.authorize(identity.public_key())
    return identity


def register_over_ssh(
    ledger_url: str, host: LabHost, identity: SshIdentity, settings: Mapping[str, str]
) -> None:
    """The host's record as the kvm_host role registers it for a control plane that reaches
    it over SSH (the registration itself reads the host's capacity through that URI)."""
    run_host(
        {
            "ledger_url": ledger_url,
            "name": host.name,
            "zone": host.zone,
            "uri": identity.uri(host),
            "host_command": identity.host_command(host),
            **settings,
        }
    )
