"""The provider's HTTP client: Idempotency-Keys from the Pulumi operation, 429/503 retried
after a bounded Retry-After, a server that is down waited for, a key whose action has ended
moved on, a long wait given up at the deadline. The servers here are small ASGI apps of the
test's own (or a real uvicorn on loopback), each answering what the test is about."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pulumi_resource_vce import client as client_module
from pulumi_resource_vce.client import ApiFailure, Client, key_of, next_key
from pulumi_resource_vce.config import ProviderConfig

TOKEN = "vce_0123abcd_s3cr3t-Part"
URN = "urn:pulumi:dev::shop::vce:index:Vm::web"


def config(endpoint: str = "http://vce.test") -> ProviderConfig:
    return ProviderConfig(endpoint, TOKEN)


def over(app: FastAPI) -> Client:
    return Client(config(), transport=httpx.ASGITransport(app=app))


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The client's waits, recorded and shortened: a Retry-After of 30 s is what the test
    checks, not what it waits for."""
    waited: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        waited.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(client_module.asyncio, "sleep", sleep)
    return waited


def busy_then_fine(answers: list[tuple[int, dict[str, str]]]) -> tuple[FastAPI, list[str]]:
    """An app that answers each status (with its headers) in turn, then 200."""
    app = FastAPI()
    seen: list[str] = []

    @app.get("/v1/zones")
    def zones(request: Request) -> JSONResponse:
        seen.append(request.headers["authorization"])
        if len(seen) <= len(answers):
            status, headers = answers[len(seen) - 1]
            error = {"code": "busy", "message": "try later", "fields": [], "request_id": "x"}
            return JSONResponse({"error": error}, status_code=status, headers=headers)
        return JSONResponse({"zones": ["zone-a"]})

    return app, seen


def test_keys_follow_the_operation_the_resource_and_the_declaration():
    body = {"memory_mib": 128, "boot_disk": {"image": "base", "size_gib": 1}}
    key = key_of("create", URN, body)
    assert key.startswith("pulumi-") and len(key) == len("pulumi-") + 48
    assert key == key_of("create", URN, dict(reversed(body.items())))  # order is no difference
    others = {
        key_of("update", URN, body),
        key_of("create", URN + "2", body),
        key_of("create", URN, {**body, "memory_mib": 256}),
    }
    assert key not in others and len(others) == 3
    assert next_key(key, "a1") == next_key(key, "a1") != next_key(key, "a2")
    assert next_key(key, "a1") != key


def test_429_and_503_are_retried_after_the_bounded_retry_after(sleeps):
    app, seen = busy_then_fine(
        [
            (503, {"Retry-After": "2"}),
            (429, {"Retry-After": "3600"}),
            (429, {}),
            (503, {"Retry-After": "soon"}),
        ]
    )
    client = over(app)
    assert asyncio.run(client.get("/v1/zones")) == {"zones": ["zone-a"]}
    assert len(seen) == 5
    # The server's 2 s; an hour cut to 30 s; no or a bad Retry-After: the growing back-off.
    assert sleeps == [2.0, client_module.RETRY_AFTER_MAX, *client_module.BACKOFF[3:5]]
    assert set(seen) == {f"Bearer {TOKEN}"}


def test_retries_are_bounded(sleeps):
    app, seen = busy_then_fine([(429, {"Retry-After": "1"})] * 10)
    with pytest.raises(ApiFailure) as caught:
        asyncio.run(over(app).get("/v1/zones"))
    assert (caught.value.status, caught.value.code, str(caught.value)) == (429, "busy", "try later")
    assert len(seen) == 1 + client_module.RETRY_TRIES
    assert sleeps == [1.0] * client_module.RETRY_TRIES


def test_an_error_answer_names_its_fields_and_a_refused_token_is_not_shown():
    app = FastAPI()

    @app.put("/v1/vms/web")
    def put() -> JSONResponse:
        fields = [{"path": "boot_disk.size_gib", "reason": "must be at least 1"}]
        error = {"code": "invalid", "message": "bad", "fields": fields, "request_id": "x"}
        return JSONResponse({"error": error}, status_code=422)

    @app.get("/v1/zones")
    def zones() -> JSONResponse:
        return JSONResponse({"error": {"code": "unauthorized", "message": "bad token"}}, 401)

    @app.get("/v1/images")
    def images() -> JSONResponse:
        return JSONResponse(["not the error shape"], 502)

    client = over(app)
    with pytest.raises(ApiFailure) as caught:
        asyncio.run(client.call("PUT", "/v1/vms/web", body={}))
    assert caught.value.fields == [("boot_disk.size_gib", "must be at least 1")]
    with pytest.raises(ApiFailure) as caught:
        asyncio.run(client.get("/v1/zones"))
    assert str(caught.value) == "the control plane refused the token (bad token): check vce:token"
    with pytest.raises(ApiFailure) as caught:
        asyncio.run(client.get("/v1/images"))
    assert (caught.value.status, str(caught.value)) == (502, "502 Bad Gateway")


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving_later(app: FastAPI, port: int, delay: float) -> Iterator[None]:
    """A real uvicorn on `port`, started `delay` seconds from now (a server restarting)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))

    def run() -> None:
        time.sleep(delay)
        server.run()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_server_that_is_down_is_waited_for():
    app, seen = busy_then_fine([])
    port = free_port()
    client = Client(config(f"http://127.0.0.1:{port}"))
    started = time.monotonic()
    with serving_later(app, port, delay=1.0):
        assert asyncio.run(client.get("/v1/zones")) == {"zones": ["zone-a"]}
    assert 1.0 <= time.monotonic() - started < 10
    assert len(seen) == 1


def test_a_server_down_for_too_long_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(client_module, "OUTAGE_SECONDS", 0.6)
    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ApiFailure) as caught:
        asyncio.run(Client(config(endpoint)).get("/v1/zones"))
    assert caught.value.code == "unreachable"
    assert str(caught.value).startswith(f"the control plane at {endpoint} did not answer for 1 s")
    assert "s3cr3t" not in str(caught.value)


def action(status: str, number: int = 1) -> dict:
    return {"id": f"a{number}", "target": "vm web", "status": status}


def replaying(ended: int) -> tuple[FastAPI, list[str]]:
    """An app whose first `ended` keys replay actions that have ended; then a new one."""
    app = FastAPI()
    keys: list[str] = []

    @app.put("/v1/vms/web")
    def put(request: Request) -> JSONResponse:
        keys.append(request.headers["idempotency-key"])
        if len(keys) <= ended:
            return JSONResponse(
                {"action": action("succeeded", len(keys))},
                202,
                headers={"Idempotent-Replayed": "true"},
            )
        return JSONResponse({"action": action("queued", len(keys))}, 202)

    return app, keys


def test_a_key_whose_action_has_ended_moves_to_the_next_key():
    app, keys = replaying(ended=2)
    found = asyncio.run(over(app).submit("PUT", "/v1/vms/web", "pulumi-k", body={}))
    assert found == action("queued", 3)
    assert keys == [
        "pulumi-k",
        next_key("pulumi-k", "a1"),
        next_key(next_key("pulumi-k", "a1"), "a2"),
    ]


def test_keys_move_on_a_bounded_number_of_times():
    app, keys = replaying(ended=100)
    with pytest.raises(ApiFailure, match="too many earlier actions under one key"):
        asyncio.run(over(app).submit("PUT", "/v1/vms/web", "pulumi-k", body={}))
    assert len(keys) == client_module.KEY_HOPS


def test_a_running_action_replayed_is_this_operations_own():
    app = FastAPI()

    @app.put("/v1/vms/web")
    def put() -> JSONResponse:
        return JSONResponse({"action": action("running")}, 202, {"Idempotent-Replayed": "true"})

    found = asyncio.run(over(app).submit("PUT", "/v1/vms/web", "pulumi-k", body={}))
    assert found == action("running")


def test_a_wait_polls_shows_progress_and_gives_up_at_the_deadline():
    app = FastAPI()
    polls: list[str] = []

    @app.get("/v1/actions/{action_id}")
    def poll(action_id: str, wait: int) -> JSONResponse:
        polls.append(f"{action_id}?wait={wait}")
        status = "succeeded" if len(polls) == 3 else "running"
        return JSONResponse({"action": {**action(status), "progress": {"step": f"s{len(polls)}"}}})

    client = over(app)
    shown: list[str] = []

    async def progress(step: str) -> None:
        shown.append(step)

    done = asyncio.run(client.wait(action("queued"), time.monotonic() + 100, progress))
    assert done["status"] == "succeeded"
    assert polls == ["a1?wait=30"] * 3
    assert shown == ["vm web: running (s1)", "vm web: running (s2)", "vm web: succeeded (s3)"]
    with pytest.raises(ApiFailure) as caught:
        asyncio.run(client.wait(action("running"), time.monotonic() - 1))
    assert caught.value.code == "timeout"
    assert "action a1 (vm web) is still running: it goes on in the control plane" in str(
        caught.value
    )
