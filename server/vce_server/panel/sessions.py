# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who is logged in to the personal cabinet: server-side sessions kept in the ledger.

The browser holds a random secret in a cookie; the ledger keeps only its SHA-256, so neither a
copy of the table nor a log line opens a session. A session ends when its user logs out, after
30 minutes without a request, after 12 hours in any case, when the user is disabled, and when
the password is set again (identity.Identity.set_password ends them all).

Every session has its own CSRF token, which every form of its pages carries: a page of another
site can make the browser send the cookie, never the token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import sessions, users
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from ..identity import user_principal
from ..principal import Principal

IDLE = dt.timedelta(minutes=30)
LIFETIME = dt.timedelta(hours=12)
# seen_at is written at most this often: a write per page would cost more than the page.
TOUCH_EVERY = dt.timedelta(seconds=30)
SECRET_BYTES = 32
COOKIE_TEXT = re.compile(r"[A-Za-z0-9_-]{43}")
MAX_SOURCE = 64


@dataclass(frozen=True)
class Session:
    id: str  # the SHA-256 of the cookie's secret
    principal: Principal
    csrf: str
    created_at: dt.datetime
    expires_at: dt.datetime

    @property
    def login(self) -> str:
        return self.principal.actor

    def accepts(self, token: Any) -> bool:
        """Whether a form's CSRF token is this session's (in constant time)."""
        return isinstance(token, str) and hmac.compare_digest(token.encode(), self.csrf.encode())


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Sessions:
    """The sessions of one ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def open(self, principal: Principal, source: str) -> tuple[str, Session]:
        """A new session for a user whose password was just checked: the cookie's text (sent
        once, kept nowhere) and the session."""
        secret = secrets.token_urlsafe(SECRET_BYTES)
        now = self.ledger.now()
        values = {
            "id": digest(secret),
            "login": principal.actor,
            "tenant": principal.tenant,
            "role": principal.role,
            "csrf": secrets.token_urlsafe(SECRET_BYTES),
            "source": source[:MAX_SOURCE],
            "created_at": now,
            "seen_at": now,
            "expires_at": now + LIFETIME,
        }
        with self.ledger.store.write() as connection:
            connection.execute(sessions.insert().values(**values))
        return secret, Session(values["id"], principal, values["csrf"], now, values["expires_at"])

    def find(self, cookie: Any, now: dt.datetime | None = None) -> Session | None:
        """The live session the cookie opens, else None (unknown, closed, idle too long,
        expired, or its user disabled)."""
        if not isinstance(cookie, str) or not COOKIE_TEXT.fullmatch(cookie):
            return None
        now = now or self.ledger.now()
        key = digest(cookie)
        query = (
            sa.select(sessions, users.c.disabled_at)
            .join(users, users.c.login == sessions.c.login)
            .where(sessions.c.id == key)
        )
        with self.ledger.store.read() as connection:
            row = connection.execute(query).first()
        if row is None or not self.live(row, now):
            return None
        if now - row.seen_at >= TOUCH_EVERY:
            self.touch(key, now)
        return Session(row.id, user_principal(row), row.csrf, row.created_at, row.expires_at)

    @staticmethod
    def live(row: Any, now: dt.datetime) -> bool:
        return (
            row.closed_at is None
            and row.disabled_at is None
            and now < row.expires_at
            and now - row.seen_at < IDLE
        )

    def touch(self, key: str, now: dt.datetime) -> None:
        with self.ledger.store.write() as connection:
            connection.execute(
                sessions.update()
                .where(sessions.c.id == key, sessions.c.seen_at <= now - TOUCH_EVERY)
                .values(seen_at=now)
            )

    def close(self, session: Session) -> None:
        with self.ledger.store.write() as connection:
            connection.execute(
                sessions.update()
                .where(sessions.c.id == session.id, sessions.c.closed_at.is_(None))
                .values(closed_at=self.ledger.now())
            )
