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


@pytest.mark.slow  # SmolLM2 converted from its GGUF, one GRPO step and lm-eval on CPU (~60 s): make test-all
def test_gpu_smoke_wiring_runs_on_cpu(capsys, tmp_path):
    """``--device cpu``: every step of the smoke without vLLM, so the script and the code it calls are
    checked before a GPU machine's minutes are spent on them."""
    args = ["--device", "cpu", "--cache-dir", str(tmp_path), "--prompts", "4", "--new-tokens", "8"]
    assert _gpu_smoke().main([*args, "--embed-rows", "256", "--eval-limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    figures = {}
    for line in lines:
        head, *pairs = line.split()
        if "=" in line and not line.startswith("#"):
            figures.setdefault(head, []).append(dict(p.split("=", 1) for p in pairs if "=" in p))
    transformers = next(f for f in figures["generate"] if f.get("backend") == "transformers")
    assert int(transformers["tokens"]) > 0 and float(transformers["tokens_per_s"]) > 0
    assert any("skipped" in line and "vllm" in line for line in lines if line.startswith("generate"))
    assert figures["grpo"] == [{"use_vllm": "False", "steps": "1", "seconds": figures["grpo"][0]["seconds"]}]
    assert figures["lm_eval"][0]["backend"] == "hf" and int(figures["lm_eval"][0]["tasks"]) == 3
    assert int(figures["lm_eval"][0]["items"]) == 3 * 2  # --eval-limit items of each smoke task
    assert figures["embed"][0]["device"] == "cpu" and float(figures["embed"][0]["rows_per_s"]) > 0
    after = [f["after"] for f in figures["memory"]]
    assert after == ["generate", "grpo", "lm_eval", "embed"] and all(float(f["rss_mb"]) > 0 for f in figures["memory"])
