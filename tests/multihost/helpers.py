"""What the multi-host tests share beyond fixtures: booting guests on a lab host, running a
module on one over Ansible's SSH connection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.ansible_runner import ANSIBLE, ROOT, ansible_env, task_results
from tools.multihost import LabHost

BOOT_TIMEOUT = 90  # seconds; the tiny guest answers after ~7 s under TCG


@contextmanager
def console_logs_on(host: LabHost) -> Iterator[None]:
    """VMs defined inside the block log their console where the host's libvirtd can write."""
    previous = os.environ.get("VCE_CONSOLE_LOG_DIR")
    os.environ["VCE_CONSOLE_LOG_DIR"] = str(host.log_dir / "qemu")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("VCE_CONSOLE_LOG_DIR", None)
        else:
            os.environ["VCE_CONSOLE_LOG_DIR"] = previous


def wait_until_answers(host: LabHost, ip: str) -> None:
    """Ping `ip` from inside the host until it answers (the guest has booted), bounded.

    At the host's console (ip netns exec), not over SSH: a boot wait, not what a test checks,
    and a session per try would only slow it down."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    while host.run(["ping", "-c", "1", "-W", "1", ip]).returncode != 0:
        assert time.monotonic() < deadline, f"{ip} did not answer on {host.name}"
        time.sleep(1)


def run_module_on(host: LabHost, module: str, args: dict[str, Any]) -> dict[str, Any]:
    """One module call on the lab host itself, as a playbook of the zones inventory runs it:
    Ansible connects over SSH (the lab's key, the host key pinned), the module runs on the
    host and reaches libvirt through the host's qemu+ssh URI. The controller's environment
    stays behind: pass ledger_url in args."""
    with tempfile.TemporaryDirectory() as directory:
        inventory = Path(directory) / "hosts.json"
        hosts = {host.name: host.ansible_vars(sys.executable)}
        inventory.write_text(json.dumps({"all": {"hosts": hosts}}))
        cmd = [str(ANSIBLE), host.name, "-i", str(inventory), "-m", f"vce.kvm.{module}",
               "-a", json.dumps(args)]  # fmt: skip
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=ansible_env(), cwd=ROOT, timeout=300,
            check=False,
        )  # fmt: skip
    results = task_results(proc.stdout)
    assert len(results) == 1, f"expected one result:\n{proc.stdout}\n{proc.stderr}"
    result = results[0]
    result["failed"] = result["_status"] == "failed"
    return result


def guest_pings(host: LabHost, guest: str, target: str) -> bool:
    """Ask the guest (over HTTP from its own host) to ping target: real guest-to-guest packets."""
    url = f"http://{guest}/cgi-bin/ping?{target}"
    code = (
        f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
    )
    for _try in range(3):
        proc = host.ssh([sys.executable, "-c", code], timeout=30)
        if proc.returncode == 0 and " 0% packet loss" in proc.stdout:
            return True
    return False
