"""A price list's currency is an ISO 4217 code, matched whole."""

from __future__ import annotations

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.ledger.prices import parse_prices


@pytest.mark.parametrize("currency", ["KZT\n", "KZT\0", "kzt", "KZTX"])
def test_a_currency_that_is_not_exactly_three_capitals_is_refused(currency):
    with pytest.raises(SpecError) as caught:
        parse_prices({"currency": currency})
    assert caught.value.field == "prices.currency"


def test_a_three_letter_currency_is_kept():
    assert parse_prices({"currency": "EUR"}).currency == "EUR"
