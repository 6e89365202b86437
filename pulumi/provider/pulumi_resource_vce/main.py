# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plugin's entry point: a gRPC server on a free loopback port, printed first on stdout
as the Pulumi engine expects (`pulumi-resource-vce <engine address>`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
from pulumi.provider.experimental.server import ProviderServicer
from pulumi.runtime._grpc_settings import _GRPC_CHANNEL_OPTIONS
from pulumi.runtime.proto import provider_pb2_grpc

from . import VERSION
from .provider import ProviderError, VceProvider

HANDLED = (
    "Configure", "CheckConfig", "Check", "Diff", "Create", "Read", "Update", "Delete", "Invoke",
)  # fmt: skip


class Servicer(ProviderServicer):
    """The SDK's servicer, except that our own failures reach the user as their message: the
    SDK's handlers append a Python stack to every error."""


def plain_errors(handler: Callable[..., Any]) -> Callable[..., Any]:
    async def handle(self: Servicer, request: Any, context: Any) -> Any:
        try:
            return await handler(self, request, context)
        except Exception as error:
            cause = error if isinstance(error, ProviderError) else error.__context__
            if isinstance(cause, ProviderError):
                await context.abort(grpc.StatusCode.UNKNOWN, str(cause))
            raise

    return handle


for _name in HANDLED:
    setattr(Servicer, _name, plain_errors(getattr(ProviderServicer, _name)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The vce Pulumi provider (a gRPC server)")
    parser.add_argument("engine", nargs="?", default="", help="the Pulumi engine's address")
    parser.add_argument("--logflow", action="store_true", help="accepted, ignored")
    parser.add_argument("--logtostderr", action="store_true", help="accepted, ignored")
    parser.add_argument("-v", dest="verbosity", help="accepted, ignored")
    args, _unknown = parser.parse_known_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.engine))


async def serve(engine_address: str) -> None:
    server = grpc.aio.server(options=_GRPC_CHANNEL_OPTIONS)
    servicer = Servicer(
        sys.argv[1:], VERSION, VceProvider(engine_address), engine_address=engine_address
    )
    provider_pb2_grpc.add_ResourceProviderServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    await server.wait_for_termination()
