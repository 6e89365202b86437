# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Imports come after DOCUMENTATION, as ansible-test wants of plugins.
# ruff: noqa: E402
"""Ansible callback vce.kvm.ledger: every run, and the usage changes vce modules report, in the
ledger that billing reads. A ledger problem never fails the playbook: it becomes a warning,
and what could not be written waits in a spool file to be written later."""

from __future__ import annotations

DOCUMENTATION = r"""
name: ledger
type: notification
short_description: Records every playbook run and the usage changes of vce.kvm modules in the ledger
version_added: 0.1.0
author:
  - vce.kvm developers (!UNKNOWN)
description:
  - Records each C(ansible-playbook) run in the ledger's C(runs) table when it starts (result
    C(running)), and when it ends with its result (C(ok), C(failed), or C(interrupted) when the
    run stopped before its end) and each host's stats.
  - Writes the usage changes that vce.kvm modules report (C(usage_changes), in loops too) to
    the ledger as each task result arrives, so billing follows what the run did. The same
    change is never counted twice.
  - Only results of vce.kvm modules are read (the task's resolved action, so short names count
    when the play's C(collections) resolve them to vce.kvm); a C(usage_changes) in any other
    result (C(debug), C(set_fact), another collection's module) is ignored. A change is
    recorded only for the task's C(tenant) on the host its C(uri) names (for
    M(vce.kvm.zone_link), its first end's), with quantities within the engine's limits; any
    other is a warning naming the field.
  - The run id is E(VCE_RUN_ID) if set, else a new one; the callback sets E(VCE_RUN_ID) so the
    modules run over the local connection record their ledger events under the same run.
  - Each change goes to the ledger the module used - the C(ledger_url) argument of the task
    (or its C(module_defaults)) if it has one, else this callback's O(ledger_url). The URL is
    never taken from the result itself.
  - A ledger problem never fails the playbook. Changes that cannot be written are kept in a
    spool file O(spool_dir)/<run id>.jsonl and retried at the next write and at the end of the
    run; what is still there at the end is written later with C(vce ledger record --spool FILE).
requirements:
  - Enable it with C(callbacks_enabled = vce.kvm.ledger) in the C([defaults]) section of
    C(ansible.cfg).
  - SQLAlchemy 2 and Alembic on the controller (psycopg 3 for PostgreSQL).
options:
  ledger_url:
    description:
      - The ledger as a database URL, for the run's record and for the changes of tasks that do
        not set their own C(ledger_url).
      - Default - the SQLite file C(~/.local/share/vce-kvm/ledger.sqlite3) (C($XDG_DATA_HOME) is
        honoured), the same default as the modules'.
    type: str
    env:
      - name: VCE_LEDGER_URL
    ini:
      - section: vce_ledger
        key: ledger_url
  spool_dir:
    description:
      - Where changes that could not be written wait, one file per run. The files may hold
        the ledger URL, so they are readable by their owner only.
    type: path
    default: ~/.local/state/vce-kvm/spool
    env:
      - name: VCE_LEDGER_SPOOL
    ini:
      - section: vce_ledger
        key: spool_dir
  actor:
    description:
      - Who runs the playbook, as the ledger records it.
      - Default - the user name.
    type: str
    env:
      - name: VCE_ACTOR
notes:
  - A run killed with SIGKILL or SIGTERM keeps the result C(running); a run stopped with
    Ctrl+C is marked C(interrupted).
  - A task with C(no_log) hides its result from callbacks, so its usage changes are not
    recorded by this callback; C(vce ledger reconcile) records what the host holds.
  - Changes of a loop are written as each item ends.
seealso:
  - module: vce.kvm.environment
"""

import atexit
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ansible import context
from ansible.plugins.callback import CallbackBase
from ansible.release import __version__ as ANSIBLE_VERSION

if TYPE_CHECKING:
    from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import UsageChange
    from ansible_collections.vce.kvm.plugins.module_utils.ledger.recorder import Recorder


class LedgerCode:
    """The collection's ledger code, imported at its first use: the import costs about a
    second, which an ad-hoc query (`ansible -m ping`) that changes nothing should not pay."""

    def __init__(self) -> None:
        self.error: ImportError | None = None
        self.loaded = False

    def load(self) -> ImportError | None:
        """Import once; the ImportError when the ledger's libraries are missing."""
        if not self.loaded:
            self.loaded = True
            try:
                from ansible_collections.vce.kvm.plugins.module_utils.core import errors, fields
                from ansible_collections.vce.kvm.plugins.module_utils.ledger import (
                    metering,
                    recorder,
                    spool,
                    store,
                    tenants,
                )
            except ImportError as error:  # reported as a warning when the run starts
                self.error = error
            else:
                for module in (errors, tenants, store, metering, spool, recorder):
                    self.__dict__.update(
                        {k: v for k, v in vars(module).items() if not k.startswith("_")}
                    )
                # The uri a module connects to when its task names none.
                self.__dict__["default_uri"] = fields.URI.default
        return self.error

    def __getattr__(self, name: str) -> Any:
        if self.load() is not None:
            raise self.error
        if name not in self.__dict__:
            raise AttributeError(name)
        return self.__dict__[name]


ledger_code = LedgerCode()


ADHOC_PLAYBOOK = "__adhoc_playbook__"  # the name ansible (ad hoc) gives its one-play playbook
HOST_STATS = ("ok", "changed", "failures", "unreachable", "skipped")


# -- reading task results ------------------------------------------------------------------


def is_template(value: str) -> bool:
    return "{{" in value or "{%" in value


def url_in(args: Any, fallback: str) -> str:
    """The `ledger_url` a module was given, if plain (an untemplated one is not the URL)."""
    value = args.get("ledger_url") if isinstance(args, Mapping) else None
    if isinstance(value, str) and value and not is_template(value):
        return str(value)
    return fallback


COLLECTION = "vce.kvm."


def vce_module(task: Any) -> str:
    """The vce.kvm module the task ran, without its collection; "" for any other action, whose
    results are never billing records. `resolved_action` is the FQCN Ansible resolved (short
    names through the play's `collections` included); an action it cannot resolve, such as a
    templated one, is not taken for ours."""
    resolved = getattr(task, "resolved_action", None)
    if isinstance(resolved, str) and resolved.startswith(COLLECTION):
        return resolved[len(COLLECTION) :]
    return ""


def task_args(task: Any) -> Mapping[str, Any]:
    """The task's arguments as Ansible templated them (module_defaults included): those of a
    loop's item in the item's callback. The result's own copy (`invocation`) is never read:
    a result is the module's word, the arguments are the playbook's."""
    args = getattr(task, "args", None)
    return args if isinstance(args, Mapping) else {}


def plain(value: Any) -> str:
    """A plain string argument, else "" (an untemplated value is not the value)."""
    return value if isinstance(value, str) and not is_template(value) else ""


def scope_of(module: str, args: Mapping[str, Any], default_uri: str) -> tuple[str, str]:
    """(tenant, host) a vce.kvm module records its changes under: its `tenant`, and its `uri`
    as given (the engine's UsageWatch takes the host's URI as it is); a zone link is metered on
    its first end's host. "" where the task does not say."""
    if module == "zone_link":
        ends = args.get("ends")
        first = ends[0] if isinstance(ends, list) and ends else None
        uri = first.get("uri") if isinstance(first, Mapping) else None
    else:
        uri = args.get("uri") or default_uri
    return plain(args.get("tenant")), plain(uri)


def result_parts(result: Any) -> tuple[Mapping[str, Any], Any, str, str]:
    """(result data, task, task name, host name) across ansible-core versions (2.19 made the
    underscored attributes public)."""
    data = getattr(result, "result", None)
    if not isinstance(data, Mapping):
        data = getattr(result, "_result", None) or {}
    task = getattr(result, "task", None) or getattr(result, "_task", None)
    host = getattr(result, "host", None) or getattr(result, "_host", None)
    name = getattr(result, "task_name", None) or (task.get_name() if task is not None else "")
    return data, task, str(name), host.get_name() if host is not None else "?"


def playbook_detail(playbook: Any) -> dict[str, Any]:
    name = getattr(playbook, "_file_name", None) or ""
    cli = context.CLIARGS
    detail: dict[str, Any] = {
        "check_mode": bool(cli.get("check", False)),
        "ansible_version": ANSIBLE_VERSION,
    }
    if name == ADHOC_PLAYBOOK:
        detail["adhoc"] = {"module": cli.get("module_name"), "pattern": cli.get("args")}
    else:
        detail["playbook"] = os.path.abspath(name) if name else None
    return detail


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "vce.kvm.ledger"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display: Any = None) -> None:
        super().__init__(display=display)
        self.recorder: Recorder | None = None
        self.playbooks: list[str] = []
        self.run_started = False
        self.adhoc_detail: dict[str, Any] | None = None

    def warn(self, message: str) -> None:
        self._display.warning(message)

    def note(self, message: str) -> None:
        self._display.vv(message)

    def guarded(self, what: str, action: Callable[[], None]) -> None:
        """The last line of defence: whatever goes wrong here, the playbook goes on."""
        try:
            action()
        except Exception as error:
            self.warn(f"vce.kvm.ledger: {what} failed: {ledger_code.reason(error)}")

    # -- the run -------------------------------------------------------------------------

    def v2_playbook_on_start(self, playbook: Any) -> None:
        detail = playbook_detail(playbook)
        if detail.get("playbook"):
            self.playbooks.append(detail["playbook"])
        if self.run_started:  # several playbooks in one command are one run
            return
        self.run_started = True
        if "adhoc" in detail:
            # An ad-hoc command (`ansible -m ping`) is recorded only when it changes usage:
            # most are queries, and the ledger would double their time.
            self.adhoc_detail = detail
            return
        self.guarded("recording the run's start", lambda: self.start(detail))

    def start(self, detail: dict[str, Any]) -> None:
        missing = ledger_code.load()
        if missing is not None:
            self.warn(f"vce.kvm.ledger: not recording this run: {missing}")
            return
        run_id = os.environ.get("VCE_RUN_ID") or uuid.uuid4().hex
        # Modules run over the local connection inherit it: their ledger events share the id.
        os.environ["VCE_RUN_ID"] = run_id
        actor = self.get_option("actor") or ledger_code.default_actor()
        run = ledger_code.RunRecord(run_id, actor, "ansible", ledger_code.utcnow(), detail)
        main_url = self.get_option("ledger_url") or ledger_code.default_url()
        spool_dir = str(self.get_option("spool_dir") or "~/.local/state/vce-kvm/spool")
        self.recorder = ledger_code.Recorder(run, main_url, spool_dir, self.warn, self.note)
        self.recorder.start()
        atexit.register(self.recorder.interrupted)
        self.mention_old_spools(Path(spool_dir).expanduser(), self.recorder.spool_file)

    def mention_old_spools(self, directory: Path, own: Path) -> None:
        """Other runs' spool files are billing data not yet in the ledger: say so."""
        try:
            waiting = sorted(p for p in directory.glob("*.jsonl") if p != own)
        except OSError:
            return
        if waiting:
            self.warn(
                f"vce.kvm.ledger: {len(waiting)} spool file(s) of other runs wait in "
                f"{directory}; write each with: vce ledger record --spool FILE"
            )

    def v2_playbook_on_stats(self, stats: Any) -> None:
        recorder = self.recorder
        if recorder is None:
            return
        hosts = {
            host: {key: value for key, value in stats.summarize(host).items() if key in HOST_STATS}
            for host in sorted(stats.processed)
        }
        failed = any(s["failures"] or s["unreachable"] for s in hosts.values())
        detail: dict[str, Any] = {"hosts": hosts}
        if len(self.playbooks) > 1:
            detail["playbooks"] = self.playbooks
        self.guarded(
            "recording the run's end",
            lambda: recorder.finish("failed" if failed else "ok", detail),
        )

    # -- task results --------------------------------------------------------------------

    def v2_runner_on_ok(self, result: Any) -> None:
        self.guarded("recording usage changes", lambda: self.collect(result))

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self.guarded("recording usage changes", lambda: self.collect(result))

    # A loop's items come one by one, each with its own templated arguments (the loop's task
    # result carries them only untemplated): each item is collected here, the loop's result,
    # which has no usage_changes of its own, adds nothing.

    def v2_runner_item_on_ok(self, result: Any) -> None:
        self.guarded("recording usage changes", lambda: self.collect(result))

    def v2_runner_item_on_failed(self, result: Any) -> None:
        # A loop that failed on one item still made the changes its other items report.
        self.guarded("recording usage changes", lambda: self.collect(result))

    def collect(self, result: Any) -> None:
        data, task, task_name, host = result_parts(result)
        module = vce_module(task)
        raw = data.get("usage_changes")
        if not module or not raw:
            return
        if self.recorder is None and self.adhoc_detail is not None:
            self.start(self.adhoc_detail)
            self.adhoc_detail = None
        recorder = self.recorder
        if recorder is None:
            return
        args = task_args(task)
        changes = self.checked(raw, module, args, f"vce.kvm.ledger: task {task_name!r} on {host}")
        if changes:
            recorder.record(url_in(args, recorder.main_url), changes)

    def checked(
        self, raw: Any, module: str, args: Mapping[str, Any], prefix: str
    ) -> list[UsageChange]:
        """The valid changes of the task's tenant on its host; each other one is a warning
        naming its field."""
        if not isinstance(raw, list):
            self.warn(f"{prefix}: usage_changes must be a list; not recorded")
            return []
        tenant, uri = scope_of(module, args, ledger_code.default_uri)
        changes = []
        for index, item in enumerate(raw):
            where = f"usage_changes[{index}]"
            try:
                change = ledger_code.UsageChange.from_dict(item, where)
                check_scope(change, where, tenant, uri)
            except ledger_code.SpecError as error:
                self.refused(prefix, error)
            else:
                changes.append(change)
        return changes

    def refused(self, prefix: str, error: Exception) -> None:
        if self.recorder is not None:
            self.recorder.counts["invalid"] += 1
        self.warn(f"{prefix}: a usage change is not recorded: {error}")


def check_scope(change: UsageChange, where: str, tenant: str, uri: str) -> None:
    """A module records changes of its task's tenant on its task's host, never another's."""
    if change.tenant != tenant:
        wanted = repr(tenant) if tenant else "a plain tenant argument"
        raise ledger_code.SpecError(f"{where}.tenant", f"must be the task's tenant ({wanted})")
    if change.host != uri:
        wanted = repr(uri) if uri else "a plain uri argument"
        raise ledger_code.SpecError(f"{where}.host", f"must be the task's host ({wanted})")
