# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Progress and warnings shown by the Pulumi CLI beside the resource: the engine's Log
service (progress as ephemeral messages, which the CLI shows and then drops)."""

from __future__ import annotations

import logging

import grpc
import grpc.aio
from pulumi.runtime.proto import engine_pb2, engine_pb2_grpc

# stderr as well: the engine reads the plugin's port from stdout and logs its stderr.
log = logging.getLogger("pulumi-resource-vce")
LOG_SECONDS = 2.0


class EngineLog:
    def __init__(self, engine_address: str) -> None:
        self.address = engine_address
        self.stub: engine_pb2_grpc.EngineStub | None = None
        # An engine that cannot take a log message is not asked again: progress is a
        # courtesy, never a reason for an operation to wait or fail.
        self.broken = not engine_address

    async def info(self, urn: str, message: str) -> None:
        log.info("%s: %s", urn, message)
        await self.send(engine_pb2.INFO, urn, message, ephemeral=True)

    async def warning(self, urn: str, message: str) -> None:
        log.warning("%s: %s", urn, message)
        await self.send(engine_pb2.WARNING, urn, message, ephemeral=False)

    async def send(self, severity: int, urn: str, message: str, ephemeral: bool) -> None:
        if self.broken:
            return
        if self.stub is None:
            self.stub = engine_pb2_grpc.EngineStub(grpc.aio.insecure_channel(self.address))
        request = engine_pb2.LogRequest(
            severity=severity, message=message, urn=urn, ephemeral=ephemeral
        )
        try:
            await self.stub.Log(request, timeout=LOG_SECONDS)
        except grpc.aio.AioRpcError as error:
            self.broken = True
            log.debug("the engine at %s takes no log messages: %s", self.address, error.code())
