"""Run a vce.kvm module through the real `ansible` command and return its result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = Path(sys.executable).with_name("ansible")
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")


def ansible_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_STDOUT_CALLBACK": "vce_test_result",
            "ANSIBLE_CALLBACK_PLUGINS": str(Path(__file__).with_name("callback")),
            "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
            "ANSIBLE_LOCALHOST_WARNING": "0",
        }
    )
    env.update(extra or {})
    return env


def run_module(
    module: str, args: dict[str, Any], check: bool = False, diff: bool = False, timeout: int = 300
) -> dict[str, Any]:
    """One module call on localhost; returns the module's result dict (with 'failed' if so)."""
    cmd = [
        str(ANSIBLE), "localhost", "-i", "localhost,", "-c", "local",
        "-m", f"vce.kvm.{module}", "-a", json.dumps(args),
    ]  # fmt: skip
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=ansible_env(),
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    results = task_results(proc.stdout)
    if len(results) != 1:
        raise AssertionError(f"expected one result:\n{proc.stdout}\n{proc.stderr}")
    result = results[0]
    result["failed"] = result["_status"] == "failed"
    result["_stderr"] = proc.stderr
    return result


def task_results(stdout: str) -> list[dict[str, Any]]:
    """The JSON lines the vce_test_result callback printed."""
    results = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            results.append(json.loads(line))
    return results
