"""The validators take the whole value or refuse it with a SpecError naming the field: a trailing
newline, a NUL or a Unicode digit never passes, and no input raises anything else."""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable
from typing import Any

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.backup_spec import check_calendar
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.core.periods import parse_month
from ansible_collections.vce.kvm.plugins.module_utils.core.quota import KINDS, check_quotas
from ansible_collections.vce.kvm.plugins.module_utils.core.validation import (
    check_absolute_path,
    check_customer,
    check_int,
    check_mac,
    check_name,
    check_pool,
    customer_key,
    is_interface,
)
from hypothesis import given
from hypothesis import strategies as st

# Text that is close to valid (so the patterns are exercised) plus the characters that matter.
NEAR_ALPHABET = st.sampled_from([*"abz09-_.:/ ", "\n", "\r", "\0", "\t", "\u0663", "\u00b2", "A"])
NEAR_TEXT = st.text(alphabet=NEAR_ALPHABET, max_size=40)
ANY_TEXT = st.one_of(NEAR_TEXT, st.text(max_size=40))
ANY_VALUE = st.one_of(ANY_TEXT, st.integers(), st.floats(), st.none(), st.booleans())

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-")
UTC = zoneinfo.ZoneInfo("UTC")


def outcome(check: Callable[[Any, str], Any], value: Any, field: str = "f.x") -> Any:
    """The accepted value, or None after asserting that the refusal names the field."""
    try:
        return check(value, field)
    except SpecError as error:
        assert error.field == field
        return None


@given(ANY_VALUE)
def test_a_name_is_accepted_whole_or_refused_naming_the_field(value):
    name = outcome(check_name, value)
    if name is not None:
        assert set(name) <= NAME_CHARS
        assert 1 <= len(name) <= 32


@given(ANY_VALUE)
def test_a_mac_is_accepted_whole_or_refused_naming_the_field(value):
    mac = outcome(check_mac, value)
    if mac is not None:
        assert len(mac) == 17
        assert set(mac) <= set("0123456789abcdef:")


@given(ANY_VALUE)
def test_a_pool_is_accepted_whole_or_refused_naming_the_field(value):
    pool = outcome(check_pool, value)
    if pool is not None:
        assert pool.isascii() and pool.isprintable() and " " not in pool


@given(ANY_VALUE)
def test_an_integer_field_is_a_number_in_range_or_refused_naming_the_field(value):
    number = outcome(lambda v, f: check_int(v, f, -5, 1000), value)
    if number is not None:
        assert isinstance(number, int) and -5 <= number <= 1000


@given(st.integers(min_value=-5, max_value=1000))
def test_an_integer_written_in_ascii_digits_is_read(number):
    assert check_int(str(number), "f.x", -5, 1000) == number


@pytest.mark.parametrize(
    "check, value",
    [
        (check_name, "acme-data\n"),
        (check_name, "acme_lan\n"),
        (check_name, "lan\0"),
        (check_name, "lan\r"),
        (check_name, "\nlan"),
        (check_mac, "52:54:00:12:34:56\0"),
        (check_pool, "default\n"),
        (check_pool, "default\0"),
    ],
)
def test_control_characters_around_a_valid_value_are_refused(check, value):
    with pytest.raises(SpecError) as caught:
        check(value, "networks[0].name")
    assert caught.value.field == "networks[0].name"


def test_a_mac_is_returned_without_the_whitespace_around_it():
    # check_mac normalises (strip, lowercase): what it returns is clean even when the input is not.
    assert check_mac(" 52:54:00:AB:34:56\n", "f") == "52:54:00:ab:34:56"


def test_an_interface_name_is_matched_whole():
    assert is_interface("br0")
    for bad in ("br0\n", "br0\0", "eth0 ", "\u0663", "a" * 16, None, 3):
        assert not is_interface(bad)


@pytest.mark.parametrize(
    "value",
    [
        "--5",
        "-",
        "",
        " 5",
        "5 ",
        "5\n",
        "+5",
        "1_000",
        "\u00b2",
        "\u0663",
        "\u0663\u0663",
        "5\0",
        "0x10",
        "1e3",
    ],
)
def test_an_integer_field_takes_only_ascii_digits_and_one_minus(value):
    with pytest.raises(SpecError) as caught:
        check_int(value, "vms[0].vcpus", -10, 100)
    assert caught.value.field == "vms[0].vcpus"


def test_an_integer_of_thousands_of_digits_is_refused_with_the_field():
    # int() itself refuses more than 4300 digits with a ValueError.
    with pytest.raises(SpecError) as caught:
        check_int("9" * 5000, "disks[0].size_gib", 1, 100)
    assert caught.value.field == "disks[0].size_gib"


def test_an_integer_field_still_takes_a_negative_number_and_an_int():
    assert check_int("-3", "f", -10, 10) == -3
    assert check_int(7, "f", 1, 10) == 7
    assert check_int(4.0, "f", 1, 10) == 4


@given(ANY_TEXT)
def test_a_month_is_yyyy_mm_in_ascii_or_refused_naming_the_field(value):
    month = outcome(lambda v, f: parse_month(v, UTC, f), value)
    if month is not None:
        assert f"{month.year:04d}-{month.month:02d}" == value


@pytest.mark.parametrize(
    "value", ["2026-11\n", "\u0662\u0660\u0662\u0666-\u0661\u0661", "2026-11\0"]
)
def test_a_month_with_a_newline_or_unicode_digits_is_refused(value):
    with pytest.raises(SpecError):
        parse_month(value, UTC)


@given(ANY_VALUE)
def test_a_quota_limit_is_a_number_or_refused_naming_the_field(value):
    kind = next(iter(KINDS))
    try:
        limits = check_quotas({kind: value}, "quotas")
    except SpecError as error:
        assert error.field == f"quotas.{kind}"
        return
    assert isinstance(limits[kind], int) and limits[kind] >= 0


@pytest.mark.parametrize("value", ["\u0663", " 3", "3\n", "1_0", "\u00b2"])
def test_a_quota_limit_in_unicode_digits_or_with_spaces_is_refused(value):
    kind = next(iter(KINDS))
    with pytest.raises(SpecError) as caught:
        check_quotas({kind: value}, "quotas")
    assert caught.value.field == f"quotas.{kind}"


@given(ANY_VALUE)
def test_a_customer_is_clean_text_or_refused_naming_the_field(value):
    identity = outcome(check_customer, value, "customer")
    if identity is not None:
        assert identity == identity.strip() and identity
        assert identity.isprintable() or " " in identity
        assert customer_key(identity) == customer_key(customer_key(identity))


@given(st.text(alphabet="aBz09- ", max_size=20))
def test_a_customer_key_ignores_case_and_surrounding_whitespace(text):
    assert customer_key(f" {text.upper()}\n") == customer_key(text.lower())


def test_a_customer_key_ignores_full_width_letters():
    assert customer_key("\uff22\uff29\uff2e-1") == customer_key("bin-1") == "bin-1"


@given(ANY_VALUE)
def test_a_calendar_is_one_plain_ascii_line_or_refused_naming_the_field(value):
    calendar = outcome(check_calendar, value, "backups[0].calendar")
    if calendar is not None:
        assert calendar.isascii() and calendar.isprintable() and calendar == calendar.strip()


@pytest.mark.parametrize(
    "value", ["daily\n", "daily\nExecStart=/bin/sh", "daily\0", "daily\x85", "daily\u2028"]
)
def test_a_calendar_with_a_line_break_or_control_character_is_refused(value):
    with pytest.raises(SpecError) as caught:
        check_calendar(value, "backups[0].calendar")
    assert caught.value.field == "backups[0].calendar"


@given(ANY_VALUE)
def test_an_absolute_path_is_printable_or_refused_naming_the_field(value):
    path = outcome(check_absolute_path, value, "vms[0].boot_disk.image")
    if path is not None:
        assert path.startswith("/") and path.isprintable()


@pytest.mark.parametrize(
    "value", ["/srv/a\n", "/srv/a\0", "/srv/a\t", "/srv/a\x85", "/srv/a\u2028"]
)
def test_an_absolute_path_with_a_control_character_is_refused(value):
    with pytest.raises(SpecError) as caught:
        check_absolute_path(value, "vms[0].boot_disk.image")
    assert caught.value.field == "vms[0].boot_disk.image"


def test_a_customer_whose_key_is_longer_than_the_column_is_refused():
    # 100 "ß" are 100 characters; their key ("ss" each) would be 200.
    with pytest.raises(SpecError, match="at most 128 characters") as caught:
        check_customer("\u00df" * 100, "customer")
    assert caught.value.field == "customer"
