"""docs/api.md's examples work: every ```sh block that calls curl runs, in the doc's order in
one shell, against a real `vce serve` with $VCE_API and $VCE_TOKEN set, as a customer would
paste them. `curl -fsS` makes any HTTP status of 400 or more fail its block."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.server.conftest import Fleet
from tests.support.server import Server, create_token

pytestmark = pytest.mark.server

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)
CURL = re.compile(r"\bcurl\b(?P<options>[^\n]*)")
SECONDS = 90
# What the doc names that the test's fleet names otherwise.
DOC_IMAGE = "debian-12"
DOC_SUBNET = "10.10.0."
DOC_TENANT = "acme"
# A range of this test's own (the server tier's counter starts at 10.214.1 in every process,
# and bridges are the host's: two test processes at once would collide), varied by process.
SUBNET = f"10.243.{os.getpid() % 250}"
MARK = "### docs/api.md line "


def examples() -> list[tuple[int, str]]:
    """(line, text) of every ```sh block of the doc that calls curl."""
    text = DOC.read_text()
    return [
        (text.count("\n", 0, match.start()) + 2, match.group(1))
        for match in BLOCK.finditer(text)
        if CURL.search(match.group(1))
    ]


def script(fleet: Fleet, tenant: str, subnet: str) -> str:
    """The examples as one bash script: stops at the first failing command, and says which
    block it was in."""
    parts = ["set -euo pipefail"]
    for line, text in examples():
        text = text.replace(DOC_IMAGE, fleet.image).replace(DOC_SUBNET, f"{subnet}.")
        text = re.sub(rf"\b{DOC_TENANT}\b", tenant, text)
        parts += [f"echo '{MARK}{line}' >&2", text]
    parts.append("echo '### every example ran' >&2")
    return "\n".join(parts) + "\n"


def failed_actions(server: Server, token: str) -> list[dict]:
    """What went wrong in the actions the examples started (an example only sees a status)."""
    with server.client(token) as client:
        listed = client.get("/v1/actions", params={"status": "failed"}).json()
    return [
        {key: action[key] for key in ("target", "error")} for action in listed.get("actions", [])
    ]


def test_the_doc_has_examples_and_each_curl_fails_on_an_http_error() -> None:
    found = examples()
    assert len(found) >= 10, found
    lax = [
        f"line {line}: curl{match.group('options')}"
        for line, text in found
        for match in CURL.finditer(text)
        if "-fsS" not in match.group("options").split()
    ]
    assert not lax, "every example's curl needs -fsS (a failed call must fail the test)"


def test_every_curl_example_runs_against_a_real_server(
    fleet: Fleet,
    server: Server,
    new_tenant: Callable[..., str],
    tmp_path: Path,
) -> None:
    missing = [tool for tool in ("bash", "curl", "jq") if shutil.which(tool) is None]
    assert not missing, f"the doc's examples need {', '.join(missing)} (Debian packages)"
    tenant = new_tenant(fleet, vms=10)
    token = create_token(fleet.ledger_url, tenant)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "VCE_API": server.url,
        "VCE_TOKEN": token,
        "VCE_OPERATOR_TOKEN": create_token(fleet.ledger_url, None),
    }
    done = subprocess.run(
        ["bash", "-c", script(fleet, tenant, SUBNET)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SECONDS,
        check=False,
    )
    marks = [line for line in done.stderr.splitlines() if line.startswith("###")]
    assert done.returncode == 0, (
        f"the example at {marks[-1] if marks else 'the start'} failed:\n"
        f"{done.stderr[-3000:]}\nstdout:\n{done.stdout[-2000:]}\n"
        f"the tenant's failed actions: {failed_actions(server, token)}"
    )
    assert marks[-1] == "### every example ran"
