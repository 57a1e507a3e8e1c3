"""The GPU check's CPU half: the same comparisons `scripts/gpu_check.sh` runs on CUDA,
here CPU against CPU and llguidance's reference kernel; and proof that they catch
a wrong result and need neither vLLM nor the gRPC/protobuf stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ananke_server import gpu_check, masks

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return gpu_check.load_tokenizer(None)[0]


def test_every_comparison_matches_on_cpu() -> None:
    report = gpu_check.run_checks("cpu")
    failed = [r for r in report.results if not r.ok]
    assert not failed, failed
    names = " ".join(r.name for r in report.results)
    for group in ("apply_token_bitmask", "force_token", "AND of masks", "intersection"):
        assert group in names
    assert len(report.results) > 100
    assert report.ok


def test_synthetic_vocabulary_works_without_a_tokenizer_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ANANKE_HOME", str(tmp_path))
    tokenizer, source = gpu_check.load_tokenizer(None)
    assert source == "synthetic byte-level"
    results = list(gpu_check.check_intersection_batch("cpu", tokenizer, steps=4))
    assert all(r.ok for r in results), [r for r in results if not r.ok]


def test_a_wrong_mask_application_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaving the logits past the mask's last word unmasked (vLLM pads its LM head)
    disagrees with the reference."""

    def forgets_padding(row: Any, mask: Any) -> None:
        width = int(row.shape[0])
        masks.apply_token_bitmask(row[: min(width, mask.shape[0] * 32)], mask)

    monkeypatch.setattr(gpu_check, "apply_token_bitmask", forgets_padding)
    failed = [r for r in gpu_check.check_mask_application("cpu") if not r.ok]
    assert failed
    assert all("width=49280" in r.name for r in failed)
    assert "CPU vs reference" in failed[0].detail


def test_a_wrong_dead_end_row_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def leaves_a_logit(row: Any, token: int) -> None:
        masks.force_token(row, token)
        row[token] = 1.0

    monkeypatch.setattr(gpu_check, "force_token", leaves_a_logit)
    assert not any(r.ok for r in gpu_check.check_forced_token("cpu"))


def test_bit_comparison_sees_signed_zero_and_nan() -> None:
    import torch

    ok, _ = gpu_check._same_bits(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert not ok
    nan = torch.tensor([float("nan")])
    assert gpu_check._same_bits(nan, nan.clone())[0]


def test_module_needs_no_vllm_grpc_or_protobuf() -> None:
    """What the GPU machine lacks is blocked; the check still runs to the end."""
    code = (
        "import sys\n"
        "for name in ('vllm', 'grpc', 'google.protobuf', 'ananke', 'transformers'):\n"
        "    sys.modules[name] = None\n"
        "import runpy\n"
        "sys.argv = ['gpu_check', '--device', 'cpu']\n"
        "runpy.run_module('ananke_server.gpu_check', run_name='__main__')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "service"))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "comparisons bit-identical" in done.stdout


def test_script_runs_the_check(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable, ANANKE_GPU_CHECK_DIR=str(tmp_path))
    report = tmp_path / "report.json"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--json", str(report)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"ok": true' in report.read_text()


def test_script_refuses_without_cuda_when_asked_for_it() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu_check.main(["--device", "cuda"]) == 2
