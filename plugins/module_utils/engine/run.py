# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How every entry point ends: a planned run is admitted, applied and reported in one place.

A tenant's run goes through its gate (operator locks, quotas at plan time, a reservation under
the ledger's lock at apply time, the host's usage recorded after); a run of the operator's
(a host record, a pool, a tenant's plan or quotas) has no gate and applies its plan as it is.
Either way the Result is built here, so check mode, diff mode and previews report alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..core.errors import ApplyError, VceError
from ..core.plan import Plan, describe_all, reason
from ..core.result import Result
from ..host.connection import TenantInventory
from ..host.facts import tenant_facts
from ..ledger.metering import UsageWatch
from ..ledger.store import Store
from .gate import Gate

if TYPE_CHECKING:  # the public IP planner concludes through here too
    from .resources.public_ip import PublicIpPlanner


class Facts(Protocol):
    """The facts a run reports, from the tenant's objects after it (None when the run reads
    no libvirt object) and whether it applied anything."""

    def __call__(self, after: TenantInventory | None, applied: bool) -> dict[str, Any]: ...


@dataclass
class Run:
    """A planned run, ready to conclude."""

    plan: Plan
    facts: Facts
    gate: Gate | None = None
    # The tenant's libvirt objects before the run: given when the plan may change what libvirt
    # meters (VMs, disks, networks); None when only ledger-counted objects change.
    inventory: TenantInventory | None = None
    # Work batched after every change of the run (one nft batch for all public IPs).
    flush: Callable[[], None] | None = None
    # A gate-less run that still changes what is metered (an operator's block) watches it.
    watch: UsageWatch | None = None
    observe: Callable[[], TenantInventory] | None = None


def conclude(run: Run, check_mode: bool) -> Result:
    """Admit the plan, apply it unless checking, then report the plan and the facts."""
    plan, gate = run.plan, run.gate
    plan.check_acts_once()
    if gate is not None:
        gate.admit(plan, run.inventory)
    after = run.inventory
    usage_changes: list[dict[str, Any]] = []
    if not check_mode:
        if gate is None:
            done = apply(run)
            if run.watch is not None and run.observe is not None and plan.changed:
                with after_applying(done, "reading the usage after them"):
                    usage_changes = run.watch.changes(run.observe())
        else:
            after, usage_changes = apply_gated(run, gate)
    return Result(
        changed=plan.changed,
        plan=plan.to_list(),
        diff=plan.diff(),
        warnings=plan.warnings,
        pending_restart=plan.pending_restart,
        usage_changes=usage_changes,
        facts=run.facts(after, plan.changed and not check_mode),
    )


def noting_new_ledger(result: Result, store: Store) -> Result:
    """The result of a registering run, warning when the run made a new ledger file: after a
    mistyped URL the operator sees where the records went."""
    note = store.creation_note()
    if note:
        result.warnings.append(note)
    return result


def apply(run: Run) -> list[dict[str, Any]]:
    """Run the plan's changes, then the work batched after them; the changes made."""
    done = run.plan.apply()
    if run.flush is not None:
        with after_applying(done, "the work batched after them"):
            run.flush()
    return done


@contextmanager
def after_applying(done: list[dict[str, Any]], work: str) -> Iterator[None]:
    """Work that follows the changes (an nft batch, reading and recording the usage): when it
    fails, every change has run all the same, and the front end must report them as made."""
    try:
        yield
    except Exception as error:
        raise ApplyError(
            f"{reason(error)} (applied before the failure: all {len(done)} changes"
            f"{': ' + describe_all(done) if done else ''}; failed: {work}; "
            "a re-run continues from here)",
            applied=done,
            left=error.left if isinstance(error, ApplyError) else (),
            unexpected=not isinstance(error, VceError),
        ) from error


def apply_gated(run: Run, gate: Gate) -> tuple[TenantInventory | None, list[dict[str, Any]]]:
    """Apply under the gate's reservation; the tenant's objects after, and the usage changes."""
    plan, metered = run.plan, run.inventory is not None
    watch = UsageWatch(gate.ledger, gate.host.uri, gate.tenant, run.inventory)
    with gate.reservation(plan, metered):
        try:
            done = apply(run)
        except Exception:
            # What the failed run did is billed from now. Should the ledger or the host fail
            # too, the intents stay pending for the next run, and the apply's error is the
            # one told, whatever the second failure was.
            with suppress(Exception):
                gate.confirm(None, watch.before)
            raise
    with after_applying(done, "recording the tenant's usage after them"):
        after = run.inventory
        # What was read before the run still holds when nothing changed.
        if plan.changed and metered:
            after = gate.host.inventory(gate.tenant)
        confirmed = gate.confirm(after, watch.before)
        gate.settle(after, plan)
        if not plan.changed:
            return after, []
        # The confirmed states are in the ledger already; the callback's record of them finds
        # them by key. The watch adds what the ledger meters itself (public IPs, zone links).
        watched = [
            c for c in watch.changes(after) if (c["kind"], c["name"]) not in confirmed.objects
        ]
        return after, [change.as_dict() for change in confirmed.changes] + watched


def tenant_report(
    gate: Gate,
    check_mode: bool,
    section: str | None = None,
    name: str | None = None,
    public_ips: PublicIpPlanner | None = None,
) -> Facts:
    """The facts of a tenant run: one object's (`section` names its kind, e.g. "vms", with
    `name`), or the whole environment's; an environment in check mode reports none."""

    def facts(after: TenantInventory | None, applied: bool) -> dict[str, Any]:
        if section is None and check_mode:
            return {}
        found = tenant_facts(gate.host, gate.tenant, after)
        if public_ips is not None:
            found["public_ips"] = public_ips.facts(
                public_ips.nat.observe() if applied else public_ips.observed
            )
        if section is None:
            return {"environment": found}
        return {section[:-1]: found[section].get(name) or {}}

    return facts


def conclude_one(
    plan: Plan, check_mode: bool, gate: Gate, inventory: TenantInventory, section: str, name: str
) -> Result:
    """Conclude a run on one of the tenant's libvirt objects, reporting that object's facts."""
    report = tenant_report(gate, check_mode, section, name)
    return conclude(Run(plan, report, gate, inventory), check_mode)
