"""JSON Schema conformance on real data: all 1,414 MaskBench schemas through
the service's own compile path and all 4,677 labelled documents through a
matcher of the grammar the engine would get (default model tokenizer),
compared with llguidance used directly at the same options. The project must
lose nothing: every schema compiles on one side iff on the other, and every
document gets the same verdict. bench/maskbench_report.py prints the table.

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


def test_no_schema_lost_by_conversion(report: mb.Report) -> None:
    only_direct, only_project = report.compile_mismatches()
    assert only_direct == [], "schemas llguidance compiles but the service refuses"
    assert only_project == [], "schemas the service compiles but llguidance refuses"
    assert report.project.errors == report.direct.errors


def test_every_document_same_verdict_as_llguidance(report: mb.Report) -> None:
    assert report.disagreements() == []
    assert report.project.valid_accepted == report.direct.valid_accepted
    assert report.project.invalid_rejected == report.direct.invalid_rejected


def test_numbers_are_recorded(report: mb.Report) -> None:
    """The figures the README quotes (bench/maskbench_report.py prints them); a
    drop means a regression in the compile path or in llguidance."""
    print("\n" + mb.markdown(report, top=8))
    print(json.dumps({k: v for k, v in report.as_dict(0).items() if k != "seconds"}))
    assert report.project.compiled >= 1185
    assert report.project.valid_accepted >= 1566
    assert report.project.invalid_rejected >= 2591
