"""The objects' pages as a browser sends their forms: a new VM, a resize, networks and disks
made and removed, backups restored, API tokens; each change shown as its plan first, then
confirmed, and read back from the hosts (the test driver) and the ledger."""

from __future__ import annotations

import hashlib
import html
import re

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import api_tokens
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from vce_server.errors import ApiError
from vce_server.service.resources import backup_public_id

from tests.support.cabinet import Cabinet, Visitor, hidden_fields
from tests.unit.server.panel.test_routes import declare, wait_ended

ALL_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
NEW_VM = {
    "name": "db",
    "zone": "zone-a",
    "image": "base",
    "vcpus": "1",
    "memory_mib": "256",
    "disk_gib": "1",
    "network": "lan",
    "ip": "10.9.0.20",
}


def confirm_form(text: str) -> dict[str, str]:
    """Every hidden field of the page's confirm form, as the browser sends it back."""
    return {name: html.unescape(value) for name, value in ALL_HIDDEN.findall(text)}


def page_form(visitor: Visitor, page: str) -> dict[str, str]:
    """The CSRF token and form key of a page's form."""
    return hidden_fields(visitor.get(page).text)


def action_of(answer) -> str:
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert location.startswith("/panel/actions/")
    return location.rsplit("/", 1)[1]


def planned(visitor: Visitor, page: str, url: str, fields: dict[str, str]):
    return visitor.client.post(url, data={**page_form(visitor, page), **fields})


def applied(cabinet: Cabinet, visitor: Visitor, url: str, plan_text: str, tenant: str) -> dict:
    answer = visitor.client.post(url, data=confirm_form(plan_text))
    return wait_ended(cabinet, action_of(answer), tenant)


def error_beside(text: str, field: str) -> str:
    """The reason shown beside a form field (its id is the field's, with `-error`)."""
    found = re.search(rf'id="(?:[a-z]+-)?field-{field}-error">([^<]*)<', text)
    assert found is not None, f"no error beside {field}"
    return html.unescape(found.group(1))


def absent(cabinet: Cabinet, tenant: str, plural: str, name: str) -> bool:
    try:
        cabinet.context.resources.read(tenant, plural, name)
    except ApiError as error:
        return error.status == 404
    return False


def test_a_vm_is_created_from_the_catalogue_after_its_plan(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    declare(cabinet, "acme")
    form = visitor.get("/panel/vms/new")
    assert form.status_code == 200
    assert '<option value="base">base (zone-a)</option>' in form.text
    assert "lan (zone-a, 10.9.0.0/24)" in form.text
    assert "VMs: 999 of 1000 left" in form.text and "vCPUs: 999 of 1000 left" in form.text
    plan = planned(visitor, "/panel/vms/new", "/panel/vms/new", NEW_VM)
    assert plan.status_code == 200, plan.text
    assert "create vm db: vcpus 1" in plan.text and "memory_mib 256" in plan.text
    assert "vCPUs: +1" in plan.text and "Memory: +0.25 GiB" in plan.text
    assert absent(cabinet, "acme", "vms", "db")  # the plan changed nothing
    done = applied(cabinet, visitor, "/panel/vms/new/apply", plan.text, "acme")
    assert done["status"] == "succeeded", done
    assert "succeeded" in visitor.get(f"/panel/actions/{done['id']}").text
    vm = cabinet.context.resources.read("acme", "vms", "db")
    assert (vm["vcpus"], vm["memory_mib"], vm["state"]) == (1, 256, "running")
    assert vm["nics"][0]["ip"] == "10.9.0.20"
    assert vm["boot_disk"]["backing_image"] == "base"


def test_a_vm_beyond_the_quota_is_refused_at_the_plan_naming_the_field(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("small", vcpus=2)
    answer = planned(visitor, "/panel/vms/new", "/panel/vms/new",
                     {**NEW_VM, "network": "", "ip": "", "vcpus": "4"})  # fmt: skip
    assert answer.status_code == 409
    assert "vcpus" in error_beside(answer.text, "vcpus")
    assert 'aria-invalid="true"' in answer.text
    assert 'value="4"' in answer.text  # the form again, as sent
    assert cabinet.context.actions.list("small") == []


def test_a_bad_field_is_shown_beside_it_and_changes_nothing(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    answer = planned(visitor, "/panel/vms/new", "/panel/vms/new",
                     {**NEW_VM, "network": "", "ip": "", "name": "Not A Name"})  # fmt: skip
    assert answer.status_code == 422
    assert "invalid name" in error_beside(answer.text, "name")
    answer = planned(visitor, "/panel/vms/new", "/panel/vms/new",
                     {**NEW_VM, "network": "", "ip": "", "memory_mib": "lots"})  # fmt: skip
    assert answer.status_code == 422
    assert "lots" in error_beside(answer.text, "memory_mib")
    assert cabinet.context.actions.list("acme") == []


def test_a_vm_name_in_use_is_refused_by_the_new_vm_form(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    declare(cabinet, "acme")
    answer = planned(visitor, "/panel/vms/new", "/panel/vms/new", {**NEW_VM, "name": "web"})
    assert answer.status_code == 409
    assert "exists already" in error_beside(answer.text, "name")


def test_a_vm_is_resized_after_its_plan_and_keeps_its_other_fields(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    declare(cabinet, "acme")
    assert '<a href="/panel/vms/web">web</a>' in visitor.get("/panel/objects").text
    shown = visitor.get("/panel/vms/web")
    assert shown.status_code == 200
    assert "10.9.0.10" in shown.text and "from image base" in shown.text
    plan = planned(visitor, "/panel/vms/web", "/panel/vms/web/resize/plan",
                   {"vcpus": "2", "memory_mib": "512"})  # fmt: skip
    assert plan.status_code == 200, plan.text
    assert "update vm web: vcpus 1 → 2 (takes effect at the next restart)" in plan.text
    assert "update vm web: memory_mib 256 → 512 (takes effect at the next restart)" in plan.text
    assert "metadata" not in plan.text
    done = applied(cabinet, visitor, "/panel/vms/web/resize/apply", plan.text, "acme")
    assert done["status"] == "succeeded", done
    again = visitor.client.post("/panel/vms/web/resize/apply", data=confirm_form(plan.text))
    assert action_of(again) == done["id"]  # the confirm form sent twice: one action
    vm = cabinet.context.resources.read("acme", "vms", "web")
    assert (vm["max_vcpus"], vm["memory_mib"]) == (2, 512)
    reboot = visitor.client.post("/panel/vms/web/reboot", data=page_form(visitor, "/panel/"))
    assert wait_ended(cabinet, action_of(reboot), "acme")["status"] == "succeeded"
    vm = cabinet.context.resources.read("acme", "vms", "web")
    assert (vm["vcpus"], vm["memory_mib"], vm["state"]) == (2, 512, "running")
    assert vm["nics"][0]["ip"] == "10.9.0.10"


def test_networks_and_disks_are_made_and_removed_through_confirmations(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    for plural, fields, line in (
        ("networks", {"name": "back", "zone": "zone-a", "cidr": "10.8.0.0/24"},
         "create network back: "),
        ("disks", {"name": "data", "zone": "zone-a", "size_gib": "2"}, "create disk data: "),
    ):  # fmt: skip
        plan = planned(visitor, "/panel/objects", f"/panel/objects/{plural}/new", fields)
        assert plan.status_code == 200, plan.text
        assert line in plan.text
        done = applied(cabinet, visitor, f"/panel/objects/{plural}/new/apply", plan.text, "acme")
        assert done["status"] == "succeeded", done
    listed = visitor.get("/panel/objects").text
    assert "10.8.0.0/24" in listed and ">data<" in listed
    assert listed.count('id="network-field-name"') == listed.count('id="disk-field-name"') == 1
    assert cabinet.context.resources.read("acme", "disks", "data")["size_gib"] == 2
    for plural, name in (("disks", "data"), ("networks", "back")):
        question = visitor.get(f"/panel/objects/{plural}/{name}/delete?zone=zone-a")
        assert question.status_code == 200 and f"Remove {plural[:-1]} {name}" in question.text
        answer = visitor.client.post(f"/panel/objects/{plural}/{name}/delete",
                                     data=confirm_form(question.text))  # fmt: skip
        assert wait_ended(cabinet, action_of(answer), "acme")["status"] == "succeeded"
        assert absent(cabinet, "acme", plural, name)


def test_a_vms_boot_disk_is_listed_without_a_removal_of_its_own(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    declare(cabinet, "acme")
    page = visitor.get("/panel/objects").text
    (row,) = re.findall(r"<tr><th scope=\"row\">web\.boot</th>.*?</tr>", page)
    assert "with its VM" in row and "/delete" not in row
    assert 'href="/panel/objects/vms/web/delete?zone=zone-a"' in page


def test_a_network_form_error_is_shown_beside_its_field(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    answer = planned(visitor, "/panel/objects", "/panel/objects/networks/new",
                     {"name": "back", "zone": "zone-a", "cidr": "not a network"})  # fmt: skip
    assert answer.status_code == 422
    assert "not a network" in error_beside(answer.text, "cidr")
    assert cabinet.context.actions.list("acme") == []


def test_a_tampered_confirm_form_is_checked_again(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme", vcpus=2)
    declare(cabinet, "acme")
    plan = planned(visitor, "/panel/vms/new", "/panel/vms/new", {**NEW_VM, "vcpus": "1"})
    assert plan.status_code == 200, plan.text
    bigger = {**confirm_form(plan.text), "vcpus": "8"}
    answer = visitor.client.post("/panel/vms/new/apply", data=bigger)
    assert answer.status_code == 409
    assert "vcpus" in error_beside(answer.text, "vcpus")
    # Tenant B's confirm form names A's network, VM and objects: none is B's.
    other = cabinet.customer("other")
    answer = visitor_confirm(other, "/panel/vms/new", "/panel/vms/new/apply",
                             {**NEW_VM, "ip": ""})  # fmt: skip
    assert answer.status_code == 422
    assert "unknown network" in error_beside(answer.text, "network")
    resize = visitor_confirm(other, "/panel/vms/new", "/panel/vms/web/resize/apply",
                             {"vcpus": "1", "memory_mib": "128"})  # fmt: skip
    assert resize.status_code == 404
    assert other.get("/panel/vms/web").status_code == 404
    assert other.get("/panel/objects/networks/lan/delete?zone=zone-a").status_code == 404
    delete = visitor_confirm(other, "/panel/objects", "/panel/objects/networks/lan/delete",
                             {"zone": "zone-a"})  # fmt: skip
    assert delete.status_code == 404
    assert cabinet.context.actions.list("other") == []
    vm = cabinet.context.resources.read("acme", "vms", "web")
    assert (vm["vcpus"], vm["memory_mib"]) == (1, 256)
    assert cabinet.context.resources.read("acme", "networks", "lan")["cidr"] == "10.9.0.0/24"


def visitor_confirm(visitor: Visitor, page: str, url: str, fields: dict[str, str]):
    """A confirm form as a tampering browser sends it: the session's token, fields of its own."""
    return visitor.client.post(url, data={**page_form(visitor, page), **fields})


def test_forms_without_the_csrf_token_change_nothing(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    declare(cabinet, "acme")
    before = len(cabinet.context.actions.list("acme"))
    for url, fields in (
        ("/panel/vms/new/apply", NEW_VM),
        ("/panel/vms/web/resize/apply", {"vcpus": "2", "memory_mib": "512"}),
        ("/panel/objects/networks/new/apply", {"name": "b", "cidr": "10.8.0.0/24"}),
        ("/panel/objects/networks/lan/delete", {"zone": "zone-a"}),
        ("/panel/tokens", {"name": "ci", "scope": "write"}),
    ):
        answer = visitor.client.post(url, data=fields)
        assert answer.status_code == 403, url
    assert len(cabinet.context.actions.list("acme")) == before
    assert cabinet.context.identity.list_tokens("acme") == []
    assert absent(cabinet, "acme", "vms", "db")


def test_a_token_is_shown_once_and_refused_once_revoked(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    answer = visitor.client.post(
        "/panel/tokens",
        data={**page_form(visitor, "/panel/tokens"), "name": "ci", "scope": "write",
              "expires": "2099-01-01"},
    )  # fmt: skip
    assert answer.status_code == 200
    text = re.search(r'id="created-token"[^>]*value="([^"]+)"', answer.text).group(1)
    identity = cabinet.context.identity
    who = identity.authenticate(text)
    assert (who.tenant, sorted(who.scopes)) == ("acme", ["read", "write"])
    listed = visitor.get("/panel/tokens")
    assert text not in listed.text and "ci" in listed.text and "2099-01-01" in listed.text
    with Ledger.open(cabinet.ledger_url).store.read() as connection:
        row = connection.execute(sa.select(api_tokens)).one()
    assert row.secret_hash == hashlib.sha256(text.encode()).hexdigest()
    assert text not in [str(value) for value in row]
    [token] = identity.list_tokens("acme")
    question = visitor.get(f"/panel/tokens/{token.prefix}/revoke")
    assert question.status_code == 200
    revoked = visitor.client.post(f"/panel/tokens/{token.prefix}/revoke",
                                  data=confirm_form(question.text))  # fmt: skip
    assert revoked.status_code == 303
    assert identity.authenticate(text) is None
    api = visitor.client.get("/v1/vms", headers={"Authorization": f"Bearer {text}"})
    assert api.status_code == 401


def test_a_token_form_error_makes_no_token(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    form = page_form(visitor, "/panel/tokens")
    for fields, field in (
        ({"scope": "admin"}, "scope"),
        ({"scope": "read", "expires": "soon"}, "expires"),
        ({"scope": "read", "expires": "2000-01-01"}, "expires"),
    ):
        answer = visitor.client.post("/panel/tokens", data={**form, **fields})
        assert answer.status_code == 422
        assert error_beside(answer.text, field)
        assert 'id="created-token"' not in answer.text
    assert cabinet.context.identity.list_tokens("acme") == []


def test_another_tenants_token_cannot_be_revoked(cabinet: Cabinet) -> None:
    cabinet.customer("acme")
    text, view = cabinet.context.identity.create_token(
        role="customer", tenant="acme", scopes="read", name="ci", created_by="acme-user"
    )
    other = cabinet.customer("other")
    assert other.get(f"/panel/tokens/{view.prefix}/revoke").status_code == 404
    answer = visitor_confirm(other, "/panel/tokens", f"/panel/tokens/{view.prefix}/revoke", {})
    assert answer.status_code == 404
    assert cabinet.context.identity.authenticate(text) is not None
    assert view.prefix not in other.get("/panel/tokens").text


def recorded_backup(cabinet: Cabinet, tenant: str, key: str) -> None:
    ledger = Ledger.open(cabinet.ledger_url)
    now = ledger.now()
    with ledger.store.locked(tenant) as connection:
        ledger.record_backup(
            connection, key, tenant=tenant, host="test:///nonexistent/kvm1.xml", vm="web",
            schedule="nightly", backup_id="20261201T000000Z", kind="full", status="ok",
            started_at=now, finished_at=now, duration_ms=5, size_bytes=1024**3,
        )  # fmt: skip


def test_a_backup_is_restored_as_a_confirmed_action_of_its_tenant_only(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    other = cabinet.customer("other")
    recorded_backup(cabinet, "acme", "b" * 40)
    key = backup_public_id("b" * 40)
    listed = visitor.get("/panel/backups")
    assert listed.status_code == 200
    assert "nightly" in listed.text and "1.00 GiB" in listed.text
    assert f"/panel/backups/{key}/restore" in listed.text
    assert key not in other.get("/panel/backups").text
    assert other.get(f"/panel/backups/{key}/restore").status_code == 404
    question = visitor.get(f"/panel/backups/{key}/restore")
    assert question.status_code == 200
    form = {**hidden_fields(question.text), "mode": "new_disk", "new_disk": "../etc"}
    refused = visitor.client.post(f"/panel/backups/{key}/restore", data=form)
    assert refused.status_code == 422
    assert error_beside(refused.text, "new_disk")
    assert cabinet.context.actions.list("acme") == []
    form["new_disk"] = "web-restored"
    answer = visitor.client.post(f"/panel/backups/{key}/restore", data=form)
    action = cabinet.context.actions.get(action_of(answer), "acme")
    assert (action["kind"], action["target"]) == ("restore", f"backups/{key}")


@pytest.mark.parametrize(
    "path",
    ["/panel/vms/new", "/panel/vms/web", "/panel/objects", "/panel/backups", "/panel/tokens"],
)
def test_the_pages_need_a_session(cabinet: Cabinet, path: str) -> None:
    answer = Visitor(cabinet.app).get(path)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/panel/login?next=")


def test_an_operators_session_has_no_objects_pages(cabinet: Cabinet) -> None:
    operator = cabinet.operator()
    for path in ("/panel/vms/new", "/panel/objects", "/panel/backups", "/panel/tokens"):
        assert operator.get(path).status_code == 404, path
