"""Benchmark stdout callback: one JSON line per task result and one for the play recap.

Only what the benchmark reads is printed (status, changed, item, the size of a vce.kvm plan),
so the callback costs no more than the default one.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: bench_json
type: stdout
short_description: One JSON line per task result, for the vce.kvm benchmark
description: Prints each task and loop-item result, and the recap, as JSON lines.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "bench_json"

    def __init__(self) -> None:
        super().__init__()
        self._task_started = 0.0

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._task_started = time.time()

    def _emit(self, event: str, result: Any, status: str) -> None:
        data = result._result
        payload: dict[str, Any] = {
            "event": event,
            "task": result._task.get_name(),
            "status": status,
            "changed": bool(data.get("changed", False)),
            # wall-clock stamps: the benchmark splits a run into before/in/after its tasks
            "t_start": self._task_started,
            "t_end": time.time(),
        }
        if event == "item":
            payload["item"] = str(self._get_item_label(data))
        if "results" in data:
            payload["items"] = len(data["results"])
        if isinstance(data.get("plan"), list):
            payload["plan"] = [
                f"{c.get('kind')}:{c.get('name')}:{c.get('action')}" for c in data["plan"]
            ]
        if "change_reason" in data:
            payload["change_reason"] = data["change_reason"]
        if status in ("failed", "unreachable"):
            payload["msg"] = str(data.get("msg", ""))[:2000]
        self._display.display(json.dumps(payload))

    def v2_runner_on_ok(self, result: Any) -> None:
        self._emit("task", result, "ok")

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._emit("task", result, "failed")

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._emit("task", result, "skipped")

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._emit("task", result, "unreachable")

    def v2_runner_item_on_ok(self, result: Any) -> None:
        self._emit("item", result, "ok")

    def v2_runner_item_on_failed(self, result: Any) -> None:
        self._emit("item", result, "failed")

    def v2_playbook_on_stats(self, stats: Any) -> None:
        recap = {host: stats.summarize(host) for host in sorted(stats.processed)}
        self._display.display(json.dumps({"event": "recap", "hosts": recap}))
