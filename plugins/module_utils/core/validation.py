# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The validators every declaration is read with: each returns the accepted value or raises
SpecError naming the field path and the reason. No declaration lives here (core/spec.py,
core/zones.py, core/backup_spec.py hold them), so every one of those can import these."""

from __future__ import annotations

import ipaddress
import re
import shlex
import unicodedata
from collections.abc import Mapping, Sequence, Set
from typing import Any

from .errors import SpecError

# Every pattern here is matched against the whole value with fullmatch: a `$` anchor would let a
# trailing newline through ("acme_data\n"), and that reaches XML, unit files and the ledger.
NAME_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")
NAME_RULE = "use 1-32 lowercase letters, digits and '-', starting and ending with a letter or digit"
MAC_PATTERN = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
POOL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
INTERFACE_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,14}")
# ASCII only: str.isdigit() takes "²" (which int() refuses) and "٣" (which int() reads as 3).
WHOLE_NUMBER = re.compile(r"-?[0-9]+")
# Longer numbers are refused before int(): Python refuses to convert more than 4300 digits.
MAX_DIGITS = 30
MAX_CUSTOMER = 128  # the ledger's customer columns
MAX_LINE = 255  # the ledger's longest one-line columns (a host's URI)
MAX_NOTE = 4096
MAX_REFERENCE = 128  # a CRM's reference of a request or an incident
MAX_RUN_ID = 64  # the ledger's run_id columns


def at(path: str, name: str) -> str:
    """The field path of `name` inside `path`; top-level fields have no prefix."""
    return f"{path}.{name}" if path else name


def check_name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(path, "a name is required")
    if not NAME_PATTERN.fullmatch(value):
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise SpecError(path, f"invalid name {shown!r}: {NAME_RULE}")
    return value


def check_int(value: Any, path: str, minimum: int, maximum: int, unit: str = "") -> int:
    if isinstance(value, bool) or value is None:
        raise SpecError(path, f"must be a whole number, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise SpecError(path, f"must be a whole number, got {value!r}")
        value = int(value)
    if isinstance(value, str):
        value = whole_number(value, path)
    if not isinstance(value, int):
        raise SpecError(path, f"must be a whole number, got {type(value).__name__}")
    suffix = f" {unit}" if unit else ""
    if value <= 0 and minimum > 0:
        raise SpecError(path, f"must be positive, got {value}{suffix}")
    if value < minimum:
        raise SpecError(path, f"must be at least {minimum}{suffix}, got {value}{suffix}")
    if value > maximum:
        raise SpecError(path, f"must be at most {maximum}{suffix}, got {value}{suffix}")
    return value


def whole_number(text: str, path: str) -> int:
    """A whole number written as ASCII digits with an optional leading minus, nothing else."""
    if not WHOLE_NUMBER.fullmatch(text):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise SpecError(path, f"must be a whole number (digits 0-9, optional '-'), got {shown!r}")
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise SpecError(path, f"must be a whole number of at most {MAX_DIGITS} digits")
    return int(text)


def check_customer(value: Any, path: str) -> str:
    """A customer identity as it is stored and shown: NFKC, whitespace runs as one space and
    none around, no control or format characters (an invisible one would make a new
    customer)."""
    if not isinstance(value, str):
        raise SpecError(path, f"must be a customer identity (text), got {type(value).__name__}")
    identity = unicodedata.normalize("NFKC", value).strip()
    if not identity:
        raise SpecError(path, "must be a non-empty customer identity")
    if any(unicodedata.category(char).startswith("C") for char in identity):
        raise SpecError(
            path, f"a customer identity cannot hold control or invisible characters: {value!r}"
        )
    identity = spaced(identity)
    # The key is stored too (trial grants), and casefolding can lengthen it ("ß" is "ss").
    if max(len(identity), len(customer_key(identity))) > MAX_CUSTOMER:
        raise SpecError(path, f"must be at most {MAX_CUSTOMER} characters")
    return identity


def check_line(value: Any, path: str, max_length: int = MAX_LINE) -> str:
    """One line of text that people read back (a CRM reference, a host's URI, a run id): no
    newline, NUL, escape sequence, invisible or undecodable character reaches the ledger, a
    CSV row or a terminal."""
    if not isinstance(value, str):
        raise SpecError(path, f"must be text, got {type(value).__name__}")
    if any(unreadable(char) for char in value):
        raise SpecError(path, f"cannot hold control or invisible characters: {shortened(value)}")
    if len(value) > max_length:
        raise SpecError(path, f"must be at most {max_length} characters, got {len(value)}")
    return value


def check_note(value: Any, path: str, max_length: int = MAX_NOTE) -> str:
    """Free text over several lines: newlines and tabs are kept, other control characters are
    refused as in check_line."""
    if not isinstance(value, str):
        raise SpecError(path, f"must be text, got {type(value).__name__}")
    if len(value) > max_length:
        raise SpecError(path, f"must be at most {max_length} characters, got {len(value)}")
    for line in value.split("\n"):
        check_line(line.replace("\t", " "), path, max_length)
    return value


def unreadable(char: str) -> bool:
    """Control, format, surrogate (an undecodable byte), private and unassigned characters,
    and the line and paragraph separators."""
    category = unicodedata.category(char)
    return category.startswith("C") or category in ("Zl", "Zp")


def shortened(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37]) + "..."


def customer_key(identity: str) -> str:
    """The form two customer identities are compared in ("BIN-1" and " bin-1" are one customer).
    Also applied to identities already in the ledger, which were stored as they were given."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", identity).casefold())
    return spaced(folded)


def spaced(text: str) -> str:
    """Every run of whitespace as one ASCII space, none around: an ogham or an ideographic
    space inside an identity must not make a second customer."""
    return " ".join(text.split())


def check_choice(value: Any, path: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise SpecError(path, f"must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def check_mac(value: Any, path: str) -> str:
    mac = str(value).strip().lower()
    if not MAC_PATTERN.fullmatch(mac):
        raise SpecError(
            path, f"invalid MAC address {value!r}: expected six hex pairs like 52:54:00:12:34:56"
        )
    if int(mac[:2], 16) & 1:
        raise SpecError(path, f"{mac} is a multicast MAC address; a NIC needs a unicast one")
    return mac


def check_ipv4(value: Any, path: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(value).strip())
    except ValueError:
        raise SpecError(path, f"invalid IPv4 address {value!r}") from None


def check_absolute_path(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise SpecError(path, f"must be an absolute path on the KVM host, got {value!r}")
    # isprintable() refuses every control character (C0, C1, U+2028...), not only "\n\r\0".
    if not value.isprintable() or "/../" in value or value.endswith("/.."):
        raise SpecError(path, f"path {value!r} contains a forbidden character or '..'")
    return value


def check_image_ref(value: Any, path: str) -> str:
    """A base image as a declaration names it: an image of the zone's catalogue or one of the
    tenant's disks (a name), or an operator's absolute path, which the engine accepts only
    inside the host's image directories."""
    if isinstance(value, str) and value.startswith("/"):
        return check_absolute_path(value, path)
    return check_image_name(value, path)


def check_image_name(value: Any, path: str) -> str:
    """A base image as a tenant names it: never a host path."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        shown = value if not isinstance(value, str) or len(value) <= 40 else value[:37] + "..."
        raise SpecError(
            path,
            f"must name an image of the zone's catalogue or one of the tenant's disks "
            f"({NAME_RULE}), got {shown!r}",
        )
    return value


def check_pool(value: Any, path: str) -> str:
    if not isinstance(value, str) or not POOL_PATTERN.fullmatch(value):
        raise SpecError(path, f"invalid storage pool name {value!r}")
    return value


def is_interface(value: Any) -> bool:
    """A host network interface name as the kernel takes it (IFNAMSIZ: 15 characters)."""
    return isinstance(value, str) and INTERFACE_PATTERN.fullmatch(value) is not None


def reject_unknown(raw: Mapping[str, Any], allowed: Set[str], path: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SpecError(at(path, unknown[0]), "unknown option")


def optional(raw: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = raw.get(key)
    return default if value is None else value


def as_mapping(raw: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise SpecError(path, f"must be a mapping, got {type(raw).__name__}")
    return raw


def as_list(raw: Any, path: str) -> list[Any]:
    if raw is None:
        return []
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise SpecError(path, f"must be a list, got {type(raw).__name__}")
    return list(raw)


def check_prefix(raw: Any, field: str = "host_command") -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = shlex.split(raw)
    if not isinstance(raw, Sequence) or not all(isinstance(part, str) and part for part in raw):
        raise SpecError(field, "must be a command prefix: a list of words, e.g. [ssh, root@kvm1]")
    return tuple(raw)
