"""The generator resource: transformers on a tiny random model, openai against the local server, and the cache."""

import pytest

from resources import WarehouseResource
from resources.generator import GeneratorResource
from tests.openai_server import OpenAICompatServer

CHATS = [[{"role": "user", "content": "Name a primary colour."}],
         [{"role": "user", "content": "What is the capital of France? Answer in one word, please."}]]


def test_transformers_backend_generates_and_pays_once(home, tiny_causal_lm):
    warehouse = WarehouseResource(home=str(home))
    gen = GeneratorResource(backend="transformers", model=tiny_causal_lm, max_new_tokens=6, batch_size=2, device="cpu")
    out, hits = gen.generate(CHATS, warehouse)
    assert [o.status for o in out] == ["ok", "ok"] and hits == [False, False]
    assert all(0 < o.completion_tokens <= 6 for o in out) and out[0].prompt_tokens < out[1].prompt_tokens
    again, hits = gen.generate(CHATS, warehouse)
    assert hits == [True, True] and [o.raw_answer for o in again] == [o.raw_answer for o in out]
    # greedy is deterministic; other sampling parameters are another cache entry
    _, hits = gen.generate(CHATS[:1], warehouse, temperature=0.7)
    assert hits == [False]


def test_openai_backend_against_a_local_server(home):
    warehouse = WarehouseResource(home=str(home))
    with OpenAICompatServer(faults={1: [{"status": 500}]}) as server:
        gen = GeneratorResource(backend="openai", model="gen-test", base_url=server.base_url, api_key="k", concurrency=2)
        out, hits = gen.generate(CHATS, warehouse)
        assert [o.status for o in out] == ["ok", "ok"] and all(o.raw_answer for o in out)
        sent = server.request_count()
        assert sent == 3  # one retried 500
        _, hits = gen.generate(CHATS, warehouse)
        assert hits == [True, True] and server.request_count() == sent


def test_vllm_backend_explains_the_extra_when_missing(home):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here; the GPU path is exercised on a GPU machine")
    except ImportError:
        pass
    gen = GeneratorResource(backend="vllm", model="x")
    with pytest.raises(ImportError, match=r"pip install -e '\.\[gpu\]'"):
        gen.generate(CHATS, WarehouseResource(home=str(home)))
