"""The bad-input matrix (reliability_cases.py): no entry point crashes, returns a non-finite
result from finite input or changes its input; every refusal is a ValueError/TypeError whose
message starts with the function's name; and the committed table (the generated part of
docs/reliability.md and bench/results/reliability_matrix.json) is what the cases produce today."""

from __future__ import annotations

import json
import os

import pytest

import reliability_cases as rc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


@pytest.fixture(scope="module")
def results():
    return rc.run_all()


def test_no_case_is_a_bug(results):
    bugs = [(r.entry, r.input, r.outcome) for r in results if r.bug]
    assert not bugs, bugs


def test_refusals_are_value_or_type_errors_naming_the_function(results):
    for r in results:
        head = r.outcome.split(":")[0]
        if head.endswith("Error") or "(a ValueError)" in head:
            assert head in ("ValueError", "TypeError") or head.endswith("(a ValueError)"), r
            msg = r.outcome.split(": ", 1)[1]
            assert msg.startswith(rc.prefix(r.entry) + ":"), r


def test_every_entry_point_meets_every_kind_of_data(results):
    entries = {e for e, _ in rc._entry_points()}
    seen = {(r.entry, r.input) for r in results if r.group == "data"}
    assert {e for e, _ in seen} == entries
    assert len(seen) == len(entries) * len(rc.DATA)


def test_committed_table_is_up_to_date(results):
    path = os.path.join(ROOT, "bench", "results", "reliability_matrix.json")
    committed = json.loads(_read(path))["cases"]
    now = [r.__dict__ for r in results]
    changed = [(a, b) for a, b in zip(committed, now) if a != b]
    assert len(committed) == len(now) and not changed, (
        f"the bad-input matrix changed; regenerate it with `{rc.REGENERATE}` ({changed[:3]})"
    )
    section = rc.render(results, rc.property_tests())
    name = os.path.join("docs", "reliability.md")
    text = _read(os.path.join(ROOT, name))
    assert rc.BEGIN in text and rc.END in text, f"{name} lost the reliability markers"
    assert rc.splice(text, section) == text, (
        f"{name}: the Reliability section is out of date; regenerate it with `{rc.REGENERATE}`"
    )
