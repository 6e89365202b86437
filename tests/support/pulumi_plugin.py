"""The vce plugin started exactly as the Pulumi CLI's Python language host starts a plugin
directory (`python -u <dir> <engine address>`, the port read from its first stdout line), and
driven with the SDK's provider_pb2 stubs; configured with a control plane's URL and a token.
Every response (and every error's text) is kept, for tests that look for secrets in them."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
from collections.abc import Iterator, Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime.proto import engine_pb2, engine_pb2_grpc, provider_pb2, provider_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = ROOT / "pulumi" / "provider"
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
SIG_KEY = "4dabf18193072939515e22adb298388d"
START_SECONDS = 60
CONFIG_ENV = ("VCE_ENDPOINT", "VCE_TOKEN")
# An engine address nothing answers on: the plugin's log messages go to its stderr only.
NO_ENGINE = "127.0.0.1:1"
PROVIDER_URN = "urn:pulumi:dev::tenant::pulumi:providers:vce::default"


def secret(value: Any) -> dict[str, Any]:
    return {SIG_KEY: SECRET_SIG, "value": value}


def struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    json_format.ParseDict(dict(values), message)
    return message


def plain(message: struct_pb2.Struct) -> dict[str, Any]:
    """The struct as JSON values, with whole numbers as ints (the wire has floats)."""
    return normalise(json_format.MessageToDict(message))


def normalise(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


class RecordingStub:
    """The provider stub, keeping each response and each error's details in `seen`."""

    def __init__(self, channel: grpc.Channel, seen: list[Any]) -> None:
        self.stub = provider_pb2_grpc.ResourceProviderStub(channel)
        self.seen = seen

    def __getattr__(self, method: str) -> Any:
        call = getattr(self.stub, method)

        def recorded(request: Any, **kwargs: Any) -> Any:
            try:
                response = call(request, **kwargs)
            except grpc.RpcError as error:
                self.seen.append(error.details())
                raise
            self.seen.append(response)
            return response

        return recorded


class EngineLogs(engine_pb2_grpc.EngineServicer):
    """The Pulumi engine's Log service, as the plugin reaches it: every message kept."""

    def __init__(self) -> None:
        self.messages: list[engine_pb2.LogRequest] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        engine_pb2_grpc.add_EngineServicer_to_server(self, self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    def Log(self, request: engine_pb2.LogRequest, context: Any) -> empty_pb2.Empty:
        self.messages.append(request)
        return empty_pb2.Empty()


@contextlib.contextmanager
def running_engine() -> Iterator[EngineLogs]:
    engine = EngineLogs()
    engine.server.start()
    try:
        yield engine
    finally:
        engine.server.stop(grace=None)


class Plugin:
    def __init__(self, env: Mapping[str, str] | None = None, engine: str = NO_ENGINE) -> None:
        # The provider's own environment variables only when the test gives them.
        inherited = {k: v for k, v in os.environ.items() if k not in CONFIG_ENV}
        self.process = subprocess.Popen(
            [sys.executable, "-u", str(PLUGIN_DIR), engine],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**inherited, **(env or {})},
            text=True,
        )
        self.port = self.read_port()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.responses: list[Any] = []
        self.stub = RecordingStub(self.channel, self.responses)

    def read_port(self) -> int:
        ready, _writable, _failed = select.select([self.process.stdout], [], [], START_SECONDS)
        line = self.process.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            self.process.kill()
            _out, err = self.process.communicate(timeout=10)
            raise RuntimeError(f"the plugin printed {line!r} instead of its port: {err}")
        return int(line)

    def close(self) -> str:
        """Stop the plugin as the engine does; its stderr."""
        self.channel.close()
        self.process.terminate()
        try:
            _out, err = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _out, err = self.process.communicate(timeout=10)
        return err

    # -- requests ---------------------------------------------------------------------------

    def configure(self, variables: Mapping[str, Any]) -> provider_pb2.ConfigureResponse:
        return self.stub.Configure(
            provider_pb2.ConfigureRequest(
                variables={f"vce:config:{k}": v for k, v in variables.items()},
                acceptSecrets=True,
                acceptResources=True,
            )
        )

    def connect(self, endpoint: str, token: str) -> provider_pb2.ConfigureResponse:
        """Configured as `pulumi config set vce:endpoint` and `--secret vce:token` do."""
        return self.configure({"endpoint": endpoint, "token": token})

    def check_config(self, news: Mapping[str, Any]) -> provider_pb2.CheckResponse:
        return self.stub.CheckConfig(provider_pb2.CheckRequest(urn=PROVIDER_URN, news=struct(news)))

    def invoke(self, token: str, args: Mapping[str, Any] | None = None):
        response = self.stub.Invoke(provider_pb2.InvokeRequest(tok=token, args=struct(args or {})))
        return plain(getattr(response, "return")), [
            (f.property, f.reason) for f in response.failures
        ]

    def check(self, urn: str, news: Mapping[str, Any], olds: Mapping[str, Any] | None = None):
        response = self.stub.Check(
            provider_pb2.CheckRequest(urn=urn, news=struct(news), olds=struct(olds or {}))
        )
        return plain(response.inputs), [(f.property, f.reason) for f in response.failures]

    def diff(self, urn: str, resource_id: str, olds: Mapping[str, Any], news: Mapping[str, Any]):
        return self.stub.Diff(
            provider_pb2.DiffRequest(urn=urn, id=resource_id, olds=struct(olds), news=struct(news))
        )

    def create(self, urn: str, properties: Mapping[str, Any], preview: bool = False):
        response = self.stub.Create(
            provider_pb2.CreateRequest(urn=urn, properties=struct(properties), preview=preview)
        )
        return response.id, plain(response.properties)

    def read(self, urn: str, resource_id: str, properties=None, inputs=None):
        response = self.stub.Read(
            provider_pb2.ReadRequest(
                urn=urn,
                id=resource_id,
                properties=struct(properties or {}),
                inputs=struct(inputs or {}),
            )
        )
        return response.id, plain(response.properties), plain(response.inputs)

    def update(self, urn: str, resource_id: str, olds, news, preview: bool = False):
        response = self.stub.Update(
            provider_pb2.UpdateRequest(
                urn=urn, id=resource_id, olds=struct(olds), news=struct(news), preview=preview
            )
        )
        return plain(response.properties)

    def delete(self, urn: str, resource_id: str, properties: Mapping[str, Any]) -> None:
        self.stub.Delete(
            provider_pb2.DeleteRequest(urn=urn, id=resource_id, properties=struct(properties))
        )


def urn(token: str, name: str, stack: str = "dev", project: str = "tenant") -> str:
    return f"urn:pulumi:{stack}::{project}::{token}::{name}"


@contextlib.contextmanager
def running_plugin(
    env: Mapping[str, str] | None = None, engine: str = NO_ENGINE
) -> Iterator[Plugin]:
    plugin = Plugin(env, engine)
    try:
        yield plugin
    finally:
        plugin.close()
