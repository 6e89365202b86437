"""The control_plane role's unit as docs/server.md shows it, and its ledger URL kept out of the
unit text: the templates rendered with Jinja2 as Ansible renders them."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import yaml

ROOT = Path(__file__).resolve().parents[3]
ROLE = ROOT / "roles" / "control_plane"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
ENV_FILE = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())[
    "control_plane_environment_file"
]


def unit(sqlite_dir: str) -> str:
    loader = jinja2.FileSystemLoader(ROLE / "templates")
    # trim_blocks as Ansible's template module renders.
    environment = jinja2.Environment(loader=loader, trim_blocks=True)
    return environment.get_template("vce-serve.service.j2").render(
        **{key: value for key, value in DEFAULTS.items() if "{{" not in str(value)},
        control_plane_environment_file=ENV_FILE,
        control_plane_pythonpath="<the collection>:<the server package>",
        control_plane_python="/usr/bin/python3",
        control_plane_sqlite_dir=sqlite_dir,
    )


def without_comments(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_the_documented_unit_is_the_role_s_for_a_sqlite_ledger():
    documented = re.search(r"```ini\n(.*?)```", (ROOT / "docs" / "server.md").read_text(), re.S)
    assert documented is not None
    assert without_comments(documented.group(1)) == without_comments(unit("/var/lib/vce-serve"))


def test_only_a_sqlite_ledger_gets_a_writable_directory():
    assert "ReadWritePaths=/var/lib/vce-serve\n" in unit("/var/lib/vce-serve")
    assert "ReadWritePaths" not in unit("")


def test_the_unit_names_the_environment_file_and_only_it_holds_the_url():
    text = unit("")
    assert f"EnvironmentFile={ENV_FILE}\n" in text and "VCE_LEDGER_URL" not in text
    carriers = [p.name for p in (ROLE / "templates").iterdir() if "VCE_LEDGER_URL" in p.read_text()]
    assert carriers == ["vce-serve.env.j2"]
