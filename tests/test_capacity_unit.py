"""The capacity model (bench/capacity.py) reads this machine's measured figures and
covers every Modal profile; it is a model, and says so."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import capacity  # noqa: E402


def test_reads_the_committed_benchmark_report() -> None:
    measured = capacity.read_measured(capacity.FIGURES)
    assert set(measured.frontend_ms_per_token) == {1, 4, 16}
    assert measured.mask_us_mean > 0
    assert measured.compile_ms_p50 > 0
    assert measured.warm_start_s > 0


def test_covers_every_modal_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("modal")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "ananke_modal_capacity", ROOT / "modal_deploy" / "app.py"
    )
    assert spec is not None
    assert spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, app)
    spec.loader.exec_module(app)
    assert set(capacity.PROFILES) == set(app.PROFILES)
    for key, (_, gpu, count) in capacity.PROFILES.items():
        assert (app.PROFILES[key].gpu, app.PROFILES[key].gpu_count) == (gpu, count)


def test_roofline_reproduces_its_calibration_run() -> None:
    """At 1 and 8 requests the model gives the published A100 figures it was fitted to."""
    measured = capacity.read_measured(capacity.FIGURES)
    one = capacity.predict(
        "llama-3.1-8b-instruct", measured, concurrency=1, output_tokens=128, constrained=False
    )
    eight = capacity.predict(
        "llama-3.1-8b-instruct", measured, concurrency=8, output_tokens=128, constrained=False
    )
    assert one.tokens_s_container == pytest.approx(capacity.CALIBRATION_TOKENS_S_1, rel=0.05)
    assert eight.tokens_s_container == pytest.approx(
        capacity.CALIBRATION_TOKENS_S_1 * capacity.CALIBRATION_SPEEDUP_8, rel=0.05
    )


def test_constraints_and_concurrency_move_the_figures_the_right_way() -> None:
    measured = capacity.read_measured(capacity.FIGURES)
    free = capacity.predict("llama-3.1-70b-instruct-awq", measured, constrained=False)
    masked = capacity.predict("llama-3.1-70b-instruct-awq", measured, constrained=True)
    assert masked.tokens_s_container < free.tokens_s_container
    busy = capacity.predict("llama-3.1-70b-instruct-awq", measured, concurrency=20)
    assert busy.tokens_s_container > masked.tokens_s_container > 0
    assert busy.tokens_s_stream < masked.tokens_s_stream
    assert capacity.containers_for(25, 10) == 3


def test_table_is_labelled_a_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert capacity.main(["--sessions", "10", "100"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("MODEL, not a measurement")
    assert out.count("\n| llama-3.1-") == 4


def test_an_h100_is_faster_and_priced_as_one() -> None:
    measured = capacity.read_measured(capacity.FIGURES)
    a100 = capacity.predict("llama-3.1-70b-instruct-fp8", measured)
    h100 = capacity.predict("llama-3.1-70b-instruct-fp8", measured, gpu_type="H100")
    assert h100.tokens_s_container > 1.4 * a100.tokens_s_container
    assert h100.gpus == "2 x H100 80GB"
    assert h100.usd_per_idle_tail == pytest.approx(60 * 0.001097 * 2)
