"""The tiny guest boots through the same path users take (an overlay boot disk on a base
image, a NIC with a reserved IP, started by vce.kvm.environment), gets its reserved address,
and answers ping from the host."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import wait_for
from tests.integration.helpers import domain
from tests.support.ansible_runner import run_module
from tools.tinyguest import console_ip

pytestmark = [pytest.mark.integration, pytest.mark.guest]
BOOT_TIMEOUT = 90  # seconds; ~6 s is usual under TCG, more on a loaded machine


def pings(address: str) -> bool:
    result = subprocess.run(
        ["ping", "-c", "1", "-W", "1", address], capture_output=True, check=False
    )
    return result.returncode == 0


def test_guest_gets_reserved_ip_and_answers_ping(uri, conn, tenant, subnet, base_image, libvirtd):
    address = f"{subnet}.42"
    env = {
        "uri": uri,
        "tenant": tenant,
        "shutdown_timeout": 10,
        "networks": [{"name": "lan", "cidr": f"{subnet}.0/24", "mode": "isolated"}],
        "vms": [
            {
                "name": "guest",
                "memory_mib": 160,
                "boot_disk": {"image": str(base_image), "size_gib": 1},
                "nics": [{"network": "lan", "ip": address}],
            }
        ],
    }
    assert run_module("environment", env)["changed"] is True
    console = Path(libvirtd.log_dir) / "qemu" / f"{tenant}_guest.console.log"

    def leased() -> str | None:
        return console_ip(console.read_text(errors="replace")) if console.exists() else None

    assert wait_for(leased, BOOT_TIMEOUT) == address, console.read_text(errors="replace")[-2000:]
    assert wait_for(lambda: pings(address), 20), f"{address} does not answer ping"

    env["vms"][0]["state"] = "stopped"
    stopped = run_module("environment", env)
    assert [c["action"] for c in stopped["plan"]] == ["autostart", "stop"]
    assert domain(conn, f"{tenant}_guest").state == "shutoff"
    assert "VCE-GUEST: poweroff" in console.read_text(errors="replace")  # a clean ACPI stop
    assert not pings(address)
