# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who may call the control plane: users with passwords and API tokens, kept in the ledger.

A token is `vce_<8 hex>_<secret>`: the prefix is its visible name (the key of its row, shown in
lists and audit rows), the secret is 32 random bytes and is kept only as the SHA-256 of the
whole token text; the text is shown once, by create_token. A random secret needs no slow hash,
so checking a token costs one primary-key read, and a few seconds of cache spare even that.

Passwords are argon2id hashes (argon2-cffi), rehashed at the next login when the parameters
change. Neither a token nor a password is ever logged, raised in an error or returned twice.

A user may add a second factor: a TOTP code (RFC 6238, pyotp) from an authenticator app. A
code is accepted for its own 30-second step or the one before (typed as it changed), never a
later one, and only when no session of the user was opened at or after its step began: a
login opens a session, so the sessions table (shared by every instance) is the record of the
codes used, and a code works once.

A forgotten password is reset through a request of kind "password" (terms 5.1, a 20-minute
clock): the row in password_resets ties the request to the login; support issues the link,
whose secret is shown once and kept only as its SHA-256; setting the password with it ends
the request's clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

import pyotp
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.core.validation import (
    check_choice,
    check_line,
    check_name,
    unreadable,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import (
    api_tokens,
    password_resets,
    pending_logins,
    sessions,
    users,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger, iso
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .principal import CUSTOMER, OPERATOR, READ, ROLES, SCOPES, WRITE, Principal

log = logging.getLogger("vce.serve")
TOKEN_PATTERN = re.compile(r"(vce_[0-9a-f]{8})_[A-Za-z0-9_-]{43}")
PREFIX_PATTERN = re.compile(r"vce_[0-9a-f]{8}")
TOKEN_LENGTH = 56  # "vce_" + 8 + "_" + 43
SECRET_BYTES = 32
MAX_LOGIN = 128  # users.login
MAX_TOKEN_NAME = 64  # api_tokens.name
MAX_CREATED_BY = 128  # api_tokens.created_by
MAX_REQUEST = 64  # password_resets.request
MIN_PASSWORD = 12
# argon2 hashes any length, but a megabyte password would be a cheap way to burn a worker.
MAX_PASSWORD = 1024
# How long this process trusts a token row it read: revocation through another instance takes
# effect within this window (through this one, at once).
CACHE_SECONDS = 5.0
# A bound on the cache, so a flood of distinct valid tokens cannot grow it without end.
CACHE_ENTRIES = 10_000
# last_used_at is written at most this often per token: a write per call would cost more than
# the call.
TOUCH_EVERY = dt.timedelta(seconds=60)
# Tries at a fresh random prefix when the drawn one is taken (one in four billion).
PREFIX_TRIES = 5
# TOTP as every authenticator app reads it: 6 digits, 30-second steps, SHA-1.
TOTP_DIGITS = 6
TOTP_STEP = 30
TOTP_SECRET = re.compile(r"[A-Z2-7]{32}")  # 160 bits in base32, as pyotp draws them
TOTP_ISSUER = "vce.kvm"
# The half-way state of a login (password right, code not yet given): kept this long, for
# this many wrong codes, by this process; at most this many at once.
PENDING_LIFE = dt.timedelta(minutes=5)
PENDING_TRIES = 5
# A reset link works this long after support issued it; the request's clock is 20 min too.
RESET_LIFE = dt.timedelta(minutes=20)


class TokenNotFound(SpecError):
    """No such token, or another tenant's: the two are told apart by nothing."""


class ResetNotFound(SpecError):
    """No password reset waits on that request."""


@dataclass(frozen=True)
class ResetDone:
    """What a used reset link did: whose password, and the request whose clock it stopped."""

    login: str
    tenant: str
    request: str
    at: dt.datetime


@dataclass(frozen=True)
class TokenView:
    """A token as it may be shown: never its secret, nor the secret's hash."""

    prefix: str
    name: str
    role: str
    tenant: str | None
    scopes: tuple[str, ...]
    created_by: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None

    def as_dict(self) -> dict[str, Any]:
        return shown(self)


@dataclass(frozen=True)
class UserView:
    login: str
    role: str
    tenant: str | None
    created_at: dt.datetime
    disabled_at: dt.datetime | None

    def as_dict(self) -> dict[str, Any]:
        return shown(self)


def shown(view: Any) -> dict[str, Any]:
    """A view as JSON: times in ISO 8601, tuples as lists."""
    fields = asdict(view)
    for key, value in fields.items():
        if isinstance(value, dt.datetime):
            fields[key] = iso(value)
        elif isinstance(value, tuple):
            fields[key] = list(value)
    return fields


@dataclass(frozen=True)
class CachedToken:
    """What authenticate needs of a token's row, and when this process read it."""

    secret_hash: str
    principal: Principal
    expires_at: dt.datetime | None
    revoked: bool
    last_used_at: dt.datetime | None
    read_at: float  # time.monotonic()


def check_login(value: Any) -> str:
    """A login as it is stored and compared: NFKC and case-folded, so "Ann" and "ANN" (or its
    full-width form) are one user; no control, invisible or space characters."""
    if not isinstance(value, str) or not value:
        raise SpecError("login", "a login is required")
    login = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())
    if any(unreadable(char) or char.isspace() for char in login):
        raise SpecError("login", "cannot hold spaces, control or invisible characters")
    if len(login) > MAX_LOGIN:
        raise SpecError("login", f"must be at most {MAX_LOGIN} characters, got {len(login)}")
    return login


def check_password(value: Any) -> str:
    if not isinstance(value, str):
        raise SpecError("password", "must be text")
    if len(value) < MIN_PASSWORD:
        raise SpecError("password", f"must be at least {MIN_PASSWORD} characters")
    if len(value) > MAX_PASSWORD:
        raise SpecError("password", f"must be at most {MAX_PASSWORD} characters")
    if any(unreadable(char) for char in value):
        raise SpecError("password", "cannot hold control or invisible characters")
    return value


def check_code(value: Any) -> str:
    """A TOTP code as typed: six digits, spaces allowed ("123 456")."""
    code = value.replace(" ", "") if isinstance(value, str) else ""
    if len(code) != TOTP_DIGITS or not code.isascii() or not code.isdigit():
        raise SpecError("code", f"is the {TOTP_DIGITS} digits your authenticator app shows")
    return code


def check_totp_secret(value: Any) -> str:
    if not isinstance(value, str) or not TOTP_SECRET.fullmatch(value):
        raise SpecError("secret", "is not a secret this page drew: reload the page")
    return value


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(login: str, secret: str) -> str:
    """The otpauth:// URI an authenticator app takes (as text or as a QR code)."""
    return pyotp.TOTP(secret).provisioning_uri(name=login, issuer_name=TOTP_ISSUER)


def matching_step(secret: str, code: str, now: dt.datetime) -> int | None:
    """The time step whose code this is: the current one or the one before (a code typed as
    it changed), never a later one."""
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP)
    current = totp.timecode(now)
    for step in (current, current - 1):
        if hmac.compare_digest(totp.generate_otp(step).encode(), code.encode()):
            return step
    return None


def check_scopes(value: str | Iterable[str]) -> tuple[str, ...]:
    """("read",) or ("read", "write"): write implies read."""
    given = value.split() if isinstance(value, str) else list(value)
    for scope in given:
        check_choice(scope, "scopes", SCOPES)
    if not given:
        raise SpecError("scopes", f"give at least one of {', '.join(SCOPES)}")
    return (READ, WRITE) if WRITE in given else (READ,)


def check_prefix(value: Any) -> str:
    if not isinstance(value, str) or not PREFIX_PATTERN.fullmatch(value):
        raise SpecError("prefix", "a token's prefix is vce_ and 8 lowercase hex digits")
    return value


def check_expiry(value: Any, now: dt.datetime) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise SpecError("expires_at", "must be a time with its UTC offset")
    if value <= now:
        raise SpecError("expires_at", f"is not in the future: {value.isoformat()}")
    return value


def digest(token_text: str) -> str:
    return hashlib.sha256(token_text.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    prefix = f"vce_{secrets.token_hex(4)}"
    return prefix, f"{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"


def token_view(row: Any) -> TokenView:
    return TokenView(
        prefix=row.prefix,
        name=row.name,
        role=row.role,
        tenant=row.tenant,
        scopes=tuple(row.scopes.split()),
        created_by=row.created_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def user_view(row: Any) -> UserView:
    return UserView(row.login, row.role, row.tenant, row.created_at, row.disabled_at)


def user_principal(row: Any) -> Principal:
    # A person logged in acts with every scope of their role.
    return Principal(
        token=f"session:{row.login}",
        actor=row.login,
        role=row.role,
        tenant=row.tenant,
        scopes=frozenset(SCOPES),
    )


# The columns a token view reads: every one but the secret's hash.
VIEW_COLUMNS = [column for column in api_tokens.c if column.name != "secret_hash"]


class Identity:
    """Users and tokens of one ledger. One instance per server process: its token cache is
    what makes revocation through it immediate."""

    def __init__(
        self,
        ledger: Ledger,
        hasher: PasswordHasher | None = None,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self.ledger = ledger
        self.hasher = hasher or PasswordHasher()
        self.cache_seconds = cache_seconds
        self.cache: dict[str, CachedToken] = {}
        self.lock = threading.Lock()
        self._decoy: str | None = None
        # Logins waiting for their code, by the SHA-256 of the secret the browser holds.

    # -- users ---------------------------------------------------------------------------

    def create_user(
        self, login: str, password: str, role: str, tenant: str | None = None
    ) -> UserView:
        login, tenant = self.check_new_user(login, role, tenant)
        hashed = self.hasher.hash(check_password(password))
        now = self.ledger.now()
        with self.ledger.store.write() as connection:
            self.check_free(connection, login)
            connection.execute(
                users.insert().values(
                    login=login,
                    tenant=tenant,
                    role=role,
                    password_hash=hashed,
                    created_at=now,
                    updated_at=now,
                )
            )
        return UserView(login, role, tenant, now, None)

    def check_new_user(self, login: str, role: str, tenant: str | None) -> tuple[str, str | None]:
        """The login and tenant a new user would get (SpecError if it cannot be made), so a
        front end can refuse before it asks for a password."""
        login = check_login(login)
        tenant = self.check_owner(role, tenant)
        with self.ledger.store.read() as connection:
            self.check_free(connection, login)
        return login, tenant

    @staticmethod
    def check_free(connection: Any, login: str) -> None:
        taken = connection.execute(sa.select(users.c.login).where(users.c.login == login)).first()
        if taken is not None:
            raise SpecError("login", f"{login!r} is taken")

    def set_password(self, login: str, password: str) -> UserView:
        """A new password ends every session of the user (in the personal cabinet, the page
        that changed it opens a new one)."""
        login = check_login(login)
        hashed = self.hasher.hash(check_password(password))
        view = self.update_user(login, password_hash=hashed)
        self.end_sessions(login)
        return view

    def end_sessions(self, login: str) -> None:
        with self.ledger.store.write() as connection:
            self.close_sessions(connection, login, self.ledger.now())

    @staticmethod
    def close_sessions(connection: Any, login: str, now: dt.datetime) -> None:
        connection.execute(
            sessions.update()
            .where(sessions.c.login == login, sessions.c.closed_at.is_(None))
            .values(closed_at=now)
        )

    def disable_user(self, login: str) -> UserView:
        """The user can no longer log in; disabling twice keeps the first time."""
        login = check_login(login)
        current = self.user(login)
        if current.disabled_at is not None:
            return current
        return self.update_user(login, disabled_at=self.ledger.now())

    def user(self, login: str) -> UserView:
        login = check_login(login)
        with self.ledger.store.read() as connection:
            row = connection.execute(sa.select(users).where(users.c.login == login)).first()
        if row is None:
            raise SpecError("login", f"no user {login!r}")
        return user_view(row)

    def list_users(self, tenant: str | None = None) -> list[UserView]:
        """The tenant's users (None: every user), by login; disabled ones too."""
        query = sa.select(users).order_by(users.c.login)
        if tenant is not None:
            query = query.where(users.c.tenant == check_name(tenant, "tenant"))
        with self.ledger.store.read() as connection:
            return [user_view(row) for row in connection.execute(query)]

    def update_user(self, login: str, **values: Any) -> UserView:
        with self.ledger.store.write() as connection:
            done = connection.execute(
                users.update()
                .where(users.c.login == login)
                .values(updated_at=self.ledger.now(), **values)
            )
            if done.rowcount == 0:
                raise SpecError("login", f"no user {login!r}")
            row = connection.execute(sa.select(users).where(users.c.login == login)).one()
        return user_view(row)

    def verify_password(self, login: str, password: str) -> Principal | None:
        """The user's principal when the password is theirs and they are not disabled, else
        None. An unknown or malformed login costs one argon2 check too, so the time taken
        does not tell which logins exist."""
        try:
            login = check_login(login)
        except SpecError:
            login = ""
        row = None
        if login:
            with self.ledger.store.read() as connection:
                row = connection.execute(sa.select(users).where(users.c.login == login)).first()
        stored = row.password_hash if row is not None else self.decoy()
        if not self.matches(stored, password) or row is None or row.disabled_at is not None:
            return None
        if self.hasher.check_needs_rehash(stored):
            self.update_user(row.login, password_hash=self.hasher.hash(password))
        return user_principal(row)

    def matches(self, stored: str, password: Any) -> bool:
        if not isinstance(password, str) or len(password) > MAX_PASSWORD:
            password = ""
        try:
            return self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    def decoy(self) -> str:
        """A hash with this hasher's parameters that no password matches."""
        if self._decoy is None:
            self._decoy = self.hasher.hash(secrets.token_urlsafe(SECRET_BYTES))
        return self._decoy

    # -- the second factor (TOTP) ----------------------------------------------------------

    def user_row(self, login: str) -> Any:
        with self.ledger.store.read() as connection:
            return connection.execute(sa.select(users).where(users.c.login == login)).first()

    def has_second_factor(self, login: str) -> bool:
        row = self.user_row(check_login(login))
        return row is not None and row.totp_secret is not None

    def enable_totp(self, login: str, secret: str, code: str) -> UserView:
        """Keep the secret once the user shows a current code of it (their app has it). Every
        session of the user ends: one opened with the password alone is not left open."""
        login = check_login(login)
        secret = check_totp_secret(secret)
        step = matching_step(secret, check_code(code), self.ledger.now())
        if step is None:
            raise SpecError("code", "is not the current code of this secret: try the next one")
        # The code shown to turn the factor on is used: it cannot open a session too.
        view = self.update_user(login, totp_secret=secret, totp_step=step)
        self.end_sessions(login)
        return view

    def disable_totp(self, login: str, code: str) -> UserView:
        """Drop the second factor, on a current code not used before."""
        login = check_login(login)
        row = self.user_row(login)
        if row is None or row.totp_secret is None:
            raise SpecError("code", "there is no second factor to turn off")
        if not self.take_code(row, check_code(code)):
            raise SpecError("code", "is wrong or used already: wait for the next one")
        return self.update_user(login, totp_secret=None, totp_step=None)

    def take_code(self, row: Any, code: str) -> bool:
        """Whether the code is the user's and not used before; taking it uses it up, and every
        code of its time step and those before, on every instance: the update is conditional
        on the last step taken, so of two instances given one code at once, one takes it."""
        step = matching_step(row.totp_secret, code, self.ledger.now())
        if step is None:
            return False
        with self.ledger.store.write() as connection:
            done = connection.execute(
                users.update()
                .where(
                    users.c.login == row.login,
                    users.c.totp_secret == row.totp_secret,
                    sa.or_(users.c.totp_step.is_(None), users.c.totp_step < step),
                )
                .values(totp_step=step)
            )
        return done.rowcount == 1

    def begin_second_step(self, principal: Principal) -> str:
        """Remember a login whose password was right: the secret for the browser to hold (the
        ledger keeps its SHA-256, so any instance can take the code)."""
        secret = secrets.token_urlsafe(SECRET_BYTES)
        now = self.ledger.now()
        with self.ledger.store.write() as connection:
            connection.execute(pending_logins.delete().where(pending_logins.c.expires_at <= now))
            connection.execute(
                pending_logins.insert().values(
                    id=digest(secret), login=principal.actor, tries=0, created_at=now,
                    expires_at=now + PENDING_LIFE,
                )
            )  # fmt: skip
        return secret

    def pending_login(self, secret: Any) -> Any:
        """The waiting login the browser's secret names, unexpired; else None."""
        if not isinstance(secret, str) or len(secret) != 43:
            return None
        query = sa.select(pending_logins).where(
            pending_logins.c.id == digest(secret),
            pending_logins.c.expires_at > self.ledger.now(),
            pending_logins.c.tries < PENDING_TRIES,
        )
        with self.ledger.store.read() as connection:
            return connection.execute(query).first()

    def second_step(self, secret: Any, code: Any) -> Principal | None:
        """The user's principal when the code completes the waiting login, else None; after
        PENDING_TRIES wrong codes the login starts again from the password."""
        entry = self.pending_login(secret)
        if entry is None:
            return None
        row = self.user_row(entry.login)
        try:
            taken = row is not None and row.disabled_at is None and row.totp_secret is not None
            taken = taken and self.take_code(row, check_code(code))
        except SpecError:
            taken = False
        with self.ledger.store.write() as connection:
            if not taken:
                connection.execute(
                    pending_logins.update()
                    .where(pending_logins.c.id == entry.id)
                    .values(tries=pending_logins.c.tries + 1)
                )
                return None
            # The waiting login is spent: its secret opens nothing more.
            connection.execute(pending_logins.delete().where(pending_logins.c.id == entry.id))
        return user_principal(row)

    # -- password resets (terms 5.1: a request of kind "password") ----------------------------

    def resettable(self, login: Any) -> Any:
        """The user a reset form may file a request for: a customer, not disabled, without a
        reset waiting already; else None (the form answers the same either way)."""
        try:
            login = check_login(login)
        except SpecError:
            return None
        row = self.user_row(login)
        if row is None or row.disabled_at is not None or row.tenant is None:
            return None
        query = sa.select(password_resets.c.id).where(
            password_resets.c.login == login,
            password_resets.c.used_at.is_(None),
            password_resets.c.expires_at > self.ledger.now(),
        )
        with self.ledger.store.read() as connection:
            return None if connection.execute(query).first() else row

    def record_reset(self, login: str, request: str) -> None:
        """The reset a request asked for. Its key is the hash of a secret nobody keeps: the
        row opens nothing until support issues the link."""
        now = self.ledger.now()
        with self.ledger.store.write() as connection:
            connection.execute(
                password_resets.insert().values(
                    id=digest(secrets.token_urlsafe(SECRET_BYTES)), login=login,
                    request=request, created_at=now, expires_at=now + RESET_LIFE,
                )
            )  # fmt: skip

    def issue_reset_link(self, request: str) -> tuple[str, dict[str, Any]]:
        """A new secret for the request's reset, shown this once: any link issued before
        stops working. The link works RESET_LIFE from now."""
        check_line(request, "request", MAX_REQUEST)
        now = self.ledger.now()
        secret = secrets.token_urlsafe(SECRET_BYTES)
        with self.ledger.store.write() as connection:
            row = connection.execute(
                sa.select(password_resets)
                .where(password_resets.c.request == request, password_resets.c.used_at.is_(None))
                .order_by(password_resets.c.created_at.desc())
            ).first()
            if row is None:
                raise ResetNotFound("request", f"no password reset waits on request {request!r}")
            connection.execute(
                password_resets.update()
                .where(password_resets.c.id == row.id)
                .values(id=digest(secret), expires_at=now + RESET_LIFE)
            )
        return secret, {"login": row.login, "request": request, "expires_at": iso(now + RESET_LIFE)}

    def reset_waiting(self, secret: Any) -> bool:
        """Whether the link's secret opens an unused, unexpired reset."""
        if not isinstance(secret, str) or not 0 < len(secret) <= 64:
            return False
        query = sa.select(password_resets.c.id).where(
            password_resets.c.id == digest(secret),
            password_resets.c.used_at.is_(None),
            password_resets.c.expires_at > self.ledger.now(),
        )
        with self.ledger.store.read() as connection:
            return connection.execute(query).first() is not None

    def use_reset(self, secret: Any, password: str) -> ResetDone:
        """Set the password through the link, once: the link is used, every session of the
        user ends. The caller stops the request's clock."""
        hashed = self.hasher.hash(check_password(password))
        now = self.ledger.now()
        key = digest(secret) if isinstance(secret, str) else ""
        with self.ledger.store.write() as connection:
            done = connection.execute(
                password_resets.update()
                .where(
                    password_resets.c.id == key,
                    password_resets.c.used_at.is_(None),
                    password_resets.c.expires_at > now,
                )
                .values(used_at=now)
            )
            if done.rowcount != 1:
                raise SpecError("link", "is unknown, used or expired: ask support for a new one")
            reset = connection.execute(
                sa.select(password_resets).where(password_resets.c.id == key)
            ).one()
            user = connection.execute(sa.select(users).where(users.c.login == reset.login)).one()
            connection.execute(
                users.update()
                .where(users.c.login == reset.login)
                .values(password_hash=hashed, updated_at=now)
            )
            self.close_sessions(connection, reset.login, now)
        return ResetDone(reset.login, user.tenant, reset.request, now)

    # -- tokens --------------------------------------------------------------------------

    def create_token(
        self,
        role: str,
        tenant: str | None,
        scopes: str | Iterable[str],
        name: str | None,
        created_by: str,
        expires_at: dt.datetime | None = None,
    ) -> tuple[str, TokenView]:
        """A new token: its text (shown this once, kept nowhere) and its view. Without a name,
        the token is named by its prefix."""
        tenant = self.check_owner(role, tenant)
        granted = check_scopes(scopes)
        if name is not None:
            check_line(name, "name", MAX_TOKEN_NAME)
        if not check_line(created_by, "created_by", MAX_CREATED_BY):
            raise SpecError("created_by", "who creates the token is required")
        now = self.ledger.now()
        expires_at = check_expiry(expires_at, now)
        with self.ledger.store.write() as connection:
            for _attempt in range(PREFIX_TRIES):
                prefix, text = new_token()
                taken = connection.execute(
                    sa.select(api_tokens.c.prefix).where(api_tokens.c.prefix == prefix)
                ).first()
                if taken is None:
                    break
            else:
                raise SpecError("prefix", "no free prefix drawn; try again")
            values = {
                "prefix": prefix,
                "name": name or prefix,
                "role": role,
                "tenant": tenant,
                "scopes": " ".join(granted),
                "created_by": created_by,
                "created_at": now,
                "expires_at": expires_at,
            }
            connection.execute(api_tokens.insert().values(secret_hash=digest(text), **values))
        return text, TokenView(**{**values, "scopes": granted}, revoked_at=None, last_used_at=None)

    def list_tokens(self, tenant: str | None = None) -> list[TokenView]:
        """The tenant's tokens (None: every token), oldest first; revoked ones too."""
        query = sa.select(*VIEW_COLUMNS).order_by(api_tokens.c.created_at, api_tokens.c.prefix)
        if tenant is not None:
            query = query.where(api_tokens.c.tenant == check_name(tenant, "tenant"))
        with self.ledger.store.read() as connection:
            return [token_view(row) for row in connection.execute(query)]

    def revoke_token(self, prefix: str, tenant: str | None = None) -> TokenView:
        """Revoke a token (tenant None: an operator, any token; else only that tenant's). At
        once in this process; revoking twice keeps the first time."""
        prefix = check_prefix(prefix)
        with self.ledger.store.write() as connection:
            row = connection.execute(
                sa.select(*VIEW_COLUMNS).where(api_tokens.c.prefix == prefix)
            ).first()
            if row is None or (tenant is not None and row.tenant != tenant):
                raise TokenNotFound("prefix", f"no token {prefix}")
            if row.revoked_at is None:
                connection.execute(
                    api_tokens.update()
                    .where(api_tokens.c.prefix == prefix)
                    .values(revoked_at=self.ledger.now())
                )
                row = connection.execute(
                    sa.select(*VIEW_COLUMNS).where(api_tokens.c.prefix == prefix)
                ).one()
        with self.lock:
            self.cache.pop(prefix, None)
        return token_view(row)

    def authenticate(self, token_text: Any, now: dt.datetime | None = None) -> Principal | None:
        """The token's principal, or None for anything but a token this ledger issued that is
        neither expired nor revoked. Never raises on what a caller sends."""
        if not isinstance(token_text, str) or len(token_text) != TOKEN_LENGTH:
            return None
        match = TOKEN_PATTERN.fullmatch(token_text)
        if match is None:
            return None
        prefix = match.group(1)
        entry = self.cached(prefix)
        if entry is None:
            return None
        if not hmac.compare_digest(entry.secret_hash, digest(token_text)):
            return None
        now = now or self.ledger.now()
        if entry.revoked or (entry.expires_at is not None and entry.expires_at <= now):
            return None
        if entry.last_used_at is None or now - entry.last_used_at >= TOUCH_EVERY:
            try:
                self.touch(prefix, now)
            except VceError as error:  # the last use is a note: a busy ledger refuses no call
                log.warning("last use of token %s not recorded: %s", prefix, error)
        return entry.principal

    def cached(self, prefix: str) -> CachedToken | None:
        """The token's row as this process read it within cache_seconds, else read now."""
        with self.lock:
            entry = self.cache.get(prefix)
        if entry is not None and time.monotonic() - entry.read_at < self.cache_seconds:
            return entry
        with self.ledger.store.read() as connection:
            row = connection.execute(
                sa.select(api_tokens).where(api_tokens.c.prefix == prefix)
            ).first()
        if row is None:
            return None
        entry = CachedToken(
            secret_hash=row.secret_hash,
            principal=Principal(
                token=row.prefix,
                actor=f"token:{row.name}",
                role=row.role,
                tenant=row.tenant,
                scopes=frozenset(row.scopes.split()),
            ),
            expires_at=row.expires_at,
            revoked=row.revoked_at is not None,
            last_used_at=row.last_used_at,
            read_at=time.monotonic(),
        )
        if self.cache_seconds > 0:
            with self.lock:
                if len(self.cache) >= CACHE_ENTRIES:
                    self.cache.clear()
                self.cache[prefix] = entry
        return entry

    def touch(self, prefix: str, now: dt.datetime | None = None) -> None:
        """Record the token's use, unless it was recorded less than a minute ago (by any
        instance: the condition is in the UPDATE)."""
        now = now or self.ledger.now()
        with self.ledger.store.write() as connection:
            connection.execute(
                api_tokens.update()
                .where(
                    api_tokens.c.prefix == prefix,
                    sa.or_(
                        api_tokens.c.last_used_at.is_(None),
                        api_tokens.c.last_used_at <= now - TOUCH_EVERY,
                    ),
                )
                .values(last_used_at=now)
            )
        with self.lock:
            entry = self.cache.get(prefix)
            if entry is not None:
                self.cache[prefix] = replace(entry, last_used_at=now)

    # -- shared --------------------------------------------------------------------------

    def check_owner(self, role: str, tenant: str | None) -> str | None:
        """A customer's tenant must be in the ledger; an operator has none."""
        check_choice(role, "role", ROLES)
        if role == OPERATOR:
            if tenant:
                raise SpecError("tenant", "an operator has no tenant")
            return None
        if not tenant:
            raise SpecError("tenant", f"a {CUSTOMER} needs a tenant")
        if self.ledger.registered_tenant(check_name(tenant, "tenant")) is None:
            raise SpecError("tenant", f"no tenant {tenant!r} in the ledger")
        return tenant
