# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-only stdout callback: prints each task result as one JSON line, diff included."""

from __future__ import annotations

import json

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: vce_test_result
type: stdout
short_description: One JSON line per task result, for vce.kvm's tests
description: Prints every task result, including its diff, as a JSON line.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "vce_test_result"

    def _emit(self, result, status: str) -> None:
        payload = dict(result._result)
        payload["_status"] = status
        payload["_task"] = result._task.get_name()
        self._display.display(json.dumps(payload, default=str))

    def v2_runner_on_ok(self, result) -> None:
        self._emit(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors: bool = False) -> None:
        self._emit(result, "failed")

    def v2_runner_on_skipped(self, result) -> None:
        self._emit(result, "skipped")

    def v2_runner_on_unreachable(self, result) -> None:
        self._emit(result, "unreachable")
