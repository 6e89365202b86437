"""The cabinet's VM console as a browser uses it against a real `vce serve`: log in over HTTP
(cookies kept), ask the console page for a ticket with its CSRF token, open the websocket
from the server's origin with the session's cookie, and read what arrives."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.cabinet import PASSWORD, hidden_fields


@dataclass
class Console:
    """One viewer's socket and everything it received: output bytes, text notices."""

    socket: ClientConnection
    output: bytearray = field(default_factory=bytearray)
    notices: list[str] = field(default_factory=list)

    def read_until(self, wanted: bytes, seconds: float, start: int = 0) -> bytes:
        """The output once `wanted` is in it past `start`; AssertionError after `seconds`."""
        deadline = time.monotonic() + seconds
        while wanted not in self.output[start:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {wanted!r} in {bytes(self.output[-2000:])!r}")
            try:
                frame = self.socket.recv(timeout=left)
            except TimeoutError:
                continue
            if isinstance(frame, str):
                self.notices.append(frame)
            else:
                self.output += frame
        return bytes(self.output)

    def read_to_close(self, seconds: float) -> int:
        """The close code, once the server closed the socket."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                frame = self.socket.recv(timeout=deadline - time.monotonic())
            except TimeoutError:
                break
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else 0
            if isinstance(frame, str):
                self.notices.append(frame)
        raise AssertionError(f"the socket stayed open; notices {self.notices}")


class Browser:
    """A customer's browser of the cabinet at `url`: cookies kept, forms with their token."""

    def __init__(self, url: str, login: str, password: str = PASSWORD) -> None:
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=30, follow_redirects=False)
        page = self.client.get("/panel/login")
        token = hidden_fields(page.text)["csrf"]
        answer = self.client.post(
            "/panel/login", data={"csrf": token, "login": login, "password": password}
        )
        assert answer.status_code == 303, answer.text

    def ticket_url(self, vm: str) -> str:
        """The websocket path with a fresh ticket, as the page's button gets it."""
        page = self.client.get(f"/panel/vms/{vm}/console")
        assert page.status_code == 200 and "Open the console" in page.text, page.text
        answer = self.client.post(
            f"/panel/vms/{vm}/console/ticket", data={"csrf": hidden_fields(page.text)["csrf"]}
        )
        assert answer.status_code == 200, answer.text
        return answer.json()["url"]

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[Console]:
        """The socket as the console page opens it: this origin, the session's cookie."""
        with connect(
            self.url.replace("http://", "ws://", 1) + path,
            origin=self.url,
            additional_headers={"Cookie": f"vce_session={self.client.cookies['vce_session']}"},
            open_timeout=30,
        ) as socket:
            yield Console(socket)

    def close(self) -> None:
        self.client.close()
