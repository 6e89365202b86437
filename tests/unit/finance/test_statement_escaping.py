"""Every text a customer or an operator controls comes out of the HTML statement as text:
hostile strings in any field add no element and no attribute to the page."""

from __future__ import annotations

from ansible_collections.vce.kvm.plugins.module_utils.finance.statement import html_statement
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.finance.test_statement import closed_document, parsed

MARK = "injected"
PAYLOADS = (
    f"<x-{MARK}>",
    f'"><x-{MARK} a-{MARK}="1">',
    f"'><x-{MARK} a-{MARK}='1'>",
    f'" a-{MARK}="1',
    f"' a-{MARK}='1",
    f"</title><x-{MARK}>",
    f"</style><x-{MARK}>",
    f"</svg></td></tr></table><x-{MARK}>",
    f"<!--<x-{MARK}>-->",
    f"<script>{MARK}()</script>",
    f"&lt;x-{MARK}&gt;",
)
# Text around a payload: markup characters, entities half written, a line break.
AROUND = st.text(alphabet=st.sampled_from("<>\"'&=/;# \nab-"), max_size=12)
HOSTILE = st.builds(lambda left, payload, right: left + payload + right, AROUND,
                    st.sampled_from(PAYLOADS), AROUND)  # fmt: skip

TOP_FIELDS = ("tenant", "customer", "plan", "status", "month", "currency")
LINE_FIELDS = ("host", "kind", "name", "vm", "meter", "unit")
DISCOUNT_FIELDS = ("kind", "description")
NOTE_FIELDS = ("key", "reason", "currency")
VM_FIELDS = ("vm", "host")
INCIDENT_FIELDS = ("id", "vm", "host", "kind", "cause", "source", "note")


def fields(names):
    return st.fixed_dictionaries({name: HOSTILE for name in names})


@st.composite
def hostile_documents(draw):
    doc = closed_document()
    doc.update(draw(fields(TOP_FIELDS)))
    doc["warnings"] = draw(st.lists(HOSTILE, min_size=1, max_size=2))
    for key, names in (
        ("lines", LINE_FIELDS),
        ("discounts", DISCOUNT_FIELDS),
        ("credit_notes", NOTE_FIELDS),
        ("availability", VM_FIELDS),
        ("incidents", INCIDENT_FIELDS),
    ):
        for row in doc[key]:
            row.update(draw(fields(names)))
    return doc


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_documents())
def test_hostile_text_in_every_field_stays_text(doc):
    page = html_statement(doc)
    checker = parsed(page)  # well nested, every element closed
    tags = [tag for tag, _attrs in checker.elements]
    assert "script" not in tags
    assert not [tag for tag in tags if MARK in tag]
    assert not [name for _tag, attrs in checker.elements for name in attrs if MARK in name]
    text = "".join(checker.text)
    assert f"Statement {doc['tenant']} {doc['month']}" in text  # read back as written
    for row in doc["incidents"]:
        assert row["note"] in text
