"""The dependency rule of docs/architecture.md, read from the imports themselves: the engine's
packages import only to their left, and the control plane reaches the engine and the ledger
through its service layer alone, never the host package; the Pulumi provider is a client of the
control plane's API and imports neither."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UTILS = ROOT / "plugins" / "module_utils"
SERVER = ROOT / "server" / "vce_server"
PROVIDER = ROOT / "pulumi" / "provider" / "pulumi_resource_vce"
ENGINE_PREFIX = "ansible_collections.vce.kvm.plugins.module_utils."
# Each package of module_utils and what it may import of ours.
MAY_IMPORT = {
    "core": set(),
    "host": {"core"},
    "ledger": {"core", "host"},
    "finance": {"core", "host", "ledger"},
    "runner": {"core", "host", "ledger"},
    "engine": {"core", "host", "ledger", "finance", "runner"},
}


def imported(path: Path) -> list[str]:
    """Every module a file imports: dotted names, and relative imports as paths."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = path.parent
            for _step in range(node.level - 1):
                base = base.parent
            found.append(f"{base}/{(node.module or '').replace('.', '/')}")
        elif isinstance(node, ast.ImportFrom):
            found.append(node.module or "")
    return found


def utils_package_of(target: str) -> str | None:
    """The module_utils package an import names (a relative path or a dotted name), if any."""
    if target.startswith(ENGINE_PREFIX):
        return target[len(ENGINE_PREFIX) :].split(".")[0]
    if target.startswith(str(UTILS) + "/"):
        return target[len(str(UTILS)) + 1 :].split("/")[0]
    return None


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_module_utils_packages_import_only_to_their_left(package):
    wrong = []
    for path in sorted((UTILS / package).rglob("*.py")):
        for target in imported(path):
            other = utils_package_of(target)
            if other and other != package and other not in MAY_IMPORT[package]:
                wrong.append(f"{path.relative_to(ROOT)} imports {other}")
    assert not wrong


def test_the_server_reaches_the_engine_through_its_service_layer_only():
    wrong = []
    for path in sorted(SERVER.rglob("*.py")):
        layer = path.relative_to(SERVER).parts[0]
        for target in imported(path):
            other = utils_package_of(target)
            if other is None:
                continue
            if other == "host":
                wrong.append(f"{path.relative_to(ROOT)} imports host (below the engine)")
            elif layer != "service" and other in ("engine", "finance"):
                wrong.append(f"{path.relative_to(ROOT)} imports {other} outside service/")
    assert not wrong


def test_the_pulumi_provider_is_a_client_of_the_api_only():
    """What runs on a customer's machine holds an endpoint and a token: no engine, ledger or
    server code to reach hosts with."""
    wrong = [
        f"{path.relative_to(ROOT)} imports {target}"
        for path in sorted(PROVIDER.rglob("*.py"))
        for target in imported(path)
        if target.startswith(("ansible_collections", "vce_server", "libvirt", "sqlalchemy"))
    ]
    assert not wrong


def test_the_reading_sees_relative_and_absolute_imports():
    facade = {utils_package_of(t) for t in imported(UTILS / "engine" / "facade.py")}
    server = {utils_package_of(t) for t in imported(SERVER / "errors.py")}
    assert {"core", "host", "ledger"} <= facade
    assert "core" in server
