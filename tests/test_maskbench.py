"""JSON Schema conformance on real data: all 1,414 MaskBench schemas through
the service's own compile path (schema preparation included) and all 4,677
labelled documents through a matcher of the grammar the engine would get
(default model tokenizer) and, where the grammar over-approximates, the
validator of the original schema; compared with llguidance used directly at
the same options. The service must serve >= 99% of the schemas, lose none
llguidance serves, agree with llguidance wherever both compile, and reject
(grammar + validator) the invalid documents. bench/maskbench_report.py
prints the table.

~25-40 s on 2 cores (the corpus is read from ../shared/data/maskbench, never
copied)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import maskbench_report as mb

pytestmark = pytest.mark.skipif(not mb.MASKBENCH.is_dir(), reason=f"{mb.MASKBENCH} is missing")


@pytest.fixture(scope="module")
def report() -> Iterator[mb.Report]:
    tokenizer, hf = mb.default_tokenizer()
    conformance = mb.Conformance(tokenizer, hf)
    try:
        yield conformance.run(mb.load_corpus())
    finally:
        conformance.close()


def test_corpus_is_complete(report: mb.Report) -> None:
    assert (report.schemas, report.valid_docs, report.invalid_docs) == (1414, 1753, 2924)


def test_serves_at_least_99_percent(report: mb.Report) -> None:
    assert report.project.compiled >= 0.99 * report.schemas
    assert report.project.validated >= 1  # some are served only thanks to validation


def test_no_schema_lost_by_conversion(report: mb.Report) -> None:
    only_direct, only_project = report.compile_mismatches()
    assert only_direct == [], "schemas llguidance compiles but the service refuses"
    assert len(only_project) == report.project.compiled - report.direct.compiled


def test_same_grammar_verdicts_where_both_compile(report: mb.Report) -> None:
    """Where llguidance compiles a schema as written, the service's grammar is
    llguidance's: the same verdict on every document."""
    assert report.disagreements() == []


def test_validated_schemas_reject_what_the_grammar_lets_through(report: mb.Report) -> None:
    p = report.project
    assert p.invalid_rejected > p.invalid_rejected_grammar
    # Validation never rejects a valid document the grammar accepted.
    assert p.valid_accepted == p.valid_accepted_grammar
    wrong_invalid = [(name, index) for name, index, valid in p.wrong if not valid]
    # Left: formats neither llguidance nor the validator checks (here `iri`).
    assert len(wrong_invalid) <= 2, wrong_invalid


def test_numbers_are_recorded(report: mb.Report) -> None:
    """The figures the README quotes (bench/maskbench_report.py prints them); a
    drop means a regression in the compile path, preparation or llguidance."""
    print("\n" + mb.markdown(report, top=8))
    print(json.dumps({k: v for k, v in report.as_dict(0).items() if k != "seconds"}))
    assert report.project.compiled >= 1414
    assert report.project.exact >= 1255
    assert report.project.valid_accepted >= 1672
    assert report.project.valid_accepted_reordered >= 1721
    assert report.project.invalid_rejected >= 2922
    assert report.direct.compiled >= 1185
