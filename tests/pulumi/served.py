"""The control plane in this process for the provider's tests (tests.support.app), and
providers configured with a tenant's token, talking to the app through httpx's ASGI
transport."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import libvirt
from ansible_collections.vce.kvm.plugins.module_utils.host import connection
from fastapi import FastAPI
from pulumi.provider.experimental.property_value import PropertyValue
from pulumi.provider.experimental.provider import (
    CheckRequest,
    CreateRequest,
    DeleteRequest,
    DiffRequest,
    InvokeRequest,
    ReadRequest,
    UpdateRequest,
)
from pulumi_resource_vce.adapter import from_values, to_values
from pulumi_resource_vce.client import Client
from pulumi_resource_vce.config import ProviderConfig
from pulumi_resource_vce.provider import VceProvider

from tests.support.app import in_process_app
from tests.support.ledger import register
from tests.support.server import create_token

ENDPOINT = "http://vce.test"


def urn(kind: str, name: str) -> str:
    return f"urn:pulumi:dev::shop::vce:index:{kind}::{name}"


@dataclass
class Served:
    ledger_url: str
    uri: str
    app: FastAPI
    tokens: dict[str, str] = field(default_factory=dict)

    def tenant(self, name: str, **terms: Any) -> str:
        register(self.ledger_url, name, **terms)
        self.tokens[name] = create_token(self.ledger_url, name)
        return self.tokens[name]

    def provider(self, tenant: str, token: str | None = None) -> Tenant:
        config = ProviderConfig(ENDPOINT, token or self.tokens[tenant])
        provider = VceProvider()
        provider.config = config
        provider.client = Client(config, transport=httpx.ASGITransport(app=self.app))
        return Tenant(provider, tenant)

    def libvirt(self) -> libvirt.virConnect:
        """The engine's own connection to the host (opened once per test): the test driver's
        objects live in it."""
        return connection.connect(self.uri)

    def domain(self, tenant: str, name: str) -> libvirt.virDomain | None:
        try:
            return self.libvirt().lookupByName(f"{tenant}_{name}")
        except libvirt.libvirtError:
            return None


@dataclass
class Tenant:
    """One tenant's provider, with the calls the Pulumi engine makes, on plain values."""

    provider: VceProvider
    name: str

    async def check(self, kind: str, name: str, news: dict, olds: dict | None = None):
        request = CheckRequest(urn(kind, name), from_values(olds or {}), from_values(news), b"")
        answer = await self.provider.check(request)
        return to_values(answer.inputs)[0], [(f.property, f.reason) for f in answer.failures]

    async def create(self, kind: str, name: str, inputs: dict, preview: bool = False):
        request = CreateRequest(urn(kind, name), from_values(inputs), 60.0, preview)
        answer = await self.provider.create(request)
        return answer.resource_id, answer.properties

    async def read(self, kind: str, name: str, resource_id: str, state=None, inputs=None):
        request = ReadRequest(
            urn(kind, name), resource_id, from_values(state or {}), from_values(inputs or {})
        )
        answer = await self.provider.read(request)
        return answer.resource_id, to_values(answer.properties)[0], to_values(answer.inputs)[0]

    async def diff(self, kind: str, name: str, resource_id: str, state: dict, news: dict):
        request = DiffRequest(
            urn(kind, name), resource_id, from_values(state), from_values(news), []
        )
        return await self.provider.diff(request)

    async def update(self, kind: str, name: str, resource_id: str, olds: dict, news: dict):
        request = UpdateRequest(
            urn(kind, name), resource_id, from_values(olds), from_values(news), 60.0, [], False
        )
        return (await self.provider.update(request)).properties

    async def delete(self, kind: str, name: str, resource_id: str, state: dict) -> None:
        request = DeleteRequest(urn(kind, name), resource_id, from_values(state), 60.0)
        await self.provider.delete(request)

    async def invoke(self, token: str, args: dict) -> dict:
        answer = await self.provider.invoke(InvokeRequest(token, from_values(args)))
        if answer.failures:
            raise AssertionError(answer.failures)
        return to_values(answer.return_value)[0]

    async def close(self) -> None:
        await self.provider.client.close()


def plain(properties: dict[str, PropertyValue]) -> dict[str, Any]:
    return to_values(properties)[0]


@contextlib.contextmanager
def served_app(
    ledger_url: str, directory: Path, zones: Mapping[str, Mapping[str, Any]] | None = None
) -> Iterator[Served]:
    """The app in this process (tests.support.app), its first zone's host as `uri`."""
    with in_process_app(ledger_url, directory, zones) as served:
        yield Served(ledger_url, next(iter(served.uris.values()), ""), served.app)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)
