# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tenant's cloud-init user data, read when the declaration is (plan time), not in the guest.

User data is either a script (its first line starts with `#!`), which reaches the guest as it
was written, or a `#cloud-config` document: exactly one YAML document holding a mapping, read
with PyYAML's safe loader. Our keys are merged into that mapping, never appended as text (text
after a `...` or a second `---` would be another document, and cloud-init would drop the keys):

- `hostname`: the declared `cloud_init.hostname` (the VM's name by default). User data may
  name the same host but not another one: the seed's meta-data names it too.
- `ssh_authorized_keys`: the user data's own keys first, then the declared ones that are not
  among them.

Everything else in the user data is the tenant's, kept as it parsed (comments are not).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import SpecError

try:
    import yaml
except ImportError:  # reported when user data is read, with an install hint
    yaml = None

CLOUD_CONFIG_HEADER = "#cloud-config"
SCRIPT_HEADER = "#!"


def cloud_config(
    user_data: str, hostname: str, keys: Sequence[str], path: str
) -> dict[str, Any] | None:
    """The #cloud-config mapping the guest gets, the declared keys merged in; None when the
    user data is a script (without declared keys, which a script cannot carry)."""
    document = tenant_document(user_data, path)
    if document is None:
        if keys:
            raise SpecError(
                path,
                "with ssh_authorized_keys, user_data must be a #cloud-config document (the "
                "keys are merged into it), not a script",
            )
        return None
    theirs = document.get("hostname", hostname)
    if theirs != hostname:
        raise SpecError(
            f"{path}.hostname",
            f"names the host {theirs!r}, not {hostname!r}: set cloud_init.hostname instead",
        )
    own_keys = document.get("ssh_authorized_keys", [])
    if not isinstance(own_keys, list) or not all(isinstance(k, str) for k in own_keys):
        raise SpecError(f"{path}.ssh_authorized_keys", "must be a list of public keys (text)")
    merged = {**document, "hostname": hostname}
    if own_keys or keys:
        merged["ssh_authorized_keys"] = own_keys + [k for k in keys if k not in own_keys]
    return merged


def tenant_document(user_data: str, path: str) -> dict[str, Any] | None:
    """The user data's mapping, or None for a script; SpecError for anything else."""
    if user_data.startswith(SCRIPT_HEADER):
        return None
    if user_data.split("\n", 1)[0].rstrip() != CLOUD_CONFIG_HEADER:
        raise SpecError(
            path, "must be a #cloud-config document (its first line) or a script starting with #!"
        )
    if yaml is None:
        raise SpecError(
            path, "reading cloud-config needs PyYAML on this machine: pip install pyyaml"
        )
    try:
        documents = list(yaml.load_all(user_data, Loader=yaml.SafeLoader))
    except yaml.YAMLError as error:
        raise SpecError(path, f"is not valid YAML: {' '.join(str(error).split())}") from None
    except RecursionError:
        raise SpecError(path, "is nested too deeply to read") from None
    if len(documents) > 1:
        raise SpecError(path, f"holds {len(documents)} YAML documents; cloud-init reads one")
    document = documents[0] if documents else None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise SpecError(path, f"must be a YAML mapping of keys to values, got {kind(document)}")
    for key in document:
        if not isinstance(key, str):
            raise SpecError(path, f"its keys must be text, got {key!r}")
    return document


def kind(value: Any) -> str:
    return "a list" if isinstance(value, list) else f"a single {type(value).__name__}"


def dump(document: dict[str, Any]) -> bytes:
    """The merged document as the guest reads it."""
    # The pure-Python dumper, not libyaml's: the bytes are the seed's digest on every machine.
    text = yaml.dump(document, Dumper=yaml.SafeDumper, sort_keys=True, allow_unicode=True)
    return (CLOUD_CONFIG_HEADER + "\n" + text).encode()
