# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pages: one autoescaped Jinja2 environment, and the headers every page is sent with.

Templates only loop and branch over values the routes computed (no calls into the service
layer, no arithmetic beyond display), so a page can show nothing the API would not return.
"""

from __future__ import annotations

import datetime as dt
import functools
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")
HEADERS = {
    # No inline script or style anywhere: the policy allows this origin's files only.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; "
        "base-uri 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


# Every page of the cabinet, as the navigation lists them.
CUSTOMER_NAV = (
    ("/panel/", "Environment"),
    ("/panel/vms/new", "New VM"),
    ("/panel/objects", "Networks and disks"),
    ("/panel/backups", "Backups"),
    ("/panel/quotas", "Quotas"),
    ("/panel/requests", "Requests"),
    ("/panel/billing", "Usage and invoices"),
    ("/panel/trial", "Trial"),
    ("/panel/tokens", "API tokens"),
    ("/panel/account", "Account"),
)
OPERATOR_NAV = (
    ("/panel/operator/", "Tenants"),
    ("/panel/operator/requests", "Request queue"),
    ("/panel/operator/incidents", "Incidents"),
    ("/panel/operator/maintenance", "Maintenance"),
    ("/panel/operator/hosts", "Hosts"),
    ("/panel/operator/images", "Images"),
    ("/panel/operator/audit", "Audit log"),
    ("/panel/account", "Account"),
)


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["amount"] = amount
    env.globals["customer_nav"] = CUSTOMER_NAV
    env.globals["operator_nav"] = OPERATOR_NAV
    return env


def when(value: Any) -> str:
    """A moment as people read it: UTC, to the minute."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def amount(value: Any) -> str:
    """A quantity without trailing zeros: 2, 1.5, 0.25."""
    if value is None:
        return "—"
    number = Decimal(str(value))
    shown = format(number.normalize(), "f")
    return shown


def page(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    """The page rendered with what every page has: who is logged in and their form token."""
    session = getattr(request.state, "session", None)
    text = (
        environment()
        .get_template(template)
        .render(
            session=session,
            csrf=session.csrf if session is not None else "",
            path=request.url.path,
            **values,
        )
    )
    return HTMLResponse(text, status_code=status, headers=HEADERS)


TITLES = {
    401: "Not logged in",
    403: "Refused",
    404: "Not found",
    409: "Refused",
    413: "Too large",
    422: "Not accepted",
    429: "Too many requests",
    503: "Temporarily unavailable",
}


def error_page(request: Request, error: Any) -> HTMLResponse:
    """An ApiError as a page: its status, message and fields, and its headers (Retry-After)."""
    response = page(
        request,
        "error.html.j2",
        status=error.status,
        title=TITLES.get(error.status, "Something went wrong"),
        message=error.message,
        fields=error.fields,
    )
    response.headers.update(
        {key: value for key, value in error.headers.items() if key != "WWW-Authenticate"}
    )
    return response
