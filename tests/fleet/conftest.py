"""Fleet fixtures: a lab of FLEET_SIZE hosts (a variable of the test module, default 3) over
SSH, with its inventory and ledger (tests/support/fleet.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fleet import Fleet, make_fleet, start_fleet, stop_fleet
from tests.support.ledger import forget_stores


@pytest.fixture(scope="module")
def fleet(request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """A fleet of FLEET_SIZE hosts; the engine in this process finds its ledger too."""
    lab = start_fleet(getattr(request.module, "FLEET_SIZE", 3))
    try:
        with pytest.MonkeyPatch.context() as patch:
            made = make_fleet(lab)
            patch.setenv("VCE_LEDGER_URL", made.ledger_url)
            yield made
            forget_stores()
    finally:
        stop_fleet(lab)
