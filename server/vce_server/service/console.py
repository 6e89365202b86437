# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The VM console of the personal cabinet (terms 3.8): single-use tickets and the viewers.

A ticket is a random secret the cabinet hands to its page, valid 30 s and good for one
websocket: the ledger keeps only its SHA-256 (as for sessions) with the tenant, the VM and its
zone, and redeeming it is one UPDATE that only an unused, unexpired ticket of the caller's
tenant matches, so two sockets racing for one ticket open one console.

The console itself is the engine's ConsoleStream on the host of the VM's placement; the
customer never sees that host: every message is scrubbed. One process knows its own viewers,
so a second viewer of a VM here marks the first as taken over before libvirt ends its stream.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import VceError
from ansible_collections.vce.kvm.plugins.module_utils.engine.console import ConsoleStream
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import console_tickets
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from .fleet import Fleet

TICKET_LIFETIME = dt.timedelta(seconds=30)
TICKET_BYTES = 32
TICKET_TEXT = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class Ticket:
    tenant: str
    vm: str
    zone: str
    login: str


def ticket_id(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Tickets:
    """The console tickets of one ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def issue(self, ticket: Ticket, now: dt.datetime | None = None) -> str:
        """A new ticket's secret (shown once, kept nowhere)."""
        secret = secrets.token_urlsafe(TICKET_BYTES)
        now = now or self.ledger.now()
        with self.ledger.store.write() as connection:
            connection.execute(
                console_tickets.insert().values(
                    id=ticket_id(secret),
                    tenant=ticket.tenant,
                    vm=ticket.vm,
                    zone=ticket.zone,
                    login=ticket.login,
                    created_at=now,
                    expires_at=now + TICKET_LIFETIME,
                )
            )
        return secret

    def redeem(self, secret: object, tenant: str, now: dt.datetime | None = None) -> Ticket | None:
        """The ticket, used up now; None when it is unknown, used, expired or another
        tenant's (then nothing changes)."""
        if not isinstance(secret, str) or not TICKET_TEXT.fullmatch(secret):
            return None
        now = now or self.ledger.now()
        key = ticket_id(secret)
        with self.ledger.store.write() as connection:
            used = connection.execute(
                console_tickets.update()
                .where(
                    console_tickets.c.id == key,
                    console_tickets.c.tenant == tenant,
                    console_tickets.c.used_at.is_(None),
                    console_tickets.c.expires_at > now,
                )
                .values(used_at=now)
            )
            if used.rowcount != 1:
                return None
            row = connection.execute(
                sa.select(console_tickets).where(console_tickets.c.id == key)
            ).one()
        return Ticket(row.tenant, row.vm, row.zone, row.login)


@dataclass(eq=False)
class Viewer:
    """One open console: its stream, and whether another viewer took it over."""

    stream: ConsoleStream
    taken_over: bool = False


@dataclass
class Viewers:
    """The consoles open in this process, one per VM."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    current: dict[tuple[str, str, str], Viewer] = field(default_factory=dict)

    def arrive(self, key: tuple[str, str, str], viewer: Viewer) -> bool:
        """Record the viewer as the VM's; True when it takes the console from another."""
        with self.lock:
            previous = self.current.get(key)
            self.current[key] = viewer
        if previous is not None:
            previous.taken_over = True
        return previous is not None

    def leave(self, key: tuple[str, str, str], viewer: Viewer) -> None:
        with self.lock:
            if self.current.get(key) is viewer:
                del self.current[key]


VIEWERS = Viewers()


class Consoles:
    """Opening a ticket's console on the VM's host."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def open(
        self, ticket: Ticket, deliver: Callable[[bytes | None], None]
    ) -> tuple[Viewer, bool, tuple[str, str, str]]:
        """The viewer with its console open, whether it took the console over, and its key
        for Viewers.leave. Raises VceError with a message fit for the customer."""
        try:
            host = self.fleet.where(ticket.tenant, ticket.zone)
            if host is None:
                raise VceError(f"vm {ticket.vm} is not available")
            viewer = Viewer(ConsoleStream(host.uri, ticket.tenant, ticket.vm, deliver))
            key = (host.uri, ticket.tenant, ticket.vm)
            took_over = VIEWERS.arrive(key, viewer)
            try:
                viewer.stream.open()
            except VceError:
                VIEWERS.leave(key, viewer)
                raise
        except VceError as error:
            raise VceError(self.fleet.scrub(str(error))) from None
        return viewer, took_over, key

    @staticmethod
    def close(viewer: Viewer, key: tuple[str, str, str]) -> None:
        viewer.stream.close()
        VIEWERS.leave(key, viewer)
