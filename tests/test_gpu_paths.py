"""GPU paths: ``benchmarks/gpu_smoke.py`` runs them on a CUDA machine and skips cleanly without one."""

import importlib.util
from pathlib import Path

import pytest
import torch

SMOKE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"


def _gpu_smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SMOKE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the real smoke runs instead")
def test_gpu_smoke_skips_cleanly_without_cuda(capsys):
    assert _gpu_smoke().main([]) == 0
    assert capsys.readouterr().out.startswith("gpu_smoke skipped: no CUDA device")


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_smoke_generates_and_frees_memory(capsys, tmp_path):
    assert (
        _gpu_smoke().main(
            [
                "--cache-dir",
                str(tmp_path),
                "--prompts",
                "8",
                "--new-tokens",
                "16",
                "--embed-rows",
                "512",
                "--skip",
                "grpo",
                "--skip",
                "lm_eval",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "generate backend=transformers" in out and "embed device=cuda" in out
    after = [
        float(line.split("cuda_allocated_mb=")[1].split()[0]) for line in out.splitlines() if "memory after=" in line
    ]
    assert after and max(after) < 512  # no engine or model left on the GPU after its step
