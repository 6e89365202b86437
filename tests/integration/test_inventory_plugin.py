"""The dynamic inventory vce.kvm.libvirt_tenants through the real `ansible-inventory`: two
private libvirtd hosts with tenant VMs made by the engine, a ledger with plans, a block and a
public IP; groups and host variables as a user reads them, the cache (served until
--flush-cache), an unreachable host with strict off and on, and bad input."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
import yaml
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.tenant import run_block
from ansible_collections.vce.kvm.plugins.module_utils.ledger import schema as ledger_schema
from ansible_collections.vce.kvm.plugins.module_utils.ledger.store import open_store

from tests.support.ansible_runner import ansible_env
from tests.support.ledger import register
from tools.cleanup import remove_prefixed
from tools.labhost import ensure_pool
from tools.libvirtd import PrivateLibvirtd

pytestmark = pytest.mark.integration
ANSIBLE_INVENTORY = Path(sys.executable).with_name("ansible-inventory")
ANSIBLE_DOC = Path(sys.executable).with_name("ansible-doc")
UNREACHABLE = "qemu+unix:///system?socket=/nonexistent/vce-inventory-test/libvirt-sock"
CLOSED_DB = "postgresql+psycopg://vce@127.0.0.1:9/vce"
# Only a ledger row: nothing on this machine carries or routes the address.
PUBLIC_ADDRESS = "203.0.113.250"


@pytest.fixture(scope="module")
def second_host() -> Iterator[str]:
    """Another KVM host: a second private libvirtd with its own pool."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    base = Path(tempfile.mkdtemp(prefix="vce-inv-", dir="/tmp"))
    daemon = PrivateLibvirtd(base)
    daemon.start()
    try:
        connection = daemon.connect()
        ensure_pool(connection, "default", base / "pool")
        yield daemon.uri
        remove_prefixed(connection, "")
        connection.close()
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def other_tenant(tenant, ledger_url, second_host) -> Iterator[str]:
    """A second tenant on another plan; its objects on the second host removed afterwards."""
    name = f"{tenant}o"
    register(ledger_url, name, plan="gold")
    try:
        yield name
    finally:
        connection = libvirt.open(second_host)
        remove_prefixed(connection, f"{name}_")
        connection.close()


@pytest.fixture
def public_ip_row(ledger_url, tenant, uri) -> Iterator[str]:
    """The ledger's record of a public IP bound to the tenant's VM db on the first host."""
    table = ledger_schema.public_ips
    now = dt.datetime.now(dt.UTC)
    store = open_store(ledger_url)
    with store.read() as connection:
        connection.execute(
            table.insert().values(
                address=PUBLIC_ADDRESS, zone="z1", pool="test", tenant=tenant, name="db-ip",
                host=uri, vm="db", private_ip="", allocated_at=now, updated_at=now,
            )
        )  # fmt: skip
    try:
        yield PUBLIC_ADDRESS
    finally:
        with store.read() as connection:
            connection.execute(table.delete().where(table.c.address == PUBLIC_ADDRESS))


def vm(uri, tenant, name, image, state="stopped", **extra):
    params = {
        "uri": uri, "tenant": tenant, "name": name, "vcpus": 1, "memory_mib": 96,
        "boot_disk": {"image": image, "size_gib": 1}, "state": state, "shutdown_timeout": 2,
        **extra,
    }  # fmt: skip
    result = engine.run_vm(params)
    assert result.changed, result


def source(tmp_path, hosts, name="lab", **options) -> Path:
    path = tmp_path / f"{name}.libvirt_tenants.yml"
    path.write_text(
        yaml.safe_dump({"plugin": "vce.kvm.libvirt_tenants", "hosts": hosts, **options})
    )
    return path


def inventory(path, *extra, env=None):
    proc = subprocess.run(
        [str(ANSIBLE_INVENTORY), "-i", str(path), "--list", *extra],
        capture_output=True,
        text=True,
        env=ansible_env(env),
        timeout=120,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def listed(path, *extra, env=None) -> dict:
    proc = inventory(path, *extra, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout, object_hook=plain)


def plain(value: dict):
    """Host data is never templated (read from the hosts, so untrusted): ansible-inventory
    shows its strings marked as unsafe."""
    return value["__ansible_unsafe"] if set(value) == {"__ansible_unsafe"} else value


def children(data, group) -> set[str]:
    return set(data.get(group, {}).get("children", []))


def members(data, group) -> set[str]:
    return set(data.get(group, {}).get("hosts", []))


def test_tenant_vms_of_two_hosts_with_ledger_and_cache(
    tmp_path, uri, second_host, tenant, other_tenant, ledger_url, subnet, blank_image,
    public_ip_row,
):  # fmt: skip
    lan = {"uri": uri, "tenant": tenant, "name": "lan", "cidr": f"{subnet}.0/24"}
    assert engine.run_network({**lan, "mode": "isolated"}).changed
    nic = [{"network": "lan", "ip": f"{subnet}.10"}]
    vm(uri, tenant, "web", blank_image, nics=nic)
    vm(uri, tenant, "db", blank_image, state="running", nics=[{**nic[0], "ip": f"{subnet}.11"}])
    vm(second_host, tenant, "web", blank_image)
    vm(second_host, other_tenant, "app", blank_image)
    run_block({"uri": uri, "tenant": tenant, "name": "web", "blocked": True, "reason": "test"})

    path = source(
        tmp_path,
        [
            {"name": "kvm-a", "uri": uri, "zone": "z1"},
            {"name": "kvm-b", "uri": second_host, "zone": "z2"},
        ],
        tenants=[tenant, other_tenant],
        ledger_url=ledger_url,
        keyed_groups=[{"key": "vce_plan", "prefix": "plan"}],
        groups={"up": "vce_state == 'running'"},
        cache=True,
        cache_plugin="ansible.builtin.jsonfile",
        cache_connection=str(tmp_path / "cache"),
        cache_timeout=3600,
    )
    started = time.monotonic()
    data = listed(path)
    first_run = time.monotonic() - started
    hostvars = data["_meta"]["hostvars"]
    a, o = tenant.replace("-", "_"), other_tenant.replace("-", "_")
    assert set(hostvars) == {f"{tenant}.db", f"{tenant}.web.kvm-a", f"{tenant}.web.kvm-b",
                             f"{other_tenant}.app"}  # fmt: skip
    assert {f"tenant_{a}", f"tenant_{o}", "zone_z1", "zone_z2", "host_kvm_a", "host_kvm_b"} <= (
        children(data, "vce_vms")
    )
    assert members(data, f"tenant_{a}") == {f"{tenant}.db", f"{tenant}.web.kvm-a",
                                            f"{tenant}.web.kvm-b"}  # fmt: skip
    assert members(data, "zone_z2") == members(data, "host_kvm_b") == {
        f"{tenant}.web.kvm-b", f"{other_tenant}.app",
    }  # fmt: skip
    assert members(data, "plan_gold") == {f"{other_tenant}.app"}
    assert members(data, "up") == {f"{tenant}.db"}

    db = hostvars[f"{tenant}.db"]
    assert db["vce_state"] == "running" and (db["vce_vcpus"], db["vce_memory_mib"]) == (1, 96)
    assert (db["vce_tenant"], db["vce_vm"], db["vce_host"], db["vce_zone"], db["vce_uri"]) == (
        tenant, "db", "kvm-a", "z1", uri,
    )  # fmt: skip
    assert db["vce_private_ips"] == [f"{subnet}.11"]
    assert db["vce_public_ips"] == [public_ip_row] and db["ansible_host"] == public_ip_row
    assert (db["vce_plan"], db["vce_blocked"]) == ("lab", False)
    web = hostvars[f"{tenant}.web.kvm-a"]
    assert (web["vce_state"], web["vce_blocked"]) == ("shutoff", True)
    assert web["vce_public_ips"] == [] and web["ansible_host"] == f"{subnet}.10"
    app = hostvars[f"{other_tenant}.app"]
    assert (app["vce_plan"], app["vce_private_ips"], app["vce_zone"]) == ("gold", [], "z2")
    assert "ansible_host" not in app

    # The VM goes; the cached listing still shows it until the cache is flushed.
    connection = libvirt.open(second_host)
    remove_prefixed(connection, f"{other_tenant}_")
    connection.close()
    started = time.monotonic()
    cached = listed(path)
    cached_run = time.monotonic() - started
    assert f"{other_tenant}.app" in cached["_meta"]["hostvars"]
    flushed = listed(path, "--flush-cache")
    assert f"{other_tenant}.app" not in flushed["_meta"]["hostvars"]
    assert f"{tenant}.db" in flushed["_meta"]["hostvars"]
    print(f"first listing {first_run:.2f} s, from the cache {cached_run:.2f} s")


def test_unreachable_host_strict_off_and_on(tmp_path, uri, tenant, blank_image):
    vm(uri, tenant, "web", blank_image)
    hosts = [{"name": "gone", "uri": UNREACHABLE}, {"name": "here", "uri": uri, "zone": "z1"}]

    lenient = inventory(source(tmp_path, hosts, "lenient", tenants=[tenant]))
    assert lenient.returncode == 0, lenient.stderr
    assert UNREACHABLE in lenient.stderr and "gone" in lenient.stderr
    data = json.loads(lenient.stdout, object_hook=plain)
    assert set(data["_meta"]["hostvars"]) == {f"{tenant}.web"}
    assert "vce_plan" not in data["_meta"]["hostvars"][f"{tenant}.web"]  # no ledger given

    # A ledger nobody answers for (a closed loopback port): the VMs without its variables.
    no_ledger = source(tmp_path, hosts[1:], "noledger", tenants=[tenant], ledger_url=CLOSED_DB)
    proc = inventory(no_ledger)
    assert proc.returncode == 0 and "Failed to read plans and public IPs" in proc.stderr
    web = json.loads(proc.stdout, object_hook=plain)["_meta"]["hostvars"][f"{tenant}.web"]
    assert web["vce_state"] == "shutoff" and "vce_plan" not in web

    strict = source(tmp_path, hosts, "strict", tenants=[tenant], strict=True)
    proc = inventory(strict)
    assert UNREACHABLE in proc.stderr
    assert f"{tenant}.web" not in json.loads(proc.stdout)["_meta"]["hostvars"]
    failing = inventory(strict, env={"ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "1"})
    assert failing.returncode != 0 and UNREACHABLE in failing.stderr


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"hosts": [{"name": "a"}]}, "hosts[0].uri"),
        ({"hosts": [{"name": "a", "uri": "qemu:///system", "zonee": "z"}]}, "hosts[0].zonee"),
        ({"hosts": [{"name": "a b", "uri": "qemu:///system"}]}, "hosts[0].name"),
        (
            {"hosts": [{"name": "a", "uri": "qemu:///x"}, {"name": "a", "uri": "qemu:///y"}]},
            "hosts[].name",
        ),
        ({"hosts": [{"name": "a", "uri": "qemu:///x"}], "tenants": ["Bad_Name"]}, "tenants[0]"),
    ],
)
def test_bad_input_names_the_field(tmp_path, options, named):
    proc = inventory(source(tmp_path, **options))
    assert named in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["_meta"]["hostvars"] == {}


def test_documentation_renders():
    proc = subprocess.run(
        [str(ANSIBLE_DOC), "-t", "inventory", "vce.kvm.libvirt_tenants"],
        capture_output=True,
        text=True,
        env=ansible_env(),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "vce_public_ips" in proc.stdout and "cache_plugin" in proc.stdout
