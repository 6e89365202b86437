"""The personal cabinet as a browser meets it, without a browser: an HTTP client that keeps
cookies, logs in through the login form, and sends forms with the page's CSRF token, against
the real app in this process (tests.support.app)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.support.ledger import register

PASSWORD = "correct horse battery staple"
HIDDEN = re.compile(r'<input type="hidden" name="(csrf|key)" value="([^"]*)"')


def hidden_fields(html: str) -> dict[str, str]:
    """The page's first CSRF token and form key (every form of a page carries the same
    CSRF token)."""
    found: dict[str, str] = {}
    for name, value in HIDDEN.findall(html):
        found.setdefault(name, value)
    return found


class Visitor:
    """One browser: its own cookies, no redirects followed unless asked."""

    def __init__(self, app: FastAPI) -> None:
        self.client = TestClient(app, base_url="http://testserver", follow_redirects=False)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def log_in(self, login: str, password: str = PASSWORD) -> httpx.Response:
        page = self.client.get("/panel/login")
        token = hidden_fields(page.text)["csrf"]
        return self.client.post(
            "/panel/login",
            data={"csrf": token, "login": login, "password": password, "next": "/panel/"},
        )

    def form_token(self, page: str = "/panel/account") -> str:
        return hidden_fields(self.client.get(page).text)["csrf"]

    def submit(
        self, path: str, data: dict[str, str] | None = None, page: str = "/panel/account"
    ) -> httpx.Response:
        """POST a form as the page `page` would send it: with the session's CSRF token."""
        return self.client.post(path, data={"csrf": self.form_token(page), **(data or {})})


@dataclass
class Cabinet:
    """The app and the tenants and users a test made in its ledger."""

    app: FastAPI
    ledger_url: str
    logins: dict[str, str] = field(default_factory=dict)  # login -> tenant (None: operator)

    @property
    def context(self) -> Any:
        return self.app.state.context

    def customer(self, tenant: str, login: str | None = None, **terms: Any) -> Visitor:
        """A tenant (registered once) and a logged-in user of it."""
        if tenant not in self.logins.values():
            register(self.ledger_url, tenant, **terms)
        login = login or f"{tenant}-user"
        self.context.identity.create_user(login, PASSWORD, "customer", tenant)
        self.logins[login] = tenant
        return self.logged_in(login)

    def operator(self, login: str = "op") -> Visitor:
        self.context.identity.create_user(login, PASSWORD, "operator")
        self.logins[login] = None
        return self.logged_in(login)

    def logged_in(self, login: str) -> Visitor:
        visitor = Visitor(self.app)
        answer = visitor.log_in(login)
        assert answer.status_code == 303, answer.text
        return visitor
