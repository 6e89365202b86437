"""Run Pulumi programs written against the `pulumi_vce` SDK under mocks and record what they
register, for the SDK's tests.

Each program runs in a thread of its own with a new event loop. Pulumi keeps its runtime
state (the root stack, the settings, the configuration) in context variables and finds its
event loop through asyncio's per-thread slot: a fresh thread starts with neither, so an
`asyncio.run()` elsewhere in the session (which leaves the main thread without a loop) or a
previous program (whose root stack belongs to a closed loop) cannot reach it, and nothing
is left behind for the tests that follow.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
from google.protobuf.json_format import MessageToDict
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.rpc import is_rpc_secret, unwrap_rpc_secret

PROJECT, STACK = "tenant", "dev"
# What the provider's functions answer by default: the tenant's quotas and the catalogue.
QUOTAS = {
    "vms": {"limit": 10, "used": 2, "reserved": 0, "unit": ""},
    "vcpus": {"limit": 16, "used": 4, "reserved": 0, "unit": ""},
    "ram_gib": {"limit": 32, "used": 6, "reserved": 0, "unit": "GiB"},
    "disk_gib": {"limit": 500, "used": 90, "reserved": 0, "unit": "GiB"},
    "public_ips": {"limit": 2, "used": 1, "reserved": 0, "unit": ""},
    "networks": {"limit": 4, "used": 1, "reserved": 0, "unit": ""},
    "zone_links": {"limit": 1, "used": 0, "reserved": 0, "unit": ""},
    "backup_schedules": {"limit": 4, "used": 1, "reserved": 0, "unit": ""},
    "backup_storage_gib": {"limit": 200, "used": 12.5, "reserved": 0, "unit": "GiB"},
}
IMAGES = [
    {
        "zone": "zone-a",
        "name": "debian-12",
        "format": "qcow2",
        "virtualSize": 2 * 1024**3,
        "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    },
    {
        "zone": "zone-a",
        "name": "ubuntu-24.04",
        "format": "qcow2",
        "virtualSize": 3758096384,
        "sha256": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752",
    },
    {
        "zone": "zone-b",
        "name": "debian-12",
        "format": "raw",
        "virtualSize": 2 * 1024**3,
        "sha256": "fd61a03af4f77d870fc21e05e7e80678095c92d808cfb3b5c279ee04c74aca13",
    },
]


def plain(value: Any) -> Any:
    """A value as the mocks saw it, with its secrets unwrapped."""
    if is_rpc_secret(value):
        return plain(unwrap_rpc_secret(value))
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def resource_id(token: str, name: str, inputs: Mapping[str, Any]) -> str:
    """The provider's IDs: `<zone>/<name>`, a schedule under its VM, a zone link by name."""
    zone = plain(inputs.get("zone")) or "zone-a"
    name = plain(inputs.get("name")) or name
    if token == "vce:index:ZoneLink":
        return name
    if token == "vce:index:BackupSchedule":
        return f"{zone}/{plain(inputs['vm'])}/{name}"
    return f"{zone}/{name}"


@dataclass
class Registration:
    """One resource the program registered (or read), as the engine would see it."""

    token: str
    name: str
    id: str | None
    # As the mocks saw them: the mock monitor marks a whole top-level property secret when
    # anything inside it is.
    inputs: dict[str, Any]
    # As the SDK sent them, with secrets where the program put them.
    wire: dict[str, Any]
    read: bool = False
    provider: str = ""
    version: str = ""
    replace_on_changes: list[str] = field(default_factory=list)
    additional_secret_outputs: list[str] = field(default_factory=list)

    @property
    def values(self) -> dict[str, Any]:
        return plain(self.inputs)


@dataclass
class Invoke:
    """One function call the program made, as the engine would see it."""

    token: str
    args: dict[str, Any]
    provider: str = ""
    version: str = ""


class RecordingMocks(pulumi.runtime.Mocks):
    """Answers as the provider would (IDs, defaults, computed outputs, the functions' answers)
    and records every call.

    `existing` holds the state of objects already on the hosts, by ID, for `X.get()`;
    `quotas` and `images` what getQuotas and getImages answer (QUOTAS and IMAGES when None);
    `failures` the check failures (property, reason) a function answers instead, by token.
    """

    def __init__(
        self,
        existing: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        quotas: Mapping[str, Mapping[str, Any]] | None = None,
        images: list[Mapping[str, Any]] | None = None,
        failures: Mapping[str, list[tuple[str, str]]] | None = None,
    ) -> None:
        self.calls: dict[tuple[str, str], pulumi.runtime.MockResourceArgs] = {}
        self.existing = dict(existing or {})
        self.quotas = QUOTAS if quotas is None else quotas
        self.images = IMAGES if images is None else images
        self.failures = dict(failures or {})

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        self.calls[args.typ, args.name] = args
        if args.resource_id:
            return args.resource_id, dict(self.existing[args.resource_id])
        if args.typ.startswith("pulumi:providers:"):
            return f"{args.name}-provider", dict(args.inputs)
        state = {**args.inputs, "name": args.inputs.get("name") or args.name}
        if args.typ == "vce:index:Vm":
            state |= {
                "powerState": "running",
                "nicAddresses": [
                    {
                        "network": plain(nic["network"]),
                        "mac": "52:54:00:00:00:01",
                        "ip": nic.get("ip", ""),
                    }
                    for nic in plain(args.inputs.get("nics", []))
                ],
            }
        if args.typ == "vce:index:PublicIp":
            state |= {"allocatedAddress": "203.0.113.10", "pool": "public", "bound": True}
        return resource_id(args.typ, args.name, args.inputs), state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list[tuple[str, str]]]:
        if args.token in self.failures:
            return {}, self.failures[args.token]
        if args.token == "vce:index:getQuotas":
            return {"quotas": self.quotas}, []
        if args.token == "vce:index:getImages":
            zone = args.args.get("zone")
            return {"images": [i for i in self.images if zone in (None, i["zone"])]}, []
        raise AssertionError(f"the provider has no function {args.token}")


class RecordingMonitor(MockMonitor):
    """The mock monitor, also keeping the resource options that reach the engine."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.registrations: dict[str, Registration] = {}
        self.invokes: list[Invoke] = []

    def Invoke(self, request: Any) -> Any:
        self.invokes.append(
            Invoke(
                token=request.tok,
                args=MessageToDict(request.args),
                provider=request.provider,
                version=request.version,
            )
        )
        return super().Invoke(request)

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.registrations[request.name] = Registration(
                token=request.type,
                name=request.name,
                id=response.id,
                inputs=self.mocks.calls[request.type, request.name].inputs,
                wire=MessageToDict(request.object),
                provider=request.provider,
                version=request.version,
                replace_on_changes=list(request.replaceOnChanges),
                additional_secret_outputs=list(request.additionalSecretOutputs),
            )
        return response

    def ReadResource(self, request: Any) -> Any:
        response = super().ReadResource(request)
        self.registrations[request.name] = Registration(
            token=request.type,
            name=request.name,
            id=request.id,
            inputs=self.mocks.calls[request.type, request.name].inputs,
            wire=MessageToDict(request.properties),
            read=True,
            provider=request.provider,
            version=request.version,
            additional_secret_outputs=list(request.additionalSecretOutputs),
        )
        return response


@dataclass
class Run:
    registrations: dict[str, Registration]
    invokes: list[Invoke]
    outputs: dict[str, Any]
    secret_outputs: set[str]


def run_program(
    program: Callable[[], Mapping[str, Any] | None],
    *,
    config: Mapping[str, Any] | None = None,
    secret_config: tuple[str, ...] = (),
    mocks: RecordingMocks | None = None,
    timeout: float = 60,
) -> Run:
    """Run `program` under mocks; its outputs (exported or returned) come back resolved.

    `config` is the stack's `vce:*` configuration by key (objects as the CLI passes them, JSON).
    `mocks` answer as the provider would (defaults when None). An exception the program raises
    is raised here.
    """
    box: dict[str, Any] = {}

    def work() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            answering = mocks or RecordingMocks()
            box["run"] = _run(loop, program, config or {}, secret_config, answering)
        # Anything, even a KeyboardInterrupt, must reach the test: this thread cannot report it.
        except BaseException as error:
            box["error"] = error
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            asyncio.set_event_loop(None)
            loop.close()

    thread = threading.Thread(target=work, name="pulumi-program", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"the program did not finish within {timeout}s")
    if "error" in box:
        raise box["error"]
    return box["run"]


def _run(
    loop: asyncio.AbstractEventLoop,
    program: Callable[[], Mapping[str, Any] | None],
    config: Mapping[str, Any],
    secret_config: tuple[str, ...],
    mocks: RecordingMocks,
) -> Run:
    pulumi.runtime.set_all_config(
        {
            f"vce:{key}": value if isinstance(value, str) else json.dumps(value)
            for key, value in config.items()
        },
        [f"vce:{key}" for key in secret_config],
    )
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=STACK, preview=False, monitor=monitor)
    exports: dict[str, Any] = {}

    @pulumi.runtime.test
    def body() -> None:
        exports.update(program() or {})

    body()
    # What the program exported with pulumi.export(), then what it returned.
    exports = {**pulumi.runtime.settings.get_root_resource().outputs, **exports}
    outputs = {k: pulumi.Output.from_input(v) for k, v in exports.items()}
    return Run(
        registrations=monitor.registrations,
        invokes=monitor.invokes,
        outputs={k: loop.run_until_complete(o.future()) for k, o in outputs.items()},
        secret_outputs={k for k, o in outputs.items() if loop.run_until_complete(o.is_secret())},
    )
