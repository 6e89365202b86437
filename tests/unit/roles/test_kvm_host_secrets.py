"""The kvm_host role keeps the ledger URL (it carries the password) out of the unit text that
every user can read: a static check of its templates and tasks, rendered with Jinja2 as
Ansible does."""

from __future__ import annotations

from pathlib import Path

import jinja2
import yaml

ROLE = Path(__file__).resolve().parents[3] / "roles" / "kvm_host"
SECRET = 's3cr%t$pa"ss'
URL = f"postgresql+psycopg://vce:{SECRET}@db.example/ledger"
ENV_FILE = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["kvm_host_environment_file"]


def render(template: str, **variables: object) -> str:
    # trim_blocks as Ansible's template module renders.
    loader = jinja2.FileSystemLoader(ROLE / "templates")
    environment = jinja2.Environment(loader=loader, trim_blocks=True)
    return environment.get_template(template).render(**variables)


def service(url: str) -> str:
    return render(
        "vce-timer.service.j2",
        item={"description": "probe", "command": "sla probe"},
        kvm_host_ledger_url=url,
        kvm_host_environment_file=ENV_FILE,
        kvm_host_bin_dir="/usr/local/bin",
        kvm_host_local_uri="qemu:///system",
    )


def task_writing(dest: str) -> dict:
    tasks = yaml.safe_load((ROLE / "tasks" / "timers.yml").read_text())
    return next(t for t in tasks if t.get("ansible.builtin.template", {}).get("dest") == dest)


def test_the_unit_names_the_environment_file_and_holds_no_secret():
    text = service(URL)
    assert f"EnvironmentFile={ENV_FILE}\n" in text
    assert SECRET not in text and "VCE_LEDGER_URL" not in text
    assert "EnvironmentFile" not in service("")


def test_no_template_but_the_environment_file_carries_the_url():
    carriers = [p.name for p in (ROLE / "templates").iterdir() if "VCE_LEDGER_URL" in p.read_text()]
    assert carriers == ["vce-ledger.env.j2"]


def test_the_environment_file_is_root_only_and_kept_out_of_logs():
    task = task_writing("{{ kvm_host_environment_file }}")
    assert task["ansible.builtin.template"]["src"] == "vce-ledger.env.j2"
    assert (
        task["ansible.builtin.template"]["mode"],
        task["ansible.builtin.template"]["owner"],
    ) == (
        "0600",
        "root",
    )
    assert task["no_log"] is True and task["diff"] is False


def test_the_environment_file_quotes_the_url_as_systemd_reads_it():
    # In double quotes systemd takes \" \\ \` \$ as the character; % and $ are not expanded.
    line = render("vce-ledger.env.j2", kvm_host_ledger_url=URL).splitlines()[-1]
    assert line == 'VCE_LEDGER_URL="postgresql+psycopg://vce:s3cr%t\\$pa\\"ss@db.example/ledger"'
