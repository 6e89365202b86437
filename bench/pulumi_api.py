"""The Pulumi provider as a client of ``vce serve``: Check + Diff on a no-change preview of a
100-resource stack, and a refresh (Read) of the same 100 resources, through the plugin over
gRPC against a real server, each against the engine's own in-process work plus HTTP round
trips.

Issue 19: "Check + Diff per resource on a no-change preview of a 100-resource stack at most
2x the in-process validation plus one HTTP round trip; a refresh (Read) of 100 resources at
most 1.5x the in-process reads plus the round trips."

Set-up (bench/api_common.py): a private libvirtd (tools.libvirtd) with a dir pool and an
empty 64 MiB qcow2 base image in the catalogue of zone ``bench`` (the server and this
process must read the same objects: ``test:///default`` lives in each process); a SQLite
ledger with the tenant ``bench``, the host record of zone ``bench`` on that daemon, and
read-write tokens. The stack: 40 VMs (1 vCPU, 128 MiB, a 1 GiB overlay boot disk, one NIC,
stopped), 30 disks (1 GiB) and 30 isolated networks (10.244.N.0/24, the VMs' NICs spread over
them), defined by ONE ``engine.run_environment`` call after the tenant was placed on the host
as the server's first PUT places it. Then ``vce serve`` on a free loopback port with its
default options, and the plugin started as the Pulumi CLI's language host starts it
(``python -u pulumi/provider 127.0.0.1:1``; tests/support/pulumi_plugin.py), configured with
the server's URL and a token. Each resource's checked inputs come from one Check with empty
olds (through the server's ``POST /v1/{kind}/{name}/check``), its state from one Read.

Measured, alternating so that background load hits every side alike, after 1 warm-up round,
N rounds (default 5) of:

- PREVIEW, through the plugin: per resource Check(olds = news = the checked inputs) then
  Diff(olds = the state, news = what Check returned), as the engine previews an unchanged
  stack (each Check must return the same inputs without failures, each Diff DIFF_NONE);
- PARSE, in this process: the engine's parsers (``core.spec.parse_vm``/``parse_disk``/
  ``parse_network`` on ``core.fields.declared`` of the declaration the plugin sends, as the
  server's validation calls them) on the same 100 declarations;
- ROUND TRIP: ``GET /v1/zones`` with a token over a keep-alive loopback connection (httpx),
  20 times;
- REFRESH, through the plugin: Read(id, state, inputs) of each resource, one after another
  (each must find its object);
- READS, in this process: the engine's read behind ``GET /v1/{kind}/{name}``
  (``engine.facade.read_object`` with the parameters the service layer passes) of each object;
- for the split between the plugin and the server, not the verdict: ``GET /v1/{kind}/{name}``
  of each object with httpx.

Figures per resource (a pass's time / 100). Targets: PREVIEW <= 2 x (PARSE + ROUND TRIP);
REFRESH <= 1.5 x (READS + ROUND TRIP), medians. ``vce serve`` limits a token to 20 requests/s
in bursts of 100: the plugin takes a fresh token before each refresh pass (an untimed
Configure) and the HTTP client 4 tokens in turn, so the limit a customer meets is not what is
measured.

Prints a table; writes bench/results/pulumi_api.json and a section of docs/benchmarks.md
(between markers; not with --no-doc). Exit 0 when both targets are met, 1 when not, 2 when
the set-up, a check or a measurement failed.

``--quick`` (for CI): 2 resources of each kind, 1 round after 1 warm-up; nothing written;
exit 0 unless something broke.

    .venv/bin/python bench/pulumi_api.py [--rounds 5] [--no-doc] [--quick]    # about 3 min
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import api_common as common

PLUGIN_DIR = common.ROOT / "pulumi" / "provider"
if str(PLUGIN_DIR) not in sys.path:
    sys.path.insert(0, str(PLUGIN_DIR))

from google.protobuf import struct_pb2  # noqa: E402
from pulumi.runtime.proto import provider_pb2  # noqa: E402

from tests.support.pulumi_plugin import Plugin, plain, struct, urn  # noqa: E402

PREVIEW_RATIO = 2.0
REFRESH_RATIO = 1.5
COUNTS = {"Vm": 40, "Disk": 30, "Network": 30}
QUICK_COUNTS = {"Vm": 2, "Disk": 2, "Network": 2}
QUICK_ROUNDS = 1
ROUND_TRIPS = 20  # GET /v1/zones samples per round
# The HTTP client's requests (the round trips, the reads over HTTP) take these in turn: about
# 120 a round, so no token meets its rate limit.
HTTP_TOKENS = 4
MEMORY_MIB = 128
SIZE_GIB = 1
RPC_TIMEOUT = 60.0  # seconds, per gRPC call
DIFF_NONE = provider_pb2.DiffResponse.DIFF_NONE
SECTIONS = {"Vm": "vms", "Disk": "disks", "Network": "networks"}


class BenchError(Exception):
    """A check of the benchmark's own failed: the figures would mean nothing."""


@dataclass
class Resource:
    kind: str  # Vm, Disk, Network
    name: str
    inputs: dict[str, Any]  # as the program declares them
    checked: struct_pb2.Struct | None = None  # Check's answer with empty olds
    state: struct_pb2.Struct | None = None  # Read's answer: inputs and outputs
    declaration: dict[str, Any] | None = None  # the API's body, as the plugin sends it

    @property
    def token(self) -> str:
        return f"vce:index:{self.kind}"

    @property
    def urn(self) -> str:
        return urn(self.token, self.name)

    @property
    def id(self) -> str:
        return f"{common.ZONE}/{self.name}"


def network_name(i: int) -> str:
    return f"net-{i:02d}"


def stack(counts: dict[str, int]) -> list[Resource]:
    """The program's declarations: networks, disks, VMs with a NIC on one of the networks."""
    networks = counts["Network"]
    found = [
        Resource("Network", network_name(i), {"cidr": f"10.244.{i}.0/24", "mode": "isolated"})
        for i in range(networks)
    ]
    found += [
        Resource("Disk", f"disk-{i:02d}", {"sizeGib": SIZE_GIB}) for i in range(counts["Disk"])
    ]
    found += [
        Resource(
            "Vm",
            f"vm-{i:02d}",
            {
                "vcpus": 1,
                "memoryMib": MEMORY_MIB,
                "state": "stopped",
                "bootDisk": {"image": common.IMAGE_NAME, "sizeGib": SIZE_GIB},
                "nics": [{"network": network_name(i % networks)}],
            },
        )
        for i in range(counts["Vm"])
    ]
    for resource in found:
        resource.inputs = {"name": resource.name, "zone": common.ZONE, **resource.inputs}
    return found


def environment(lab: common.Lab, resources: list[Resource]) -> dict[str, Any]:
    """The same objects as one engine run declares them (the API's bodies are snake_case)."""
    from pulumi_resource_vce.resources import KINDS

    sections: dict[str, list[dict[str, Any]]] = {"vms": [], "disks": [], "networks": []}
    for resource in resources:
        body = KINDS[resource.token].body(resource.inputs)
        body.pop("zone", None)
        sections[SECTIONS[resource.kind]].append({"name": resource.name, **body})
    return {
        "uri": lab.uri,
        "ledger_url": lab.ledger_url,
        "tenant": common.TENANT,
        "zone": common.ZONE,
        "state": "present",
        "default_pool": common.POOL,
        **sections,
    }


# -- through the plugin ---------------------------------------------------------------------


def prepare(plugin: Plugin, resources: list[Resource]) -> None:
    """Each resource's checked inputs (a Check with empty olds, through the server) and its
    state (a Read), as a stack that was created and refreshed has them."""
    from pulumi_resource_vce.resources import KINDS

    for resource in resources:
        response = plugin.stub.Check(
            provider_pb2.CheckRequest(
                urn=resource.urn,
                name=resource.name,
                olds=struct({}),
                news=struct(resource.inputs),
            ),
            timeout=RPC_TIMEOUT,
        )
        if response.failures:
            failures = [(f.property, f.reason) for f in response.failures]
            raise BenchError(f"initial Check of {resource.urn} failed: {failures}")
        resource.checked = response.inputs
        resource.declaration = KINDS[resource.token].body(plain(response.inputs))
        resource.state = read(plugin, resource)


def read(plugin: Plugin, resource: Resource) -> struct_pb2.Struct:
    """A refresh's Read of the resource; its properties (the object must be there)."""
    response = plugin.stub.Read(
        provider_pb2.ReadRequest(
            urn=resource.urn,
            id=resource.id,
            properties=resource.checked if resource.state is None else resource.state,
            inputs=resource.checked,
        ),
        timeout=RPC_TIMEOUT,
    )
    if response.id != resource.id:
        raise BenchError(f"Read of {resource.urn} found {response.id!r}, {resource.id} expected")
    return response.properties


def check_and_diff(plugin: Plugin, resource: Resource) -> None:
    """A no-change preview of one resource: Check + Diff, verified."""
    checked = plugin.stub.Check(
        provider_pb2.CheckRequest(
            urn=resource.urn, name=resource.name, olds=resource.checked, news=resource.checked
        ),
        timeout=RPC_TIMEOUT,
    )
    diff = plugin.stub.Diff(
        provider_pb2.DiffRequest(
            urn=resource.urn, id=resource.id, olds=resource.state, news=checked.inputs
        ),
        timeout=RPC_TIMEOUT,
    )
    if checked.failures or checked.inputs != resource.checked:
        raise BenchError(f"Check of unchanged {resource.urn}: {plain(checked.inputs)}")
    if diff.changes != DIFF_NONE:
        raise BenchError(f"Diff of unchanged {resource.urn}: {list(diff.diffs)}")


# -- in this process ------------------------------------------------------------------------


def parser_of(kind: str) -> Callable[[dict[str, Any]], Any]:
    """The engine's parser of a kind, called as the server's validation calls it."""
    from ansible_collections.vce.kvm.plugins.module_utils.core import fields
    from ansible_collections.vce.kvm.plugins.module_utils.core.spec import (
        parse_disk,
        parse_network,
        parse_vm,
    )

    if kind == "Vm":
        return lambda raw: parse_vm(fields.declared(fields.VM, raw), "", common.TENANT, "default")
    if kind == "Disk":
        return lambda raw: parse_disk(fields.declared(fields.DISK, raw), "", "default")
    return lambda raw: parse_network(fields.declared(fields.NETWORK, raw), "", None)


def parse(resources: list[Resource]) -> Callable[[], None]:
    """The engine's parsers on the declarations the plugin sends (the name the path's, the
    zone the server's)."""
    work = []
    for resource in resources:
        raw = {k: v for k, v in resource.declaration.items() if k != "zone"}
        work.append((parser_of(resource.kind), {**raw, "name": resource.name}))

    def run() -> None:
        for parser, raw in work:
            parser(raw)

    return run


def engine_reads(params: dict[str, Any], resources: list[Resource]) -> Callable[[], None]:
    """The engine's read behind `GET /v1/{kind}/{name}` (`facade.read_object`, with the
    parameters the service layer passes for the tenant's host) of each object."""
    from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import read_object

    def run() -> None:
        for resource in resources:
            if read_object({**params, "name": resource.name}, SECTIONS[resource.kind]) is None:
                raise BenchError(f"the engine found no {resource.kind} {resource.name}")

    return run


def placed_params(lab: common.Lab) -> dict[str, Any]:
    """The tenant placed on the zone's host as the server's first PUT places it (the service
    layer, in this process), and the engine parameters it reads that host with."""
    from vce_server.service.resources import Resources

    resources = Resources(lab.ledger_url)
    host = resources.fleet.place(common.TENANT, common.ZONE)
    return resources.params(common.TENANT, host)


# -- the rounds -----------------------------------------------------------------------------


def timed(work: Callable[[], Any]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def measure(
    lab: common.Lab,
    params: dict[str, Any],
    plugin: Plugin,
    server: Any,
    resources: list[Resource],
    args: Any,
) -> dict[str, list[float]]:
    """Seconds: a pass over the resources for each side, a GET /v1/zones per round trip."""
    samples: dict[str, list[float]] = {
        "preview": [], "parse": [], "round_trip": [], "refresh": [], "api": [], "reads": [],
    }  # fmt: skip
    parsing, reading = parse(resources), engine_reads(params, resources)
    refresh_tokens = iter(lab.tokens[1 + HTTP_TOKENS :])
    with common.client(server, lab.tokens[1 : 1 + HTTP_TOKENS], timeout=30) as client:

        def zones() -> None:
            client.get("/v1/zones").raise_for_status()

        def api_reads() -> None:
            for r in resources:
                path = f"/v1/{SECTIONS[r.kind]}/{r.name}"
                client.get(path, params={"zone": common.ZONE}).raise_for_status()

        for round_number in range(args.warmups + args.rounds):
            # A fresh token for each refresh pass: no pass meets the rate limit.
            plugin.configure({"endpoint": server.url, "token": next(refresh_tokens)})
            found = {
                "preview": [timed(lambda: [check_and_diff(plugin, r) for r in resources])],
                "parse": [timed(parsing)],
                "round_trip": [timed(zones) for _sample in range(ROUND_TRIPS)],
                "refresh": [timed(lambda: [read(plugin, r) for r in resources])],
                "api": [timed(api_reads)],
                "reads": [timed(reading)],
            }
            if round_number >= args.warmups:
                for name, values in found.items():
                    samples[name] += values
    return samples


def run(args: Any, results: dict[str, Any]) -> None:
    from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine

    resources = stack(args.counts)
    # One token for the initial Checks and Reads, some for the HTTP client, one per round.
    tokens = 1 + HTTP_TOKENS + args.warmups + args.rounds
    with common.lab(private_libvirtd=True, tokens=tokens) as lab:
        params = placed_params(lab)
        start = time.perf_counter()
        engine.run_environment(environment(lab, resources))
        results["create_s"] = time.perf_counter() - start
        common.log(f"{len(resources)} objects defined in {results['create_s']:.1f} s")
        with common.serve(lab) as server:
            plugin = Plugin()
            try:
                plugin.configure({"endpoint": server.url, "token": lab.token})
                prepare(plugin, resources)
                samples = measure(lab, params, plugin, server, resources, args)
            finally:
                plugin.close()
    results["figures"] = figures(samples, len(resources))


def figures(samples: dict[str, list[float]], count: int) -> dict[str, Any]:
    """Per resource (a pass / count) for the passes, per request for the round trips."""
    per_resource = {
        name: common.summary_ms([s / count for s in values])
        for name, values in samples.items()
        if name != "round_trip"
    }
    found = {**per_resource, "round_trip": common.summary_ms(samples["round_trip"])}
    rtt = found["round_trip"]["median_ms"]
    found["preview_bound_ms"] = PREVIEW_RATIO * (found["parse"]["median_ms"] + rtt)
    found["refresh_bound_ms"] = REFRESH_RATIO * (found["reads"]["median_ms"] + rtt)
    found["preview_ratio"] = found["preview"]["median_ms"] / (found["parse"]["median_ms"] + rtt)
    found["refresh_ratio"] = found["refresh"]["median_ms"] / (found["reads"]["median_ms"] + rtt)
    return found


def target_met(results: dict[str, Any]) -> bool:
    found = results["figures"]
    return found["preview_ratio"] <= PREVIEW_RATIO and found["refresh_ratio"] <= REFRESH_RATIO


LABELS = {
    "preview": "no-change preview through the plugin: Check + Diff, per resource",
    "parse": "the engine's parsers in-process, per declaration",
    "round_trip": "one HTTP round trip: `GET /v1/zones`",
    "refresh": "refresh through the plugin: Read, per resource",
    "api": "for the split: `GET /v1/{kind}/{name}` over HTTP, per object",
    "reads": "the engine's read in-process (`facade.read_object`), per object",
}


def report_lines(results: dict[str, Any]) -> list[str]:
    columns = {"median_ms": "median", "p95_ms": "p95", "min_ms": "min", "max_ms": "max"}
    return common.percentile_table(results["figures"], LABELS, columns)


def verdict(results: dict[str, Any]) -> str:
    found = results["figures"]
    preview_met = found["preview_ratio"] <= PREVIEW_RATIO
    refresh_met = found["refresh_ratio"] <= REFRESH_RATIO
    rtt = found["round_trip"]["median_ms"]
    return (
        f"Preview: {found['preview']['median_ms']:.2f} ms per resource = "
        f"{found['preview_ratio']:.2f}x the parsers' {found['parse']['median_ms']:.3f} ms + one "
        f"round trip's {rtt:.2f} ms (target <= {PREVIEW_RATIO:g}x): "
        f"**{'PASS' if preview_met else 'MISS'}**. Refresh: {found['refresh']['median_ms']:.2f} "
        f"ms per resource = {found['refresh_ratio']:.2f}x the engine's read "
        f"{found['reads']['median_ms']:.2f} ms + a round trip (target <= {REFRESH_RATIO:g}x): "
        f"**{'PASS' if refresh_met else 'MISS'}**."
    )


def setup(results: dict[str, Any]) -> str:
    counts = ", ".join(f"{count} {kind}" for kind, count in results["counts"].items())
    return (
        f"Tenant bench: {counts} ({sum(results['counts'].values())} resources), defined in "
        f"{results['create_s']:.1f} s; {results['rounds']} rounds after {results['warmups']} "
        f"warm-up, alternating; a pass's time / {sum(results['counts'].values())} per "
        f"resource; {ROUND_TRIPS} round trips a round; p95 is the nearest rank."
    )


def main(argv: list[str] | None = None) -> int:
    parser = common.arguments(__doc__, "2 resources of each kind, 1 round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmups", type=int, default=1)
    args = parser.parse_args(argv)
    args.counts = dict(COUNTS)
    if args.quick:
        args.counts, args.rounds = dict(QUICK_COUNTS), QUICK_ROUNDS
    if not 1 <= args.rounds <= 50:
        parser.error("--rounds must be 1-50")
    bench = common.Bench(
        name="pulumi_api",
        run=lambda results: run(args, results),
        target_met=target_met,
        table=report_lines,
        verdict=verdict,
        setup=setup,
    )
    settings = {"counts": args.counts, "rounds": args.rounds, "warmups": args.warmups}
    return common.execute(bench, settings, args.quick, args.no_doc)


if __name__ == "__main__":
    sys.exit(main())
