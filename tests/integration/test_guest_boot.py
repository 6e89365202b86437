"""The tiny guest boots through the same path users take (an overlay boot disk on a base
image, a NIC with a reserved IP, started by vce.kvm.environment), gets its reserved address,
answers ping from the host, serves HTTP, and opens connections outwards on request: to a
neighbour on its network, never to the host, whose guard answers a tenant only DHCP and DNS."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.host.xml import read_network

from tests.integration.conftest import wait_for
from tests.integration.helpers import domain
from tests.support.ansible_runner import run_module
from tools.attacker import plugged
from tools.libvirtd import PrivateLibvirtd
from tools.tinyguest import console_ip

pytestmark = [pytest.mark.integration, pytest.mark.guest]
BOOT_TIMEOUT = 90  # seconds; ~6 s is usual under TCG, more on a loaded machine
HTTP_TIMEOUT = 30  # seconds from the lease until httpd answers (it starts right after it)
REQUEST_TIMEOUT = 15  # one request; a fetch through the guest may take wget's 5 s and more

# Straight to the guest: a proxy from the environment could neither reach the bridge nor
# show the guest's own address to the server below.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def pings(address: str) -> bool:
    result = subprocess.run(
        ["ping", "-c", "1", "-W", "1", address], capture_output=True, check=False
    )
    return result.returncode == 0


def http_get(url: str) -> tuple[int, str] | None:
    """(status, body) of GET url; None when nothing answers (yet)."""
    try:
        with _direct.open(url, timeout=REQUEST_TIMEOUT) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return None


def guest_environment(uri: str, tenant: str, subnet: str, address: str, image: Path) -> dict:
    """One VM "guest" with the reserved address on an isolated network "lan"."""
    return {
        "uri": uri,
        "tenant": tenant,
        "shutdown_timeout": 10,
        "networks": [{"name": "lan", "cidr": f"{subnet}.0/24", "mode": "isolated"}],
        "vms": [
            {
                "name": "guest",
                "memory_mib": 160,
                "boot_disk": {"image": str(image), "size_gib": 1},
                "nics": [{"network": "lan", "ip": address}],
            }
        ],
    }


def boot(env: dict, libvirtd: PrivateLibvirtd, tenant: str, address: str) -> Path:
    """Start the environment, wait for the guest's lease; return its console log."""
    assert run_module("environment", env)["changed"] is True
    console = Path(libvirtd.log_dir) / "qemu" / f"{tenant}_guest.console.log"

    def leased() -> str | None:
        return console_ip(console.read_text(errors="replace")) if console.exists() else None

    assert wait_for(leased, BOOT_TIMEOUT) == address, console.read_text(errors="replace")[-2000:]
    return console


def test_guest_gets_reserved_ip_and_answers_ping(uri, conn, tenant, subnet, base_image, libvirtd):
    address = f"{subnet}.42"
    env = guest_environment(uri, tenant, subnet, address, base_image)
    console = boot(env, libvirtd, tenant, address)
    assert wait_for(lambda: pings(address), 20), f"{address} does not answer ping"

    env["vms"][0]["state"] = "stopped"
    stopped = run_module("environment", env)
    assert [c["action"] for c in stopped["plan"]] == ["autostart", "stop"]
    assert domain(conn, f"{tenant}_guest").state == "shutoff"
    assert "VCE-GUEST: poweroff" in console.read_text(errors="replace")  # a clean ACPI stop
    assert not pings(address)


@dataclass
class TokenServer:
    """What the test's HTTP server hands out and whom it saw."""

    address: str
    port: int
    token: str
    clients: list[str] = field(default_factory=list)


# An HTTP server answering /token with the token (argv[1]) on address argv[2], port argv[3],
# printing each client's address: a process of its own, so it can run in another namespace.
TOKEN_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        print(self.client_address[0], flush=True)
        found = self.path == "/token"
        body = sys.argv[1].encode() if found else b"no such path"
        self.send_response(200 if found else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass

HTTPServer((sys.argv[2], int(sys.argv[3])), Handler).serve_forever()
"""
SERVER_PORT = 8080


def port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def token_server(address: str, netns: str | None = None) -> Iterator[TokenServer]:
    """An HTTP server on address (in `netns`, else this machine's namespace) answering /token
    with a fresh token and recording each client's address: who connected, as seen from
    outside the guest."""
    found = TokenServer(address, SERVER_PORT, secrets.token_hex(8))
    argv = ["ip", "netns", "exec", netns] if netns else []
    argv += [sys.executable, "-c", TOKEN_SERVER, found.token, address, str(SERVER_PORT)]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: port_open(address, SERVER_PORT), 10), "no HTTP server"
        yield found
    finally:
        server.kill()
        output, _errors = server.communicate(timeout=10)
        found.clients.extend(line for line in output.splitlines() if line)


@contextmanager
def neighbour_server(bridge: str, subnet: str) -> Iterator[TokenServer]:
    """The token server on a neighbour of the guest's network (a namespace plugged into its
    bridge, as another machine on the segment): the guest's outward connections reach it
    without passing the host, which answers a tenant only DHCP and DNS."""
    name = f"vce-nb-{os.getpid()}"
    with (
        plugged(None, bridge, f"{subnet}.50/24", None, name) as neighbour,
        token_server(neighbour.address, neighbour.netns) as server,
    ):
        yield server


def bridge_of(conn: libvirt.virConnect, network: str) -> tuple[str, str]:
    """The bridge of a libvirt network and the host's address on it (its gateway)."""
    xml = conn.networkLookupByName(network).XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
    state = read_network(xml, True, True)
    return state.bridge, str(state.gateway)


def test_guest_serves_http_and_fetches_from_a_neighbour_never_the_host(
    uri, conn, tenant, subnet, base_image, libvirtd
):
    address = f"{subnet}.42"
    env = guest_environment(uri, tenant, subnet, address, base_image)
    console = boot(env, libvirtd, tenant, address)

    # The VM's name is the hostname in its static lease; the guest takes it from DHCP.
    index = wait_for(lambda: http_get(f"http://{address}/"), HTTP_TIMEOUT)
    assert index == (200, f"guest {address}\n"), console.read_text(errors="replace")[-2000:]

    bridge, gateway = bridge_of(conn, f"{tenant}_lan")
    assert gateway == f"{subnet}.1"
    with neighbour_server(bridge, subnet) as server:
        target = f"http://{server.address}:{server.port}/token"
        fetched = http_get(f"http://{address}/cgi-bin/fetch?{target}")
        assert fetched == (200, server.token)

        # A failed fetch is an error status with wget's message, not an empty 200.
        refused = f"http://{address}/cgi-bin/fetch?http://{server.address}:1/"
        status, body = http_get(refused) or (0, "")
        assert status == 502 and "Connection refused" in body, body

        pinged = http_get(f"http://{address}/cgi-bin/ping?{server.address}")
        assert pinged is not None and pinged[0] == 200 and " 0% packet loss" in pinged[1], pinged
    assert server.clients == [address]  # the guest's own address, no NAT in between

    # The host's guard answers a tenant network only DHCP and DNS: its own gateway does not
    # answer ping, and a port the host listens on there is not reached (dropped, not refused).
    with token_server(gateway) as host_server:
        target = f"http://{gateway}:{host_server.port}/token"
        status, body = http_get(f"http://{address}/cgi-bin/fetch?{target}") or (0, "")
        assert status == 502 and host_server.token not in body, body
    assert host_server.clients == []
    unanswered = http_get(f"http://{address}/cgi-bin/ping?{gateway}")
    assert unanswered is not None and " 0% packet loss" not in unanswered[1], unanswered
    # The queries are checked before they reach a command line.
    assert http_get(f"http://{address}/cgi-bin/fetch?http://x;reboot") == (
        400,
        "unexpected character in URL\n",
    )
    assert http_get(f"http://{address}/cgi-bin/ping?{gateway};reboot") == (
        400,
        "query must be an IPv4 address\n",
    )
