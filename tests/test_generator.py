"""The generator resource: transformers on a tiny random model, openai against the local server, and the cache."""

import pytest

from resources import WarehouseResource
from resources.generator import GeneratorResource
from tests.openai_server import OpenAICompatServer


@pytest.fixture(autouse=True)
def api_key_in_environment(monkeypatch):
    """The openai backend reads its key from the environment at run time; it is never a config value."""
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


CHATS = [
    [{"role": "user", "content": "Name a primary colour."}],
    [{"role": "user", "content": "What is the capital of France? Answer in one word, please."}],
]


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
        gen = GeneratorResource(backend="openai", model="gen-test", base_url=server.base_url, concurrency=2)
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


def test_openai_backend_failures_are_statuses_and_retried_next_time(home):
    warehouse = WarehouseResource(home=str(home))
    faults = {"primary colour": [{"status": 503, "sticky": True}], "capital of France": [{"content": ""}]}
    with OpenAICompatServer(faults=faults) as server:
        gen = GeneratorResource(
            backend="openai", model="gen-test", base_url=server.base_url, max_retries=1, timeout_s=5
        )
        out, _ = gen.generate(CHATS, warehouse)
        assert out[0].status == "api_error" and "503" in out[0].error and not out[0].raw_answer
        assert out[1].status == "ok" and out[1].raw_answer  # an empty answer was re-asked
        before = server.request_count()
        out2, hits = gen.generate(CHATS, warehouse)
        assert hits == [False, True]  # the failure was not cached: asked again
        assert server.request_count() - before == 2 and out2[0].status == "api_error"


def test_llm_writer_builds_mixture_targets_through_the_generator(resources, query):
    import dagster as dg

    import definitions

    def answer(user_message: str) -> str:
        if '"Rarity"' in user_message:  # the judge's rubric
            return '{"Rarity": 7, "Complexity": 7, "Informativeness": 8, "Overall": 8}'
        return "Q: What is described in this paragraph?\nA: The paragraph describes its subject in detail."

    with OpenAICompatServer(answer_fn=answer, mode="thread") as server:
        res = dict(resources)
        res["mixture_writer"] = GeneratorResource(backend="openai", model="writer", base_url=server.base_url)
        assets = [a for a in definitions.defs.assets if a.node_def.name in ("wiki_paragraphs", "mixture_targets")]
        config = {
            "ops": {
                "wiki_paragraphs": {"config": {"max_paragraphs": 5}},
                "mixture_targets": {"config": {"writer": "llm", "tasks": ["qa", "mcq"]}},
            }
        }
        assert dg.materialize(assets, resources=res, run_config=config).success
        assert server.request_count() == 10  # 5 paragraphs x 2 tasks written; the heuristic judge rated them
    targets = query("select task, kept, drop_reason from mixture_targets order by task")
    assert targets[targets["task"] == "qa"]["kept"].all()
    # a QA-shaped answer to an MCQ request fails the MCQ validator and is dropped with the reason
    mcq = targets[targets["task"] == "mcq"]
    assert (~mcq["kept"]).all() and mcq["drop_reason"].str.startswith("format:").all()


def test_default_repetition_penalty_keeps_existing_cache_keys():
    """Parameters added later are left out of the key at their default: caches filled before stay valid."""
    import hashlib
    import json

    from lm_mixup_assets.lib.generation import GenerationParams, generation_cache_key

    old_payload = json.dumps(
        ["transformers", "m", {"max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0, "seed": 0}, CHATS[0]],
        sort_keys=True,
        ensure_ascii=False,
    )
    assert (
        generation_cache_key("transformers", "m", GenerationParams(), CHATS[0])
        == hashlib.sha256(old_payload.encode()).hexdigest()
    )
    assert generation_cache_key(
        "transformers", "m", GenerationParams(repetition_penalty=1.05), CHATS[0]
    ) != generation_cache_key("transformers", "m", GenerationParams(), CHATS[0])


def test_transformers_backend_applies_the_repetition_penalty(home, tiny_causal_lm):
    from transformers import AutoTokenizer

    warehouse = WarehouseResource(home=str(home))
    gen = GeneratorResource(backend="transformers", model=tiny_causal_lm, max_new_tokens=16, batch_size=2, device="cpu")
    plain, _ = gen.generate(CHATS[:1], warehouse)
    # an enormous penalty forbids every token already in the prompt or the text so far (HF semantics)
    penalised, hits = gen.generate(CHATS[:1], warehouse, repetition_penalty=1e9)
    assert hits == [False]  # another cache entry
    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    prompt_ids = set(tok.apply_chat_template(CHATS[0], add_generation_prompt=True, tokenize=True))
    new_ids = tok(penalised[0].raw_answer, add_special_tokens=False)["input_ids"]
    assert penalised[0].raw_answer != plain[0].raw_answer and len(new_ids) >= 8
    # no token twice and none from the prompt (re-encoding the decoded text may merge or split a couple)
    assert len(set(new_ids)) >= len(new_ids) - 2 and len(set(new_ids) & prompt_ids) <= 2


def test_openai_backend_sends_repetition_penalty_only_when_set(home):
    """A real HTTP round trip through the openai SDK; the server records each request body."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    bodies = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # http.server's method name
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            reply = json.dumps(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "m",
                    "choices": [
                        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Red."}}
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        warehouse = WarehouseResource(home=str(home))
        gen = GeneratorResource(
            backend="openai",
            model="m",
            base_url=f"http://127.0.0.1:{server.server_port}/v1",
            concurrency=1,
            max_retries=0,
        )
        out, _ = gen.generate(CHATS[:1], warehouse)
        assert out[0].raw_answer == "Red." and "repetition_penalty" not in bodies[-1]
        out, _ = gen.generate(CHATS[:1], warehouse, repetition_penalty=1.05)
        assert out[0].status == "ok" and bodies[-1]["repetition_penalty"] == 1.05
        assert bodies[-1]["messages"] == CHATS[0] and bodies[-1]["temperature"] == 0.0
    finally:
        server.shutdown()
