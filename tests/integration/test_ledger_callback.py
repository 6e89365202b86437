"""The vce.kvm.ledger callback in real ansible-playbook runs against the private libvirtd: each
run and the usage changes of its modules land in the ledger (SQLite and PostgreSQL) once; a
failed run says so; an unwritable ledger never fails the playbook and its records wait in the
spool until replayed."""

from __future__ import annotations

import json
import subprocess

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import runs, usage_intervals
from ansible_collections.vce.kvm.plugins.module_utils.ledger.spool import replay
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.integration.helpers import domain, volume
from tests.support.ansible_runner import ANSIBLE_PLAYBOOK, ROOT, ansible_env, task_results
from tests.support.images import register_image
from tests.support.ledger import register

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


def run_playbook(playbook, ledger_url, spool_dir, timeout=240):
    """ansible-playbook with the repository's ansible.cfg (which enables the callback); the
    callback's ledger is `ledger_url`. Returns (process, task results)."""
    env = ansible_env({"VCE_LEDGER_URL": ledger_url, "VCE_LEDGER_SPOOL": str(spool_dir)})
    env.pop("VCE_RUN_ID", None)
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(playbook)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    return proc, task_results(proc.stdout)


def write_playbook(path, tasks, play_environment=None):
    play = {"hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": tasks}
    if play_environment:
        play["environment"] = play_environment
    path.write_text(json.dumps([play], indent=2))  # JSON is YAML
    return path


def table(url, which):
    with Ledger.open(url).store.read() as connection:
        return connection.execute(sa.select(which).order_by(which.c.started_at)).fetchall()


def environment_task(uri, ledger_url, tenant, subnet, image):
    args = {
        "uri": uri, "tenant": tenant, "shutdown_timeout": 1,
        "networks": [{"name": "lan", "cidr": f"{subnet}.0/24", "mode": "isolated"}],
        "disks": [{"name": "data1", "size_gib": 1}],
        "vms": [{
            "name": "web1", "vcpus": 1, "memory_mib": 64, "state": "stopped",
            "boot_disk": {"image": image, "size_gib": 1}, "disks": ["data1"],
            "nics": [{"network": "lan", "ip": f"{subnet}.10"}],
        }],
    }  # fmt: skip
    if ledger_url:
        args["ledger_url"] = ledger_url
    return {"name": "environment", "vce.kvm.environment": args}


def test_runs_and_usage_are_recorded_once(
    tmp_path, any_ledger_url, uri, conn, tenant, subnet, blank_image, blank_image_path
):
    register(any_ledger_url, tenant)
    register_image(any_ledger_url, blank_image_path, name=blank_image)
    playbook = write_playbook(
        tmp_path / "site.yml",
        [
            environment_task(uri, any_ledger_url, tenant, subnet, blank_image),
            {
                "name": "run id as modules see it",
                "ansible.builtin.command": "printenv VCE_RUN_ID",
                "changed_when": False,
            },
        ],
    )
    proc, results = run_playbook(playbook, any_ledger_url, tmp_path / "spool")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]: vce.kvm.ledger" not in proc.stderr, proc.stderr
    assert results[0]["changed"] is True and results[0]["usage_changes"], results[0]

    (first,) = table(any_ledger_url, runs)
    assert (first.source, first.result) == ("ansible", "ok") and first.ended_at is not None
    assert results[1]["stdout"] == first.id  # the modules ran under the callback's run id
    detail = json.loads(first.detail)
    assert detail["playbook"] == str(playbook) and detail["check_mode"] is False
    assert detail["hosts"] == {
        "localhost": {"ok": 2, "changed": 1, "failures": 0, "unreachable": 0, "skipped": 0}
    }
    assert detail["usage_changes"] == {"recorded": 2, "spooled": 0, "invalid": 0}

    usage = {(r.kind, r.name): r for r in table(any_ledger_url, usage_intervals)}
    assert set(usage) == {("vm", "web1"), ("disk", "data1")}
    vm, boot = domain(conn, f"{tenant}_web1"), volume(conn, "default", f"{tenant}_web1.boot.qcow2")
    row = usage[("vm", "web1")]
    assert (row.tenant, row.host, row.state, row.vm) == (tenant, uri, "stopped", "web1")
    assert (row.vcpus, row.ram_mib, row.disk_mib) == (
        vm.vcpus,
        vm.memory_mib,
        boot["capacity"] // MIB,
    )
    assert (row.run_id, row.source, row.ended_at) == (first.id, "run", None)
    data = usage[("disk", "data1")]
    size = volume(conn, "default", f"{tenant}_data1.qcow2")["capacity"] // MIB
    assert (data.state, data.vm, data.disk_mib, data.vcpus) == ("present", "web1", size, 0)

    proc, results = run_playbook(playbook, any_ledger_url, tmp_path / "spool")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results[0]["changed"] is False and results[0]["usage_changes"] == []
    assert {(r.kind, r.name) for r in table(any_ledger_url, usage_intervals)} == set(usage)
    first_again, second = table(any_ledger_url, runs)
    assert first_again.id == first.id and second.id != first.id and second.result == "ok"
    assert json.loads(second.detail)["hosts"]["localhost"]["changed"] == 0
    assert not (tmp_path / "spool").exists()  # nothing ever waited


def test_a_failing_task_makes_a_failed_run(tmp_path, any_ledger_url):
    playbook = write_playbook(
        tmp_path / "fails.yml",
        [
            {"name": "fine", "ansible.builtin.debug": {"msg": "ok"}},
            {"name": "boom", "ansible.builtin.fail": {"msg": "boom"}},
        ],
    )
    proc, results = run_playbook(playbook, any_ledger_url, tmp_path / "spool")
    assert proc.returncode == 2 and results[-1]["_status"] == "failed", proc.stdout
    (row,) = table(any_ledger_url, runs)
    assert row.result == "failed" and row.ended_at is not None
    stats = json.loads(row.detail)["hosts"]["localhost"]
    assert (stats["ok"], stats["failures"]) == (1, 1)


def test_an_unwritable_ledger_spools_and_the_spool_replays(tmp_path, any_ledger_url, uri, tenant):
    register(any_ledger_url, tenant)
    (tmp_path / "a-file").write_text("")
    unwritable = f"sqlite:///{tmp_path / 'a-file' / 'ledger.sqlite3'}"
    spool_dir = tmp_path / "spool"
    # Templated as playbooks write them: the callback checks the changes against the values.
    disk = {"uri": f"{{{{ '{uri}' }}}}", "tenant": f"{{{{ '{tenant}' }}}}", "name": "{{ item }}"}
    disk["size_gib"] = 1
    # The modules reach the good ledger (the play's environment); the callback cannot.
    playbook = write_playbook(
        tmp_path / "disks.yml",
        [{"name": "disks", "vce.kvm.disk": disk, "loop": ["data1", "data2"]}],
        play_environment={"VCE_LEDGER_URL": any_ledger_url},
    )
    proc, results = run_playbook(playbook, unwritable, spool_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results[0]["changed"] is True, results[0]
    assert proc.stderr.count("cannot write to the ledger at") == 1, proc.stderr  # warned once
    assert "vce ledger record --spool" in proc.stderr and "Traceback" not in proc.stderr

    (spooled,) = spool_dir.glob("*.jsonl")
    header, *lines = [json.loads(line) for line in spooled.read_text().splitlines()]
    assert header == {"vce_spool": 1}
    assert [(line["type"], line.get("event")) for line in lines] == [
        ("run", "start"), ("usage", None), ("usage", None), ("run", "finish"),
    ]  # fmt: skip
    assert {line["url"] for line in lines} == {unwritable}
    assert {(line["change"]["name"], line["change"]["tenant"]) for line in lines[1:3]} == {
        ("data1", tenant), ("data2", tenant),
    }  # fmt: skip
    # The modules wrote their usage ahead into the ledger they reach: the spooled copies find
    # it there by key, and the replay brings the run's record.
    assert len(table(any_ledger_url, usage_intervals)) == 2

    assert replay(spooled, lambda _url: Ledger.open(any_ledger_url)) == (0, 0)
    assert not spooled.exists()
    usage = table(any_ledger_url, usage_intervals)
    assert sorted((r.kind, r.name, r.disk_mib, r.run_id) for r in usage) == [
        ("disk", "data1", 1024, lines[0]["run_id"]),
        ("disk", "data2", 1024, lines[0]["run_id"]),
    ]
    (run,) = table(any_ledger_url, runs)
    assert (run.id, run.result) == (lines[0]["run_id"], "ok")
    assert json.loads(run.detail)["usage_changes"]["spooled"] == 2
    # Written once: the same spool replayed again adds nothing.
    spooled.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert replay(spooled, lambda _url: Ledger.open(any_ledger_url)) == (0, 0)
    assert len(table(any_ledger_url, usage_intervals)) == 2


def test_a_debug_task_printing_usage_changes_writes_nothing(tmp_path, any_ledger_url):
    """The hostile-tenant review's playbook: any task's result could bill any tenant."""
    claimed = [{
        "tenant": "victim", "host": "qemu:///system", "kind": "vm", "name": "web",
        "action": "created", "at": "2026-11-01T00:00:00+05:00", "state": "running",
        "vm": "web", "vcpus": 100000000, "ram_mib": 0, "disk_mib": 0,
    }]  # fmt: skip
    playbook = write_playbook(
        tmp_path / "bill.yml",
        [
            {"name": "claim", "ansible.builtin.set_fact": {"usage_changes": claimed}},
            {"name": "print", "ansible.builtin.debug": {"var": "usage_changes"}},
            {
                "name": "print again",
                "ansible.builtin.debug": {"var": "usage_changes"},
                "loop": [1, 2],
            },
        ],
    )
    proc, results = run_playbook(playbook, any_ledger_url, tmp_path / "spool")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results[1]["usage_changes"][0]["tenant"] == "victim"  # printed, as the review saw
    assert "[WARNING]: vce.kvm.ledger" not in proc.stderr, proc.stderr
    assert table(any_ledger_url, usage_intervals) == []
    (run,) = table(any_ledger_url, runs)
    assert json.loads(run.detail)["usage_changes"] == {"recorded": 0, "spooled": 0, "invalid": 0}
