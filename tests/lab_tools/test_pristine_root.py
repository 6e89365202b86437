"""tools.pristine_root: what goes into the pristine root besides Debian's packages."""

from __future__ import annotations

import configparser
import subprocess

from tools import pristine_root


def test_checkout_copy_has_tracked_files_and_links_but_no_untracked(tmp_path):
    repo = tmp_path / "repo"
    (repo / "roles").mkdir(parents=True)
    (repo / "roles/main.yml").write_text("---\n")
    (repo / "link").symlink_to("roles")
    (repo / ".venv").mkdir()
    (repo / ".venv/pyvenv.cfg").write_text("home = /usr/bin\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "roles", "link"], check=True)

    dest = tmp_path / "root/srv/vce-kvm"
    assert pristine_root.copy_checkout(repo, dest) == 2
    assert (dest / "roles/main.yml").read_text() == "---\n"
    assert (dest / "link").is_symlink()
    assert not (dest / ".venv").exists()


def test_pip_settings_keep_how_pypi_is_reached_not_local_wheels(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".config/pip").mkdir(parents=True)
    (home / ".config/pip/pip.conf").write_text(
        "[global]\nfind-links = /opt/wheels\nextra-index-url = file:///opt/pypi/simple\n"
        "index-url = https://pypi.example/simple\n"
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt")
    for name in ("PIP_INDEX_URL", "PIP_PROXY", "PIP_DEFAULT_TIMEOUT", "PIP_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)

    text, ca = pristine_root.pip_network_settings()
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    settings = dict(parser["global"])

    assert str(ca) == "/etc/ssl/certs/ca-certificates.crt"
    assert settings["cert"] == pristine_root.PIP_CA
    assert settings["index-url"] == "https://pypi.example/simple"
    assert "find-links" not in settings
    assert "extra-index-url" not in settings


def test_cache_key_follows_the_mirror():
    assert pristine_root.cache_key("http://a/debian") != pristine_root.cache_key("http://b/debian")
    assert pristine_root.cache_key("http://a/debian") == pristine_root.cache_key("http://a/debian")
