"""The control plane in the test's own process: the real `vce serve` app (create_app, its
action queue and workers) on the test's ledger, one zone per test-driver host on a node file of
the test's own, the base image in every zone's catalogue. Clients reach it through httpx's ASGI
transport; nothing listens on a port."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from vce_server.app import build_context, create_app
from vce_server.settings import Settings

from tests.support.host_records import add_host
from tests.support.images import make_image, register_image
from tests.support.server import free_port

ZONE = "zone-a"
IMAGE = "base"
# A pool named `default`, as a host has one: a Disk's and a boot disk's default pool.
START_SECONDS = 30
NODE = "<node><pool type='dir'><name>default</name><target><path>/default</path></target></pool></node>"


@dataclass(frozen=True)
class InProcess:
    app: FastAPI
    uris: dict[str, str]  # zone -> its host's test-driver URI


@contextlib.contextmanager
def in_process_app(
    ledger_url: str, directory: Path, zones: Mapping[str, Mapping[str, Any]] | None = None
) -> Iterator[InProcess]:
    """The app with its context built and its workers started, as its lifespan does (the
    ASGI transport runs no lifespan); stopped afterwards. Each zone's host gets its settings
    (uplink, public pools, underlay) as add_host takes them."""
    uris = {}
    for number, (zone, host) in enumerate((zones or {ZONE: {}}).items(), start=1):
        node = directory / f"kvm{number}.xml"
        node.write_text(NODE)
        uris[zone] = f"test://{node}"
        add_host(ledger_url, f"kvm{number}", zone, uris[zone], **host)
        register_image(ledger_url, make_image(directory / "base.qcow2"), name=IMAGE, zone=zone)
    settings = Settings(ledger_url=ledger_url, workers=2, rate_per_second=1000, rate_burst=1000)
    app = create_app(settings)
    app.state.context = build_context(settings)
    app.state.context.actions.start()
    try:
        yield InProcess(app, uris)
    finally:
        app.state.context.actions.stop(30.0)


@contextlib.contextmanager
def on_loopback(app: FastAPI) -> Iterator[str]:
    """The in-process app served by uvicorn on a free loopback port, in a thread, for a
    browser: its base URL. Stopped afterwards (the app's lifespan is the caller's)."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(START_SECONDS)
