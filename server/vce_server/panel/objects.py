# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The customer's objects beyond the dashboard: a new VM from the image catalogue, a VM's page
and its resize, networks and disks (and the tenant's other objects) with their removal, backups
and their restore, API tokens.

Every change is shown as its plan before it is applied: the form's declaration is checked as
its PUT is (`resources.validate`), against the quotas (`checks.check`) and planned on the
tenant's host (`resources.plan`). The confirm form carries the form's fields again, and the
apply route checks and plans them again from scratch: nothing a browser sends back is trusted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..api.deps import Context, context
from ..errors import ApiError, not_found
from ..service.resources import KINDS
from . import views
from .guard import COOKIE_PATH, csrf_checked, customer, posted
from .render import amount, page
from .routes import form_key, see_other, submit
from .sessions import Session

router = APIRouter(prefix=COOKIE_PATH, include_in_schema=False)

# Fields a form sends besides the declaration's: the session's token and the form's key.
FORM_CONTROLS = frozenset({"csrf", "key"})
# A declaration's field paths as the form fields they are shown beside; a path a form has no
# field for is shown above the form.
VM_PATHS = {
    "name": "name",
    "zone": "zone",
    "vcpus": "vcpus",
    "memory_mib": "memory_mib",
    "boot_disk.image": "image",
    "boot_disk.size_gib": "disk_gib",
    "boot_disk": "image",
    "nics[0].network": "network",
    "nics[0].ip": "ip",
    "nics[0]": "network",
    "nics": "network",
}
NETWORK_PATHS = {"name": "name", "zone": "zone", "cidr": "cidr"}
DISK_PATHS = {"name": "name", "zone": "zone", "size_gib": "size_gib"}
# The quota each form field draws on.
VM_QUOTAS = {
    "name": "vms",
    "vcpus": "vcpus",
    "memory_mib": "ram_gib",
    "disk_gib": "disk_gib",
}
NETWORK_QUOTAS = {"name": "networks"}
DISK_QUOTAS = {"size_gib": "disk_gib"}
# The engine records a hash of the declaration on the VM; its change is bookkeeping, not a
# change the customer asked for.
BOOKKEEPING_FIELDS = frozenset({"metadata"})
SCOPES = {"read": "read", "write": "read write"}
TOKEN_PATHS = {"expires_at": "expires", "scopes": "scope"}
RESTORE_MODES = (
    ("new_disk", "As a new disk: the VM's disks stay as they are"),
    ("in_place", "In place: the VM's disk is replaced by the backup"),
)
GIB = 1024**3
SINGULAR = {plural: kind.singular for plural, kind in KINDS.items()}


# -- shared: a declaration refused, planned, confirmed -----------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Why a form's declaration was refused: each reason beside the field it is about."""

    status: int
    fields: Mapping[str, str]  # form field -> reason
    others: tuple[str, ...]  # reasons about no field of the form


def refusal(error: ApiError, paths: Mapping[str, str]) -> Refusal:
    """The error's field paths as the form's fields ("boot_disk.size_gib" beside "disk_gib")."""
    shown: dict[str, str] = {}
    others = []
    for path, reason in error.fields:
        name = paths.get(path) or paths.get(path.split(".", 1)[0])
        if name is None:
            others.append(f"{path}: {reason}")
        else:
            shown.setdefault(name, reason)
    if not error.fields:
        others.append(error.message)
    return Refusal(error.status, shown, tuple(others))


@dataclass(frozen=True)
class Proposal:
    """A declaration checked and planned: what applying it would change and add to usage."""

    name: str
    payload: dict[str, Any]  # the PUT's, as resources.validate gives it
    lines: tuple[str, ...]
    usage: tuple[str, ...]


@dataclass(frozen=True)
class Change:
    """One plan-then-confirm flow: a form's fields to the declaration of one object."""

    plural: str
    title: str  # the form's heading: "Create a VM"
    paths: Mapping[str, str]
    declare: Callable[[Context, str, Mapping[str, str]], tuple[str, dict[str, Any]]]
    form: Callable[[Request, Context, Session, Mapping[str, str], Refusal | None], Response]
    apply_url: Callable[[str], str]
    back_url: Callable[[str], str]
    new: bool  # a new object: a name in use is refused


def number(text: str | None) -> Any:
    """A whole number from a form field; anything else as sent, so the engine's parser names
    the field and why."""
    value = (text or "").strip()
    return int(value) if value.isdigit() else value


def form_values(fields: Mapping[str, str]) -> dict[str, str]:
    """The form's own fields, without its token and key: what the confirm form carries."""
    return {key: value for key, value in fields.items() if key not in FORM_CONTROLS}


def propose(ctx: Context, tenant: str, change: Change, fields: Mapping[str, str]) -> Proposal:
    """The form's declaration checked as its PUT (422), against the quotas (409) and planned on
    the tenant's host; raises ApiError, changes nothing."""
    name, body = change.declare(ctx, tenant, fields)
    payload = ctx.resources.validate(tenant, change.plural, name, body)
    if change.new:
        refuse_taken(ctx, tenant, change.plural, name)
    usage = ctx.checks.check(tenant, change.plural, name, {"declaration": body})["usage"]
    environment = environment_of(ctx, tenant, change.plural, payload)
    try:
        plan = ctx.resources.plan(tenant, environment)
    except ApiError as error:
        raise with_paths(error, f"{change.plural}[0].") from None
    return Proposal(
        name=name,
        payload=payload,
        lines=tuple(plan_lines(plan, SINGULAR[change.plural], name)),
        usage=tuple(usage_lines(usage)),
    )


def refuse_taken(ctx: Context, tenant: str, plural: str, name: str) -> None:
    """A new object's name in use: a PUT would change that object, not make one."""
    if any(item["name"] == name for item in ctx.resources.list(tenant, plural)):
        reason = f"a {SINGULAR[plural].replace('_', ' ')} named {name} exists already"
        raise ApiError(409, "conflict", f"name: {reason}", [("name", f"{reason}: choose another")])


def with_paths(error: ApiError, prefix: str) -> ApiError:
    """A plan's error with the object's paths as its declaration has them."""
    fields = [(path.removeprefix(prefix), reason) for path, reason in error.fields]
    return ApiError(error.status, error.code, error.message, fields)


def environment_of(
    ctx: Context, tenant: str, plural: str, payload: Mapping[str, Any]
) -> dict[str, Any]:
    """The environment declaration whose plan is this object's: the object, and for a VM the
    networks and disks it names as they are (an environment refers only to what it declares)."""
    zone = payload["zone"]
    item = {**payload["body"], "name": payload["name"]}
    environment: dict[str, Any] = {"zone": zone, plural: [item]}
    if plural != "vms":
        return environment
    named = {nic.get("network") for nic in item.get("nics") or () if isinstance(nic, Mapping)}
    environment["networks"] = [
        {"name": found["name"], "cidr": found["cidr"]}
        for found in ctx.resources.list(tenant, "networks")
        if found["zone"] == zone and found["name"] in named
    ]
    if "disks" not in item:
        # As the PUT does: a VM declared without `disks` keeps the extra disks it has.
        item["disks"] = kept_disks(ctx, tenant, payload["name"], zone)
    environment["disks"] = [
        {"name": found["name"], "size_gib": int(found["size_gib"])}
        for found in ctx.resources.list(tenant, "disks")
        if found["zone"] == zone and found["name"] in item["disks"]
    ]
    return environment


def kept_disks(ctx: Context, tenant: str, name: str, zone: str) -> list[str]:
    try:
        found = ctx.resources.read(tenant, "vms", name, zone)
    except ApiError as error:
        if error.status != 404:
            raise
        return []  # a new VM has none
    return [
        disk["serial"]
        for disk in found.get("disks") or ()
        if disk.get("device") == "disk" and disk.get("serial") not in (None, "", "boot")
    ]


def plan_lines(plan: Iterable[Mapping[str, Any]], kind: str, name: str) -> list[str]:
    """The object's changes as sentences; a creation lists what it creates."""
    lines = []
    for change in plan:
        if change.get("kind") != kind or change.get("name") != name:
            continue
        if change.get("field") in BOOKKEEPING_FIELDS:
            continue
        if change.get("action") == "create" and isinstance(change.get("after"), Mapping):
            lines.append(f"create {kind.replace('_', ' ')} {name}: {described(change['after'])}")
        else:
            later = " (takes effect at the next restart)" if change.get("pending_restart") else ""
            lines.extend(line + later for line in views.plan_lines([change]))
    return lines


def described(value: Any) -> str:
    """A created object's settings as one line: "vcpus 1, boot_disk (image base, size_gib 1)"."""
    if isinstance(value, Mapping):
        parts = [f"{key} {described(item)}" for key, item in value.items() if present(item)]
        return ", ".join(parts)
    if isinstance(value, list | tuple):
        return "; ".join(f"({described(item)})" for item in value)
    return str(value)


def present(value: Any) -> bool:
    """Whether a setting says something (0 does; None, false and empty do not)."""
    if isinstance(value, bool):
        return value
    return value is not None and value not in ("", [], {})


def usage_lines(usage: Mapping[str, Any]) -> list[str]:
    """What the change adds to the tenant's usage, in the quota page's words and units."""
    lines = []
    for kind, added in usage.items():
        label = views.QUOTA_LABELS.get(kind, kind.replace("_", " "))
        unit = " GiB" if kind.endswith("_gib") else ""
        lines.append(f"{label}: +{added}{unit}")
    return lines


def quota_notes(ctx: Context, session: Session, quotas: Mapping[str, str]) -> dict[str, str]:
    """Beside each form field, what is left of the quota it draws on."""
    bars = {bar.kind: bar for bar in views.quota_bars(ctx.terms.quotas(session.principal))}
    notes = {}
    for name, kind in quotas.items():
        bar = bars.get(kind)
        if bar is not None:
            unit = f" {bar.unit}" if bar.unit else ""
            notes[name] = f"{bar.label}: {amount(bar.left)}{unit} of {amount(bar.limit)} left"
    return notes


def planned(
    request: Request,
    ctx: Context,
    session: Session,
    fields: dict[str, str],
    change: Change,
    name: str = "",
) -> Response:
    """The plan page of the form's declaration, with its confirm form."""
    values = named(csrf_checked(session, fields), name)
    return plan_page(request, ctx, session, change, values)


def applied(
    request: Request,
    ctx: Context,
    session: Session,
    fields: dict[str, str],
    change: Change,
    name: str = "",
) -> Response:
    """The confirm form's declaration, checked and planned again, queued."""
    fields = csrf_checked(session, fields)
    return apply_page(request, ctx, session, change, fields, name)


def named(fields: Mapping[str, str], name: str) -> dict[str, str]:
    """The form's values; an existing object's name is its page's, whatever the form says."""
    return {**form_values(fields), **({"name": name} if name else {})}


def plan_page(
    request: Request, ctx: Context, session: Session, change: Change, values: dict[str, str]
) -> Response:
    """The plan, or the form again with the refusal beside its fields."""
    read_existing(ctx, session, change, values)
    try:
        proposal = propose(ctx, session.principal.tenant, change, values)
    except ApiError as error:
        return change.form(request, ctx, session, values, refusal(error, change.paths))
    return page(
        request,
        "objects_plan.html.j2",
        title=change.title,
        proposal=proposal,
        hidden=sorted(values.items()),
        apply_url=change.apply_url(proposal.name),
        back_url=change.back_url(proposal.name),
        key=form_key(),
    )


def apply_page(
    request: Request, ctx: Context, session: Session, change: Change,
    fields: dict[str, str], name: str,
) -> Response:  # fmt: skip
    """Queued: 303 to its action; refused, the form again."""
    values = named(fields, name)
    read_existing(ctx, session, change, values)
    try:
        proposal = propose(ctx, session.principal.tenant, change, values)
    except ApiError as error:
        return change.form(request, ctx, session, values, refusal(error, change.paths))
    target = f"{change.plural}/{proposal.name}"
    action = submit(request, ctx, session, "put", target, proposal.payload, fields)
    return see_other(f"{COOKIE_PATH}/actions/{action}")


def read_existing(
    ctx: Context, session: Session, change: Change, values: Mapping[str, str]
) -> None:
    """A change of an existing object reads it first: 404 (the error page, not the form: there
    is nothing to correct) when it is not the tenant's."""
    if not change.new:
        ctx.resources.read(session.principal.tenant, change.plural, values["name"])


def form_page(
    request: Request, template: str, values: Mapping[str, str], problem: Refusal | None,
    **more: Any,
) -> Response:  # fmt: skip
    """A form of this module, with what was sent and why it was refused (its status then)."""
    return page(
        request,
        template,
        status=problem.status if problem else 200,
        values=dict(values),
        errors=dict(problem.fields) if problem else {},
        others=problem.others if problem else (),
        **more,
    )


# -- a new VM --------------------------------------------------------------------------------


def vm_declaration(
    ctx: Context, tenant: str, fields: Mapping[str, str]
) -> tuple[str, dict[str, Any]]:
    nic = {"network": fields.get("network", "")}
    if fields.get("ip", "").strip():
        nic["ip"] = fields["ip"].strip()
    body = {
        "zone": fields.get("zone") or None,
        "vcpus": number(fields.get("vcpus")),
        "memory_mib": number(fields.get("memory_mib")),
        "boot_disk": {"image": fields.get("image", ""), "size_gib": number(fields.get("disk_gib"))},
        "nics": [nic] if nic["network"] else [],
    }
    return fields.get("name", "").strip(), body


def new_vm_form(
    request: Request, ctx: Context, session: Session, values: Mapping[str, str],
    problem: Refusal | None,
) -> Response:  # fmt: skip
    tenant = session.principal.tenant
    zones = ctx.resources.zones()
    offered: dict[str, list[str]] = {}
    for image in ctx.resources.images():
        if image["zone"] in zones:
            offered.setdefault(image["name"], []).append(image["zone"])
    networks = ctx.resources.list(tenant, "networks")
    return form_page(
        request, "objects_vm_new.html.j2", values, problem,
        zones=[(zone, zone) for zone in zones],
        images=[(name, f"{name} ({', '.join(offered[name])})") for name in sorted(offered)],
        networks=[(n["name"], f"{n['name']} ({n['zone']}, {n['cidr']})") for n in networks],
        notes=quota_notes(ctx, session, VM_QUOTAS),
        key=form_key(),
    )  # fmt: skip


NEW_VM = Change(
    plural="vms",
    title="Create a VM",
    paths=VM_PATHS,
    declare=vm_declaration,
    form=new_vm_form,
    apply_url=lambda name: f"{COOKIE_PATH}/vms/new/apply",
    back_url=lambda name: f"{COOKIE_PATH}/vms/new",
    new=True,
)
NEW_VM_DEFAULTS = {"vcpus": "1", "memory_mib": "1024", "disk_gib": "10"}


@router.get("/vms/new")
def new_vm_page(
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    return new_vm_form(request, ctx, session, NEW_VM_DEFAULTS, None)


@router.post("/vms/new")
def new_vm_plan(
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    return planned(request, ctx, session, fields, NEW_VM)


@router.post("/vms/new/apply")
def new_vm_apply(
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    return applied(request, ctx, session, fields, NEW_VM)


# -- a VM's page and its resize ----------------------------------------------------------------


def resized_declaration(
    ctx: Context, tenant: str, fields: Mapping[str, str]
) -> tuple[str, dict[str, Any]]:
    """The VM's last declaration with its size changed: its other fields (and its extra disks,
    which a PUT without `disks` keeps) stay as they are."""
    name = fields["name"]
    declared = ctx.resources.last_declaration(tenant, name)
    body = {key: value for key, value in declared["body"].items() if key != "name"}
    body.update(zone=declared["zone"], vcpus=number(fields.get("vcpus")),
                memory_mib=number(fields.get("memory_mib")))  # fmt: skip
    return name, body


def vm_form(
    request: Request, ctx: Context, session: Session, values: Mapping[str, str],
    problem: Refusal | None,
) -> Response:  # fmt: skip
    tenant = session.principal.tenant
    name = values["name"]
    vm = ctx.resources.read(tenant, "vms", name)
    try:
        declared: dict[str, Any] | None = ctx.resources.last_declaration(tenant, name)
    except ApiError:
        declared = None  # made by another front end: its page shows it, the panel cannot resize
    shown = {"vcpus": str(vm.get("vcpus", "")), "memory_mib": str(vm.get("memory_mib", "")),
             **values}  # fmt: skip
    return form_page(
        request, "objects_vm.html.j2", shown, problem,
        name=name, zone=vm["zone"], facts=vm_facts(vm), resizable=declared is not None,
        notes=quota_notes(ctx, session, VM_QUOTAS), key=form_key(),
    )  # fmt: skip


def vm_facts(vm: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The VM as its page lists it: state, zone, size, boot disk, addresses, extra disks."""
    boot = vm.get("boot_disk") or {}
    image = f", from image {boot['backing_image']}" if boot.get("backing_image") else ""
    nics = [f"{nic.get('network')} {nic.get('ip') or ''}".strip() for nic in vm.get("nics") or ()]
    disks = [
        f"{disk.get('serial')} ({disk.get('target')})"
        for disk in vm.get("disks") or ()
        if disk.get("serial") not in (None, "", "boot")
    ]
    return [
        ("State", str(vm.get("state", "unknown"))),
        ("Zone", str(vm.get("zone", ""))),
        ("vCPUs", str(vm.get("vcpus", ""))),
        ("Memory", f"{vm.get('memory_mib', '')} MiB"),
        ("Boot disk", f"{cell(boot.get('size_gib'))} GiB{image}" if boot else "—"),
        ("Networks", ", ".join(nics) or "—"),
        ("Extra disks", ", ".join(disks) or "—"),
    ]


RESIZE_VM = Change(
    plural="vms",
    title="Resize a VM",
    paths=VM_PATHS,
    declare=resized_declaration,
    form=vm_form,
    apply_url=lambda name: f"{COOKIE_PATH}/vms/{name}/resize/apply",
    back_url=lambda name: f"{COOKIE_PATH}/vms/{name}",
    new=False,
)


@router.get("/vms/{name}")
def vm_page(
    name: str,
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    return vm_form(request, ctx, session, {"name": name}, None)


@router.post("/vms/{name}/resize/plan")
def resize_plan(
    name: str,
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    return planned(request, ctx, session, fields, RESIZE_VM, name)


@router.post("/vms/{name}/resize/apply")
def resize_apply(
    name: str,
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    return applied(request, ctx, session, fields, RESIZE_VM, name)


# -- networks, disks and the other objects -----------------------------------------------------


def network_declaration(
    ctx: Context, tenant: str, fields: Mapping[str, str]
) -> tuple[str, dict[str, Any]]:
    body = {"zone": fields.get("zone") or None, "cidr": fields.get("cidr", "").strip()}
    return fields.get("name", "").strip(), body


def disk_declaration(
    ctx: Context, tenant: str, fields: Mapping[str, str]
) -> tuple[str, dict[str, Any]]:
    body = {"zone": fields.get("zone") or None, "size_gib": number(fields.get("size_gib"))}
    return fields.get("name", "").strip(), body


@dataclass(frozen=True)
class ObjectTable:
    plural: str
    title: str
    columns: tuple[str, ...]
    # name, zone, the columns' cells, and whether it is removed on its own (a VM's boot disk
    # is removed with its VM)
    rows: tuple[tuple[str, str, tuple[str, ...], bool], ...]


BOOT_SUFFIX = ".boot"
# Each table of the objects page: its heading and columns (a header and the read view's key).
OBJECT_TABLES = {
    "vms": ("VMs", (("Zone", "zone"), ("State", "state"), ("vCPUs", "vcpus"),
                    ("Memory (MiB)", "memory_mib"))),
    "networks": ("Networks", (("Zone", "zone"), ("Addresses", "cidr"), ("Mode", "mode"))),
    "disks": ("Disks", (("Zone", "zone"), ("Size (GiB)", "size_gib"),
                        ("Attached to", "attached_to"))),
    "public_ips": ("Public IPs", (("Zone", "zone"), ("Address", "address"), ("VM", "vm"))),
    "zone_links": ("Zone links", (("Zones", "zones"), ("Network", "network"))),
    "backup_schedules": ("Backup schedules", (("Zone", "zone"), ("VM", "vm"),
                                              ("Calendar", "calendar"),
                                              ("Retention", "retention"))),
}  # fmt: skip


def cell(value: Any) -> str:
    if not present(value):
        return "—"
    if isinstance(value, list | tuple):
        return ", ".join(cell(item) for item in value)
    if isinstance(value, float | int) and not isinstance(value, bool):
        return amount(value)
    return str(value)


def object_table(plural: str, items: Iterable[Mapping[str, Any]]) -> ObjectTable:
    title, columns = OBJECT_TABLES[plural]
    rows = tuple(
        (
            item["name"],
            str(item.get("zone", "")),
            tuple(cell(item.get(key)) for _h, key in columns),
            not (plural == "disks" and boot_disk(item)),
        )
        for item in items
    )
    return ObjectTable(plural, title, tuple(header for header, _key in columns), rows)


def boot_disk(disk: Mapping[str, Any]) -> bool:
    """Whether the disk is a VM's boot disk (named `<vm>.boot` by the engine, attached to it)."""
    name = str(disk.get("name", ""))
    return name.endswith(BOOT_SUFFIX) and disk.get("attached_to") == name[: -len(BOOT_SUFFIX)]


def objects_form(
    request: Request, ctx: Context, session: Session, values: Mapping[str, str],
    problem: Refusal | None, plural: str = "",
) -> Response:  # fmt: skip
    """The objects page; a refused form shows its values and reasons, the other form empty."""
    tenant = session.principal.tenant
    tables = [object_table(kind, ctx.resources.list(tenant, kind)) for kind in OBJECT_TABLES]
    zones = [(zone, zone) for zone in ctx.resources.zones()]
    return form_page(
        request, "objects_list.html.j2", values, problem,
        refused_form=plural, tables=tables, zones=zones, key=form_key(),
        network_notes=quota_notes(ctx, session, NETWORK_QUOTAS),
        disk_notes=quota_notes(ctx, session, DISK_QUOTAS),
    )  # fmt: skip


def refused_form(plural: str) -> Callable[..., Response]:
    def form(
        request: Request, ctx: Context, session: Session, values: Mapping[str, str],
        problem: Refusal | None,
    ) -> Response:  # fmt: skip
        return objects_form(request, ctx, session, values, problem, plural)

    return form


NEW_OBJECTS = {
    plural: Change(
        plural=plural,
        title=title,
        paths=paths,
        declare=declare,
        form=refused_form(plural),
        apply_url=lambda name, plural=plural: f"{COOKIE_PATH}/objects/{plural}/new/apply",
        back_url=lambda name: f"{COOKIE_PATH}/objects",
        new=True,
    )
    for plural, title, paths, declare in (
        ("networks", "Create a network", NETWORK_PATHS, network_declaration),
        ("disks", "Create a disk", DISK_PATHS, disk_declaration),
    )
}


def new_object(plural: str, request: Request) -> Change:
    change = NEW_OBJECTS.get(plural)
    if change is None:
        raise not_found(f"page {request.url.path}")
    return change


@router.get("/objects")
def objects_page(
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    return objects_form(request, ctx, session, {}, None)


@router.post("/objects/{plural}/new")
def new_object_plan(
    plural: str,
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    return planned(request, ctx, session, fields, new_object(plural, request))


@router.post("/objects/{plural}/new/apply")
def new_object_apply(
    plural: str,
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    return applied(request, ctx, session, fields, new_object(plural, request))


def removed_object(
    ctx: Context, session: Session, request: Request, plural: str, name: str, zone: str | None
) -> dict[str, Any]:
    """The object a removal is about, read as the tenant's (404 for another's)."""
    if plural not in KINDS:
        raise not_found(f"page {request.url.path}")
    return ctx.resources.read(session.principal.tenant, plural, name, zone or None)


@router.get("/objects/{plural}/{name}/delete")
def delete_page(
    plural: str,
    name: str,
    request: Request,
    zone: str | None = None,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    found = removed_object(ctx, session, request, plural, name, zone)
    what = SINGULAR[plural].replace("_", " ")
    return page(
        request,
        "objects_confirm.html.j2",
        title=f"Remove {what} {name}?",
        question=f"Remove {what} {name} in zone {found['zone']}? This cannot be undone.",
        action_url=f"{COOKIE_PATH}/objects/{plural}/{name}/delete",
        hidden=[("zone", found["zone"])],
        button=f"Remove {what} {name}",
        back_url=f"{COOKIE_PATH}/vms/{name}" if plural == "vms" else f"{COOKIE_PATH}/objects",
        key=form_key(),
    )


@router.post("/objects/{plural}/{name}/delete")
def delete_object(
    plural: str,
    name: str,
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    fields = csrf_checked(session, fields)
    return queue_removal(request, ctx, session, plural, name, fields)


def queue_removal(
    request: Request, ctx: Context, session: Session, plural: str, name: str,
    fields: dict[str, str],
) -> Response:  # fmt: skip
    """The removal queued as DELETE /v1/{kind}/{name} queues it, once the object is read as
    the tenant's."""
    zone = fields.get("zone") or None
    removed_object(ctx, session, request, plural, name, zone)
    tenant = session.principal.tenant
    payload = {"tenant": tenant, "kind": plural, "name": name, "zone": zone}
    action = submit(request, ctx, session, "delete", f"{plural}/{name}", payload, fields)
    return see_other(f"{COOKIE_PATH}/actions/{action}")


# -- backups ----------------------------------------------------------------------------------


@router.get("/backups")
def backups_page(
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    tenant = session.principal.tenant
    return page(
        request,
        "objects_backups.html.j2",
        backups=[backup_row(backup) for backup in ctx.resources.backups(tenant)],
        schedules=ctx.resources.list(tenant, "backup_schedules"),
    )


def backup_row(backup: Mapping[str, Any]) -> dict[str, Any]:
    """A backup as its table row: its size in GiB, whether it can be restored."""
    size = backup.get("size_bytes")
    return {
        **backup,
        "size": f"{size / GIB:.2f} GiB" if size is not None else "—",
        "restorable": backup["status"] == "ok" and not backup["pruned"],
    }


def restore_body(fields: Mapping[str, str]) -> dict[str, Any]:
    """The restore the form asks for; in place, the confirm page was the confirmation."""
    mode = fields.get("mode", "new_disk")
    if mode == "in_place":
        return {"mode": mode, "confirm": True}
    return {"mode": mode, "new_disk": fields.get("new_disk", "").strip()}


def restore_form(
    request: Request, backup: Mapping[str, Any], values: Mapping[str, str],
    problem: Refusal | None,
) -> Response:  # fmt: skip
    return form_page(
        request, "objects_restore.html.j2", values, problem,
        backup=backup, modes=RESTORE_MODES, key=form_key(),
    )  # fmt: skip


def tenant_backup(ctx: Context, tenant: str, backup_id: str) -> dict[str, Any]:
    found = next((b for b in ctx.resources.backups(tenant) if b["id"] == backup_id), None)
    if found is None or found["pruned"] or found["status"] != "ok":
        raise not_found(f"backup {backup_id}")
    return found


@router.get("/backups/{backup_id}/restore")
def restore_page(
    backup_id: str,
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    backup = tenant_backup(ctx, session.principal.tenant, backup_id)
    defaults = {"mode": "new_disk", "new_disk": f"{backup['vm']}-restored"}
    return restore_form(request, backup, defaults, None)


@router.post("/backups/{backup_id}/restore")
def restore(
    backup_id: str,
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    fields = csrf_checked(session, fields)
    return queue_restore(request, ctx, session, backup_id, fields)


def queue_restore(
    request: Request, ctx: Context, session: Session, backup_id: str, fields: dict[str, str]
) -> Response:
    """The restore queued as POST /v1/backups/{id}/restore queues it; refused, its form again."""
    tenant = session.principal.tenant
    backup = tenant_backup(ctx, tenant, backup_id)
    try:
        payload = ctx.resources.validate_restore(tenant, backup_id, restore_body(fields))
    except ApiError as error:
        paths = {"mode": "mode", "new_disk": "new_disk"}
        return restore_form(request, backup, form_values(fields), refusal(error, paths))
    action = submit(request, ctx, session, "restore", f"backups/{backup_id}", payload, fields)
    return see_other(f"{COOKIE_PATH}/actions/{action}")


# -- API tokens -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenForm:
    name: str | None
    scopes: str
    expires_at: dt.datetime | None
    errors: dict[str, str] = field(default_factory=dict)


def token_form(fields: Mapping[str, str]) -> TokenForm:
    """The form's token: a scope of two, an expiry as a UTC date (the token ends as it
    begins)."""
    errors = {}
    scope = fields.get("scope", "read")
    if scope not in SCOPES:
        errors["scope"] = f"must be read or write, got {scope!r}"
    expires_at = None
    text = fields.get("expires", "").strip()
    if text:
        try:
            day = dt.date.fromisoformat(text)
            expires_at = dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)
        except ValueError:
            errors["expires"] = f"must be a date as YYYY-MM-DD, got {text!r}"
    name = fields.get("name", "").strip() or None
    return TokenForm(name, SCOPES.get(scope, "read"), expires_at, errors)


def tokens_form(
    request: Request, ctx: Context, session: Session, values: Mapping[str, str],
    problem: Refusal | None, created: str = "",
) -> Response:  # fmt: skip
    return form_page(
        request, "objects_tokens.html.j2", values, problem,
        tokens=ctx.identity.list_tokens(session.principal.tenant), created=created,
    )  # fmt: skip


@router.get("/tokens")
def tokens_page(
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    return tokens_form(request, ctx, session, {"scope": "read"}, None)


@router.post("/tokens")
def create_token(
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    """A new token: its text is in this answer only (never in a URL, the ledger keeps its
    hash), so the answer is a page, not a redirect."""
    fields = csrf_checked(session, fields)
    return new_token_page(request, ctx, session, fields)


def new_token_page(
    request: Request, ctx: Context, session: Session, fields: dict[str, str]
) -> Response:
    values = form_values(fields)
    wanted = token_form(fields)
    if wanted.errors:
        problem = Refusal(422, wanted.errors, ())
        return tokens_form(request, ctx, session, values, problem)
    try:
        text, _view = ctx.identity.create_token(
            role="customer", tenant=session.principal.tenant, scopes=wanted.scopes,
            name=wanted.name, created_by=session.login, expires_at=wanted.expires_at,
        )  # fmt: skip
    except SpecError as error:
        path = TOKEN_PATHS.get(error.field, error.field)
        problem = Refusal(422, {path: error.reason}, ())
        return tokens_form(request, ctx, session, values, problem)
    return tokens_form(request, ctx, session, {"scope": "read"}, None, created=text)


@router.get("/tokens/{prefix}/revoke")
def revoke_page(
    prefix: str,
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    token = tenant_token(ctx, session, prefix)
    return page(
        request,
        "objects_confirm.html.j2",
        title=f"Revoke token {token.name}?",
        question=f"Revoke the token {token.name} ({token.prefix})? Calls made with it are "
        "refused from now on; this cannot be undone.",
        action_url=f"{COOKIE_PATH}/tokens/{prefix}/revoke",
        hidden=[],
        button=f"Revoke token {token.name}",
        back_url=f"{COOKIE_PATH}/tokens",
        key=form_key(),
    )


def tenant_token(ctx: Context, session: Session, prefix: str) -> Any:
    tenant = session.principal.tenant
    found = next((t for t in ctx.identity.list_tokens(tenant) if t.prefix == prefix), None)
    if found is None:
        raise not_found(f"token {prefix}")
    return found


@router.post("/tokens/{prefix}/revoke")
def revoke_token(
    prefix: str,
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    csrf_checked(session, fields)
    revoked(ctx, session, prefix)
    return see_other(f"{COOKIE_PATH}/tokens")


def revoked(ctx: Context, session: Session, prefix: str) -> None:
    tenant_token(ctx, session, prefix)
    ctx.identity.revoke_token(prefix, session.principal.tenant)
