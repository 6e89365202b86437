# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""`vce serve` and `vce admin`: run the control plane, and bootstrap its users and tokens.

    vce serve [--host 127.0.0.1] [--port 8080] [--workers 4] [--log-level info]
              [--no-access-log] [--forwarded-allow-ips IPS] [--root-path PATH]
    vce admin user add LOGIN --role operator|customer [--tenant T] [--password-stdin]
    vce admin user passwd LOGIN [--password-stdin]
    vce admin user disable LOGIN
    vce admin token create --role operator|customer [--tenant T] [--scope read|write]
                           [--name N] [--expires-in DAYS] [--json]
    vce admin token list [--tenant T] [--json]
    vce admin token revoke PREFIX

Every command takes --ledger-url (else $VCE_LEDGER_URL, else the user's SQLite file). `vce
serve` creates a missing SQLite ledger; `vce admin` does not: register tenants first. A password
is never an argument (it would show in `ps` and the shell's history): it is read from standard
input with --password-stdin, else asked for at the terminal. A new token is printed once, alone
on standard output.

Exit status: 0 done, 2 bad input or an unusable ledger (the message names the field).
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ansible_collections.vce.kvm.cli.exits import reported, undecodable
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.core.validation import (
    check_int,
    whole_number,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from .identity import Identity, TokenView
from .principal import ROLES, SCOPES, WRITE
from .settings import Settings

# "trace" is left out: at that level uvicorn logs every ASGI message it passes on.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
MAX_EXPIRY_DAYS = 3650
MAX_PORT = 65535
MAX_WORKERS = 64
MAX_RATE = 100_000


def common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ledger-url", help="the ledger's database URL (else $VCE_LEDGER_URL)")


def admin_common(parser: argparse.ArgumentParser) -> None:
    common(parser)
    parser.add_argument("--actor", help="who acts, as recorded (default $VCE_ACTOR or the user)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vce", description="vce.kvm's control plane.")
    groups = parser.add_subparsers(dest="group", required=True)
    serve_parser(groups)
    admin = groups.add_parser("admin", help="users and API tokens of the control plane")
    kinds = admin.add_subparsers(dest="kind", required=True)
    user_parsers(kinds)
    token_parsers(kinds)
    return parser


def serve_parser(groups: Any) -> None:
    serve = groups.add_parser("serve", help="run the control plane (API server)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", default="8080", help="port to listen on")
    serve.add_argument(
        "--workers",
        default="4",
        help="threads running actions in this process (instances scale as processes)",
    )
    serve.add_argument("--rate", default="20", help="requests per second each token may make")
    serve.add_argument("--burst", default="100", help="requests a token may make at once")
    serve.add_argument(
        "--stale-after",
        default="30",
        help="seconds without a heartbeat after which a running action's instance is dead",
    )
    serve.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    serve.add_argument("--no-access-log", dest="access_log", action="store_false")
    serve.add_argument(
        "--forwarded-allow-ips",
        help="the reverse proxies whose X-Forwarded-For is believed (default 127.0.0.1)",
    )
    serve.add_argument("--root-path", default="", help="the path prefix the proxy serves under")
    common(serve)


def user_parsers(kinds: Any) -> None:
    user = kinds.add_parser("user", help="users who log in with a password")
    actions = user.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="a new user")
    add.add_argument("login")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--tenant", help="the customer's tenant (registered first)")
    password_option(add)
    admin_common(add)
    passwd = actions.add_parser("passwd", help="set a user's password")
    passwd.add_argument("login")
    password_option(passwd)
    admin_common(passwd)
    disable = actions.add_parser("disable", help="the user can no longer log in")
    disable.add_argument("login")
    admin_common(disable)


def password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (else ask at the terminal)",
    )


def token_parsers(kinds: Any) -> None:
    token = kinds.add_parser("token", help="API tokens")
    actions = token.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="a new token, printed once")
    create.add_argument("--role", choices=ROLES, required=True)
    create.add_argument("--tenant", help="the customer's tenant (registered first)")
    create.add_argument(
        "--scope", choices=SCOPES, default=SCOPES[0], help="read, or write (implies read)"
    )
    create.add_argument("--name", help="what the token is for (default: its prefix)")
    create.add_argument("--expires-in", help="days until it expires (default: never)")
    create.add_argument("--json", action="store_true", help="the token and its details as JSON")
    admin_common(create)
    listing = actions.add_parser("list", help="tokens, without their secrets")
    listing.add_argument("--tenant", help="only this tenant's")
    listing.add_argument("--json", action="store_true")
    admin_common(listing)
    revoke = actions.add_parser("revoke", help="a token stops working")
    revoke.add_argument("prefix", help="the token's prefix, vce_<8 hex>")
    admin_common(revoke)


# -- commands ------------------------------------------------------------------------------


def open_ledger(args: argparse.Namespace) -> Ledger:
    """The ledger the users and tokens go to; never created here (tenants come first)."""
    return Ledger.open(args.ledger_url, actor=args.actor)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        text = sys.stdin.read()
        # One trailing newline is the line's end (echo, a here-string), not the password's.
        return text[:-1] if text.endswith("\n") else text
    if not sys.stdin.isatty():
        raise SpecError("password", "standard input is not a terminal: use --password-stdin")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Password again: "):
        raise SpecError("password", "the two entries differ")
    return first


def bounded(value: str, field: str, maximum: int) -> int:
    return check_int(whole_number(value, field), field, 1, maximum)


def cmd_serve(args: argparse.Namespace) -> int:
    port = bounded(args.port, "port", MAX_PORT)
    workers = bounded(args.workers, "workers", MAX_WORKERS)
    rate = bounded(args.rate, "rate", MAX_RATE)
    burst = bounded(args.burst, "burst", MAX_RATE)
    stale_after = check_int(whole_number(args.stale_after, "stale_after"), "stale_after", 5, 3600)
    # Opened here first so that a wrong URL is an error naming it, not a failed start-up.
    ledger = Ledger.open(args.ledger_url, create=True)
    note = ledger.store.creation_note()
    if note:
        print(f"vce: {note}", file=sys.stderr)
    import uvicorn

    from .app import create_app

    settings = Settings(
        ledger_url=ledger.store.url,
        workers=workers,
        rate_per_second=float(rate),
        rate_burst=burst,
        stale_after=float(stale_after),
    )
    # Tokens travel in the Authorization header, which neither uvicorn's access log nor the
    # app logs: the access log shows the client, the request line and the status.
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=port,
        log_level=args.log_level,
        access_log=args.access_log,
        forwarded_allow_ips=args.forwarded_allow_ips,
        root_path=args.root_path,
    )
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    identity = Identity(open_ledger(args))
    if args.action == "add":
        identity.check_new_user(args.login, args.role, args.tenant)  # before the password
        view = identity.create_user(args.login, read_password(args), args.role, args.tenant)
    elif args.action == "passwd":
        identity.user(args.login)  # before the password
        view = identity.set_password(args.login, read_password(args))
    else:
        view = identity.disable_user(args.login)
    print_json(view.as_dict())
    return 0


def expiry(args: argparse.Namespace, ledger: Ledger) -> dt.datetime | None:
    if args.expires_in is None:
        return None
    days = bounded(args.expires_in, "expires_in", MAX_EXPIRY_DAYS)
    return ledger.now() + dt.timedelta(days=days)


def cmd_token(args: argparse.Namespace) -> int:
    ledger = open_ledger(args)
    identity = Identity(ledger)
    if args.action == "create":
        scopes = SCOPES if args.scope == WRITE else (args.scope,)
        text, view = identity.create_token(
            args.role, args.tenant, scopes, args.name, ledger.actor, expiry(args, ledger)
        )
        if args.json:
            print_json({"token": text, **view.as_dict()})
        else:
            print(text)
            print(f"vce: token {view.prefix} created; it is not shown again", file=sys.stderr)
    elif args.action == "list":
        views = identity.list_tokens(args.tenant)
        if args.json:
            print_json([view.as_dict() for view in views])
        else:
            print_table(views)
    else:
        print_json(identity.revoke_token(args.prefix).as_dict())
    return 0


TABLE = ("prefix", "name", "role", "tenant", "scopes", "expires_at", "revoked_at", "last_used_at")


def print_table(views: Sequence[TokenView]) -> None:
    rows = [TABLE]
    for view in views:
        shown = view.as_dict()
        shown["scopes"] = ",".join(view.scopes)
        rows.append(tuple(str(shown[column] or "-") for column in TABLE))
    widths = [max(len(row[index]) for row in rows) for index in range(len(TABLE))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


COMMANDS: Mapping[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "user": cmd_user,
    "token": cmd_token,
}


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if undecodable(arguments):
        return 2
    args = build_parser().parse_args(arguments)
    command = COMMANDS["serve" if args.group == "serve" else args.kind]
    try:
        return reported(lambda: command(args))
    except KeyboardInterrupt:  # Ctrl-C at the password prompt
        return 130


if __name__ == "__main__":
    sys.exit(main())
