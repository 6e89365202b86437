"""The HTML statement of a month recorded in a real ledger (SQLite and PostgreSQL), read as the
customer reads it: the chart's marks with their tooltips, the legend, the incidents table."""

from __future__ import annotations

import html
import re

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.finance.statement import (
    CHART_WIDTH,
    COLOUR_DOWN,
    EXCLUDED_TEXT,
    html_statement,
)

from tests.support.billing import HOST, Scenario, local
from tests.unit.finance.test_statement import charts, parsed

NOV = "2026-11"
MONTH_MINUTES = 30 * 24 * 60


@pytest.fixture
def month(any_ledger_url):
    """web runs all November: four hours of announced maintenance (the probe saw it down
    inside them), a customer's report support never confirmed, and a half-hour outage the
    operator entered from the provider's own data."""
    scenario = Scenario(any_ledger_url)
    scenario.usage(local(2026, 11, 1))
    incidents = scenario.incidents(local(2026, 11, 28))
    incidents.exclude(
        "maintenance", local(2026, 11, 10, 2, 0), local(2026, 11, 10, 6, 0),
        announced_at=local(2026, 11, 3), note="kernel update",
    )  # fmt: skip
    scenario.down(local(2026, 11, 10, 2, 30), local(2026, 11, 10, 3, 30))
    incidents.report(
        "acme", "web", "", local(2026, 11, 20, 9, 0), reference="CRM-7",
        restored_at=local(2026, 11, 20, 11, 0),
    )  # fmt: skip
    incidents.outage(
        "acme", "web", HOST, local(2026, 11, 25, 10, 0), local(2026, 11, 25, 10, 30),
        note="storage array failover",
    )  # fmt: skip
    return html_statement(scenario.invoice(NOV))


def x_of(minutes: float) -> float:
    return CHART_WIDTH * minutes / MONTH_MINUTES


def test_the_maintenance_window_is_drawn_striped_and_said_not_to_count(month):
    checker = parsed(month)
    [(svg, rects)] = charts(checker)
    [excluded] = [r for r in rects if r["fill"] == "url(#excluded-0)"]
    start = (9 * 24 + 2) * 60  # 2026-11-10 02:00 local
    assert float(excluded["x"]) == pytest.approx(x_of(start), abs=0.01)
    assert float(excluded["width"]) == pytest.approx(x_of(240), abs=0.01)
    assert "Excluded 2026-11-10 02:00 \u2013 06:00: 240 min, not counted" in checker.titles
    assert "excluded, not counted, 4\u00a0h in 1 interval" in svg["aria-label"]
    text = "".join(checker.text)
    assert EXCLUDED_TEXT in text  # the legend explains the stripes


def test_only_counted_downtime_is_red(month):
    checker = parsed(month)
    [(svg, rects)] = charts(checker)
    [down] = [r for r in rects if r["fill"] == COLOUR_DOWN]
    start = (24 * 24 + 10) * 60  # 2026-11-25 10:00 local: the operator's outage
    assert float(down["x"]) == pytest.approx(x_of(start), abs=0.01)
    assert [t for t in checker.titles if t.startswith("Downtime")] == [
        "Downtime 2026-11-25 10:00 \u2013 10:30: 30 min"
    ]
    assert "99.9305%" in svg["aria-label"]  # 1 - 1800/2592000


def incident_rows(page: str) -> dict[str, list[str]]:
    """The incidents table as the reader sees it: each row's cells as text, by the row's
    "by <source>" line."""
    table = page.split('<table class="incidents">', 1)[1].split("</table>", 1)[0]
    rows = {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)[1:]:  # after the header
        cells = [
            html.unescape(re.sub(r"<[^>]+>", "", cell.replace("<br>", " ")))
            for cell in re.findall(r"<td>(.*?)</td>", row, re.S)
        ]
        source = re.search(r"by (\w+)", cells[3]).group(1)
        rows[source] = cells
    return rows


def test_the_unconfirmed_report_is_listed_as_not_counted(month):
    rows = incident_rows(month)
    assert sorted(rows) == ["operator", "probe", "report"]
    cause = {source: cells[3] for source, cells in rows.items()}
    assert cause["report"] == (
        "provider by report not counted: not confirmed by support (terms 5.11)"
    )
    assert rows["report"][5] == "2026-11-20 09:00 / not confirmed"
    assert (cause["operator"], cause["probe"]) == ("provider by operator", "provider by probe")
    assert rows["operator"][4:8] == [
        "2026-11-25 10:00", "— / —", "2026-11-25 10:30", "storage array failover",
    ]  # fmt: skip
