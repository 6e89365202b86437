# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`vce`: the ledger for finance and support, and the host-side timers' commands.

    vce ledger invoice   --month 2026-11 [--tenant T] [--format json|csv|html] [--output F]
    vce ledger sla       --month 2026-11 [--tenant T] [--format json|csv]
    vce ledger requests  --month 2026-11 [--tenant T] [--format json|csv]
    vce ledger usage     --month 2026-11 --tenant T [--format json|csv]
    vce ledger close     --month 2026-10
    vce ledger reconcile --uri qemu:///system [--uri ...]
    vce ledger probe     --uri qemu:///system [--uri ...]      (also: vce sla probe)
    vce ledger incident  open|report|confirm|restore|classify|data-loss|list ...
    vce ledger exclusion add --cause maintenance --start ... --end ... --announced-at ...
    vce ledger request   log|fulfil ...
    vce ledger record    --spool FILE
    vce ledger prices    --plan P
    vce drift            -i INVENTORY [--hosts PATTERN] [--tenant T] [--json F] [--junit F]

Common options: --ledger-url (else $VCE_LEDGER_URL), --time-zone (else $VCE_TIME_ZONE, else
Asia/Almaty), --now (an ISO time: the clock, for replays and tests), --actor.
Exit status: 0 done, 1 the command ran and found a problem (e.g. an unreachable host, drift), 2
bad input or an unusable ledger (the message names the field and the reason).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from ..plugins.module_utils.core.errors import SpecError, VceError
from ..plugins.module_utils.core.periods import Month, parse_month, time_zone
from ..plugins.module_utils.core.validation import check_int, check_line, whole_number

# Relative: the same code whether installed or run from a checkout with
# PYTHONPATH=<checkout>/collections python -m ansible_collections.vce.kvm.cli.vce
from ..plugins.module_utils.finance import statement
from ..plugins.module_utils.finance.billing import Biller, Books
from ..plugins.module_utils.finance.requests import COLUMNS as REQUEST_COLUMNS
from ..plugins.module_utils.finance.requests import TARGETS, RequestLog, summary
from ..plugins.module_utils.finance.sla import CAUSES, EXCLUDED_CAUSES, Incidents, probe_host
from ..plugins.module_utils.host.connection import Host
from ..plugins.module_utils.ledger.intents import recover_host
from ..plugins.module_utils.ledger.metering import Metering, observe_host
from ..plugins.module_utils.ledger.spool import replay
from ..plugins.module_utils.ledger.tenants import Ledger, parse_moment
from . import drift
from .exits import reported, undecodable

MAX_RECORD_ID = 2**63 - 1
USAGE_COLUMNS = (
    "host", "kind", "name", "vm", "state", "vcpus", "ram_mib", "disk_mib", "public_ips",
    "zone_links", "started_at", "ended_at", "source", "run_id",
)  # fmt: skip


def moment_arg(value: str) -> dt.datetime:
    try:
        parsed = parse_moment(value, "time")
    except SpecError as error:
        raise argparse.ArgumentTypeError(error.reason) from None
    if parsed is None:
        raise argparse.ArgumentTypeError("a time is required")
    return parsed


def record_id(value: str) -> int:
    """An incident's number: ASCII digits only ("²" and "٣" are digits to int()), within the
    ledger's 64-bit keys."""
    try:
        return check_int(whole_number(value, "id"), "id", 1, MAX_RECORD_ID)
    except SpecError as error:
        raise argparse.ArgumentTypeError(error.reason) from None


def common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ledger-url", help="the ledger's database URL")
    parser.add_argument("--time-zone", help="the provider's time zone (default Asia/Almaty)")
    parser.add_argument("--now", type=moment_arg, help="the clock (ISO 8601 with offset)")
    parser.add_argument("--actor", help="who acts (default $VCE_ACTOR or the user)")


def output_options(parser: argparse.ArgumentParser, formats: Sequence[str]) -> None:
    parser.add_argument("--format", choices=formats, default=formats[0])
    parser.add_argument("--output", type=Path, help="write here instead of standard output")


def month_options(parser: argparse.ArgumentParser, tenant_required: bool = False) -> None:
    parser.add_argument("--month", required=True, help="YYYY-MM in the provider's time zone")
    parser.add_argument("--tenant", required=tenant_required)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vce", description="vce.kvm's ledger and host probes.")
    groups = parser.add_subparsers(dest="group", required=True)
    ledger = groups.add_parser("ledger", help="invoices, SLA, requests, usage, records")
    commands = ledger.add_subparsers(dest="command", required=True)

    for name, formats, text in (
        ("invoice", ("json", "csv", "html"), "invoices with their SLA statements"),
        ("sla", ("json", "csv"), "availability per VM, and credits"),
        ("requests", ("json", "csv"), "the request-handling clocks of the terms (5.1)"),
    ):
        sub = commands.add_parser(name, help=text)
        month_options(sub)
        output_options(sub, formats)
        common(sub)
    sub = commands.add_parser("usage", help="a tenant's usage intervals in a month")
    month_options(sub, tenant_required=True)
    output_options(sub, ("json", "csv"))
    common(sub)
    sub = commands.add_parser("close", help="freeze a finished month's invoices")
    sub.add_argument("--month", required=True)
    common(sub)
    for name, text in (
        ("reconcile", "record what the hosts hold where it differs from the ledger"),
        ("probe", "record each VM's state; open and end downtime incidents"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--uri", action="append", required=True, help="a host's libvirt URI")
        common(sub)
    incident_commands(commands)
    sub = commands.add_parser("exclusion", help="downtime that is not compensated")
    actions = sub.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add")
    add.add_argument("--cause", choices=EXCLUDED_CAUSES, required=True)
    add.add_argument("--start", type=moment_arg, required=True)
    add.add_argument("--end", type=moment_arg, required=True)
    add.add_argument("--announced-at", type=moment_arg)
    add.add_argument("--tenant", default="")
    add.add_argument("--host", default="", help="a host's URI (default: every host)")
    add.add_argument("--vm", default="")
    add.add_argument("--note", default="")
    common(add)
    request_commands(commands)
    sub = commands.add_parser("record", help="replay a spool file the callback left")
    sub.add_argument("--spool", type=Path, required=True)
    common(sub)
    sub = commands.add_parser("prices", help="a plan's price lists")
    sub.add_argument("--plan", required=True)
    common(sub)

    sla = groups.add_parser("sla", help="host-side availability probe")
    sla_commands = sla.add_subparsers(dest="command", required=True)
    sub = sla_commands.add_parser("probe", help="same as vce ledger probe")
    sub.add_argument("--uri", action="append", required=True)
    common(sub)
    drift.add_parser(groups)
    return parser


def incident_commands(commands: Any) -> None:
    sub = commands.add_parser("incident", help="downtime and data-loss incidents")
    actions = sub.add_subparsers(dest="action", required=True)
    report = actions.add_parser("report", help="a customer's report of downtime")
    report.add_argument("--tenant", required=True)
    report.add_argument("--vm", default="", help="the VM (default: every VM of the tenant)")
    report.add_argument("--host", default="", help="the host's URI (default: every host)")
    report.add_argument("--reported-at", type=moment_arg, required=True)
    report.add_argument("--confirmed-at", type=moment_arg)
    report.add_argument("--restored-at", type=moment_arg)
    report.add_argument("--reference", default="", help="the CRM's reference")
    report.add_argument("--note", default="")
    common(report)
    outage = actions.add_parser(
        "open", help="a provider outage learned of outside the probe (5.11: internal data)"
    )
    outage.add_argument("--tenant", required=True)
    outage.add_argument("--vm", default="", help="the VM (default: every VM of the tenant)")
    outage.add_argument("--host", default="", help="the host's URI (default: every host)")
    outage.add_argument("--started-at", type=moment_arg, required=True)
    outage.add_argument("--restored-at", type=moment_arg, help="when service was back")
    outage.add_argument("--reference", default="", help="the CRM's or the NOC's reference")
    outage.add_argument("--note", default="", help="what happened")
    common(outage)
    loss = actions.add_parser("data-loss", help="data lost by the provider's fault (5.13)")
    loss.add_argument("--tenant", required=True)
    loss.add_argument("--vm", default="")
    loss.add_argument("--host", default="")
    loss.add_argument("--at", type=moment_arg, required=True, help="when the loss happened")
    loss.add_argument("--reported-at", type=moment_arg)
    loss.add_argument("--confirmed-at", type=moment_arg, required=True)
    loss.add_argument("--reference", default="")
    loss.add_argument("--note", default="")
    common(loss)
    for name in ("confirm", "restore"):
        one = actions.add_parser(name)
        one.add_argument("id", type=record_id)
        one.add_argument("--at", type=moment_arg, required=True)
        common(one)
    classify = actions.add_parser("classify", help="whose doing the downtime was")
    classify.add_argument("id", type=record_id)
    classify.add_argument("--cause", choices=CAUSES, required=True)
    classify.add_argument("--note", default="")
    common(classify)
    listing = actions.add_parser("list")
    listing.add_argument("--tenant")
    listing.add_argument("--open", action="store_true")
    common(listing)


def request_commands(commands: Any) -> None:
    sub = commands.add_parser("request", help="log and fulfil customer requests")
    actions = sub.add_subparsers(dest="action", required=True)
    log = actions.add_parser("log")
    log.add_argument("--tenant", required=True)
    log.add_argument("--kind", choices=tuple(TARGETS), required=True)
    log.add_argument("--reference", required=True)
    log.add_argument("--logged-at", type=moment_arg, required=True)
    log.add_argument("--note", default="")
    common(log)
    fulfil = actions.add_parser("fulfil")
    fulfil.add_argument("--tenant", required=True)
    fulfil.add_argument("--reference", required=True)
    fulfil.add_argument("--run", help="the run that fulfilled it (its end is the moment)")
    fulfil.add_argument("--at", type=moment_arg)
    common(fulfil)


# -- commands ------------------------------------------------------------------------------


def open_ledger(args: argparse.Namespace, create: bool = False) -> Ledger:
    """The ledger of the command; only commands that write may create it (store.py), and
    they say so on stderr, where a mistyped URL shows."""
    ledger = Ledger.open(args.ledger_url, create=create, actor=args.actor, now=args.now)
    note = ledger.store.creation_note()
    if note:
        print(f"vce: {note}", file=sys.stderr)
    return ledger


def month_of(args: argparse.Namespace) -> Month:
    return parse_month(args.month, time_zone(args.time_zone, "time_zone"))


def emit(args: argparse.Namespace, ledger: Ledger, write: Callable[[TextIO], Any]) -> None:
    output = getattr(args, "output", None)
    if not output:
        write(sys.stdout)
        return
    if ledger.store.holds(output):
        raise SpecError("output", f"{output} is the ledger's own file")
    # Whole or not at all: an error half-way through the documents leaves no file behind.
    text = io.StringIO()
    write(text)
    try:
        with open(output, "w", encoding="utf-8", newline="") as out:
            out.write(text.getvalue())
    except OSError as error:
        raise SpecError("output", f"cannot write {output}: {error.strerror}") from None


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def cmd_invoice(args: argparse.Namespace) -> int:
    month = month_of(args)
    if args.format == "html" and not args.tenant:
        raise SpecError("tenant", "an HTML statement is per tenant: give --tenant")
    ledger = open_ledger(args)
    documents = Books(ledger, month).invoices(args.tenant)
    if args.format == "html":
        page = statement.html_statement(next(iter(documents)))
        emit(args, ledger, lambda out: out.write(page))
    elif args.format == "csv":
        emit(args, ledger, lambda out: statement.write_invoice_csv(documents, out))
    else:
        emit(args, ledger, lambda out: statement.write_json_stream(documents, out))
    return 0


def cmd_sla(args: argparse.Namespace) -> int:
    month = month_of(args)
    ledger = open_ledger(args)
    documents = Biller(ledger, month).invoices(args.tenant)
    if args.format == "csv":
        emit(args, ledger, lambda out: statement.write_sla_csv(documents, out))
        return 0
    rows = (statement.sla_statement(d) for d in documents)
    emit(args, ledger, lambda out: statement.write_json_stream(rows, out))
    return 0


def cmd_requests(args: argparse.Namespace) -> int:
    month = month_of(args)
    ledger = open_ledger(args)
    rows = list(RequestLog(ledger).report(month, args.tenant))
    if args.format == "csv":
        emit(args, ledger, lambda out: statement.write_rows_csv(rows, out, REQUEST_COLUMNS))
    else:
        report = {"month": args.month, "summary": summary(rows), "requests": rows}
        emit(
            args, ledger, lambda out: out.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
        )
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    month = month_of(args)
    ledger = open_ledger(args)
    with ledger.store.read() as connection:
        ledger.require_tenant(connection, args.tenant)
    rows = Metering(ledger).intervals(args.tenant, month.start, month.end)
    if args.format == "csv":
        emit(args, ledger, lambda out: statement.write_rows_csv(rows, out, USAGE_COLUMNS))
    else:
        emit(args, ledger, lambda out: statement.write_json_stream(rows, out))
    return 0


def cmd_close(args: argparse.Namespace) -> int:
    month = month_of(args)
    outcome = list(Books(open_ledger(args, create=True), month).close())
    print_json({"month": args.month, "invoices": outcome})
    return 0


def check_uris(uris: Sequence[str]) -> None:
    for index, uri in enumerate(uris):
        check_line(uri, f"uri[{index}]")


def cmd_reconcile(args: argparse.Namespace) -> int:
    check_uris(args.uri)
    ledger = open_ledger(args, create=True)
    metering = Metering(ledger)
    known = ledger.tenant_names()
    report, status = [], 0
    for uri in args.uri:
        try:
            host = Host(uri)
            observed = observe_host(ledger, host, known)
            # Killed runs' intents first, dated within their runs; then drift, dated now.
            changes = recover_host(metering, uri, observed) + metering.reconcile(uri, observed)
            report.append({"host": uri, "changes": [c.as_dict() for c in changes]})
        except VceError as error:  # one unreachable host does not stop the others
            report.append({"host": uri, "error": str(error)})
            status = 1
    print_json(report)
    return status


def cmd_probe(args: argparse.Namespace) -> int:
    check_uris(args.uri)
    ledger = open_ledger(args, create=True)
    report = [probe_host(ledger, uri) for uri in args.uri]
    print_json(report)
    return 1 if any("unreachable" in r for r in report) else 0


def cmd_incident(args: argparse.Namespace) -> int:
    incidents = Incidents(open_ledger(args, create=args.action != "list"))
    if args.action == "report":
        found = incidents.report(
            args.tenant, args.vm, args.host, args.reported_at, args.confirmed_at, args.note,
            args.reference, args.restored_at,
        )  # fmt: skip
    elif args.action == "open":
        found = incidents.outage(
            args.tenant, args.vm, args.host, args.started_at, args.restored_at, args.note,
            args.reference,
        )  # fmt: skip
    elif args.action == "data-loss":
        found = incidents.open(
            args.tenant, args.vm, args.host, args.at, kind="data_loss", source="report",
            reported_at=args.reported_at or args.at, confirmed_at=args.confirmed_at,
            ended_at=None, note=args.note, reference=args.reference,
        )  # fmt: skip
    elif args.action == "confirm":
        found = incidents.confirm(args.id, args.at)
    elif args.action == "restore":
        found = incidents.restore(args.id, args.at)
    elif args.action == "classify":
        found = incidents.classify(args.id, args.cause, args.note)
    else:
        found = incidents.listing(args.tenant, args.open)
    print_json(found)
    return 0


def cmd_exclusion(args: argparse.Namespace) -> int:
    print_json(
        Incidents(open_ledger(args, create=True)).exclude(
            args.cause, args.start, args.end, tenant=args.tenant, host=args.host, vm=args.vm,
            announced_at=args.announced_at, note=args.note,
        )
    )  # fmt: skip
    return 0


def cmd_request(args: argparse.Namespace) -> int:
    log = RequestLog(open_ledger(args, create=True))
    if args.action == "log":
        print_json(log.log(args.tenant, args.kind, args.reference, args.logged_at, args.note))
    else:
        print_json(log.fulfil(args.tenant, args.reference, args.at, args.run))
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    if not args.spool.is_file():
        raise SpecError("spool", f"no spool file at {args.spool}")
    # --ledger-url sends every line to that ledger; else each goes where it was meant to.
    written, remaining = replay(
        args.spool,
        lambda url: Ledger.open(args.ledger_url or url, actor=args.actor),
        report=lambda reason: print(f"vce: kept in the spool: {reason}", file=sys.stderr),
    )
    print_json({"spool": str(args.spool), "written": written, "remaining": remaining})
    return 1 if remaining else 0


def cmd_prices(args: argparse.Namespace) -> int:
    ledger = open_ledger(args)
    with ledger.store.read() as connection:
        if ledger.tariff(connection, args.plan) is None:
            raise SpecError("plan", f"no plan {args.plan!r} in the ledger")
        lists = ledger.price_lists(connection, args.plan)
    print_json(
        [{"effective_from": moment.isoformat(), **prices.as_dict()} for moment, prices in lists]
    )
    return 0


COMMANDS: Mapping[str, Callable[[argparse.Namespace], int]] = {
    "invoice": cmd_invoice, "sla": cmd_sla, "requests": cmd_requests, "usage": cmd_usage,
    "close": cmd_close, "reconcile": cmd_reconcile, "probe": cmd_probe,
    "incident": cmd_incident, "exclusion": cmd_exclusion, "request": cmd_request,
    "record": cmd_record, "prices": cmd_prices,
}  # fmt: skip


def main(argv: Iterable[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if undecodable(arguments):
        return 2
    args = build_parser().parse_args(arguments)
    command = drift.run if args.group == "drift" else COMMANDS[args.command]
    try:
        return reported(lambda: command(args))
    except BrokenPipeError:  # the reader (e.g. `| head`) went away: not an error of ours
        return 0


if __name__ == "__main__":
    sys.exit(main())
