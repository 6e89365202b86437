# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The provider's configuration: the control plane's URL and the tenant's API token, nothing
else. The tenant is the token's; hosts, ledgers and URIs stay on the provider's side."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .props import Prop, check_types

ENDPOINT_ENV = "VCE_ENDPOINT"
TOKEN_ENV = "VCE_TOKEN"

CONFIG = (
    Prop(
        "endpoint",
        "string",
        "The control plane's URL, e.g. https://panel.example.net (VCE_ENDPOINT when unset).",
    ),
    Prop("token", "string", "An API token of your tenant (VCE_TOKEN when unset).", secret=True),
)


class ConfigError(Exception):
    """A configuration value that cannot be used: `field` and `reason`."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


@dataclass(frozen=True)
class ProviderConfig:
    endpoint: str
    # repr=False: a configuration printed in a log or an error never shows the token.
    token: str = field(repr=False)


def parse_config(
    values: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> ProviderConfig:
    """The configuration from CheckConfig's or Configure's values, with the environment's
    VCE_ENDPOINT and VCE_TOKEN for what the stack does not set."""
    environ = os.environ if environ is None else environ
    values = {k: decoded(v) for k, v in values.items() if v is not None}
    failures = check_types(CONFIG, values)
    if failures:
        raise ConfigError(*failures[0])
    endpoint = values.get("endpoint") or environ.get(ENDPOINT_ENV) or ""
    token = values.get("token") or environ.get(TOKEN_ENV) or ""
    if not endpoint:
        raise ConfigError("endpoint", f"is required (set vce:endpoint or {ENDPOINT_ENV})")
    if not token:
        raise ConfigError("token", f"is required (set vce:token as a secret or {TOKEN_ENV})")
    return ProviderConfig(check_endpoint(endpoint), check_token(token))


def check_endpoint(endpoint: str) -> str:
    parts = urlsplit(endpoint.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("endpoint", f"must be an http(s) URL, got {endpoint!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError("endpoint", "must be a plain URL without credentials, query or fragment")
    return endpoint.strip().rstrip("/")


def check_token(token: str) -> str:
    """A token is one line of printable ASCII; never shown, even when it is malformed."""
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError("token", "must be an API token as `vce admin token create` prints it")
    return token


def decoded(value: Any) -> Any:
    """Configuration values may arrive as JSON text."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
