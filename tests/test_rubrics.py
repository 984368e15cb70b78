"""Judge rubric versions: exact renders (DS2's prompt verbatim), both answer layouts, cache keys."""

import hashlib

import pytest

from lm_mixup_assets.lib.rubric import (
    SYSTEM_PROMPT,
    JudgeParseError,
    get_rubric,
    judge_cache_key,
    known_rubrics,
    parse_judge_answer,
    per_task_rubric,
    render_judge_prompt,
    render_judge_request,
)
from resources import JudgeResource, WarehouseResource
from tests.openai_server import OpenAICompatServer, ds2_answer, expected_scores

# DS2/LLM_scoring/scoring_api.py (yuu250/LM-mixup): pre_prompt + "### <role>: <content>\n" per message + "\n### Rating:"
DS2_GOLDEN = (
    "\n"
    "        As a data quality estimator, your task is to assess the quality of data sample based on the criteria: "
    "Rarity, Complexity, Informativeness.\n"
    "        Please rate the sample on a scale from 1 to 10 for each criterion, and return an overall rating on a "
    "scale from 1 to 10, where a higher score indicates higher level of quality.\n"
    "        Ensure that the ratings are not overly concentrated around a specific score. If multiple samples have "
    "similar qualities, consider spreading the scores more evenly to reflect subtle differences.\n"
    "        Please carefully evaluate the following data sample and return the integral evaluation scores using "
    "the JSON format:\n"
    "        {\n"
    '            "Rarity": <number, 1-10>,\n'
    '            "Complexity": <number, 1-10>,\n'
    '            "Informativeness": <number, 1-10>,\n'
    '            "Overall rating": <number, 1-10>\n'
    "        }\n"
    "        ### user: What is 2+2?\n"
    "### assistant: 2+2 equals 4.\n"
    "\n"
    "### Rating:"
)

# data_process/gpt_rating.py: build_rubric(task) + "\n\n### Output:\n" + text + "\n\n### Rating:", no system message.
QA_HEAD = (
    "You are a data-quality estimator. Rate this **single** QA pair on Rarity, Complexity, Informativeness, "
    "and Overall (1-10 integers).\nReturn ONLY a JSON object like:\n"
    '{ "Rarity": <int>, "Complexity": <int>, "Informativeness": <int>, "Overall rating": <int> }\n\n'
    "### QA Pair:\n\n\n### Output:\n"
)


def test_ds2_prompt_is_verbatim_with_its_system_message():
    request = render_judge_request("What is 2+2?", "2+2 equals 4.", "ds2")
    assert request.user == DS2_GOLDEN
    assert request.messages() == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": DS2_GOLDEN},
    ]
    rubric = get_rubric("ds2")
    assert "scoring_api.py" in rubric.source and "Apache-2.0" in rubric.licence


def test_per_task_rubrics_render_like_the_reference():
    pair = render_judge_request("Why is the sky blue?", "Rayleigh scattering.", "per_task_qa_pair")
    assert pair.system is None and pair.messages() == [{"role": "user", "content": pair.user}]
    assert pair.user == QA_HEAD + "Q: Why is the sky blue?\nA: Rayleigh scattering.\n\n### Rating:"
    # A single sample body: the instruction that asked for it is not shown to the judge.
    body = "Q: Which gas?\nA) O2 B) N2 C) CO2 D) He\nAnswer: B"
    mcq = render_judge_prompt("Write a multiple-choice question based on X.", body, "per_task_mcq")
    assert mcq.startswith("You are a data-quality estimator. Rate this **single** MCQ item on ")
    assert mcq.endswith("### MCQ Item:\n\n\n### Output:\n" + body + "\n\n### Rating:") and "Write a" not in mcq
    assert "category\u2013statement example" in render_judge_prompt("p", "C: x\nS: y", "per_task_cs")
    assert {per_task_rubric(t) for t in ("qa", "mcq", "tfq", "cs", "paragraph")} == {
        "per_task_qa",
        "per_task_mcq",
        "per_task_tfq",
        "per_task_cs",
        "per_task_para",
    }
    assert {"pool_quality_v1", "ds2", "per_task_qa_pair"} <= set(known_rubrics())


def test_pool_quality_v1_renders_and_keys_as_before():
    rendered = render_judge_prompt("What is 2+2?", "2+2 equals 4.", "pool_quality_v1")
    assert rendered.endswith("### Instruction\nWhat is 2+2?\n\n### Response\n2+2 equals 4.\n")
    assert get_rubric("pool_quality_v1").system == SYSTEM_PROMPT
    # The key the pre-versioning code produced for this row: existing judge caches still hit.
    assert (
        judge_cache_key("openai", "gpt-4o-mini", "pool_quality_v1", rendered)
        == "0f31084ffbe94faa5ec1bbe6805792c45ee5357db02f93c9fc9e825db6c3897e"
    )


def test_braces_in_a_row_are_never_placeholders():
    rendered = render_judge_prompt("Print {completion} and {prompt}", "ok {x}", "ds2")
    assert "### user: Print {completion} and {prompt}\n### assistant: ok {x}\n" in rendered


def test_cache_key_holds_the_rubric_version_and_a_sampling_temperature():
    rendered = render_judge_prompt("p", "c", "ds2")
    base = judge_cache_key("openai", "gpt-4o-mini", "ds2", rendered)
    assert base != judge_cache_key("openai", "gpt-4o-mini", "pool_quality_v1", rendered)
    assert base == judge_cache_key("openai", "gpt-4o-mini", "ds2", rendered, 0.0)
    assert base != judge_cache_key("openai", "gpt-4o-mini", "ds2", rendered, 1.0)
    manual = hashlib.sha256(b"openai\x1fgpt-4o-mini\x1fds2\x1f" + rendered.encode() + b"\x1f").hexdigest()
    assert base == manual


@pytest.mark.parametrize(
    "text",
    [
        # DS2's layout: indented JSON after prose, "Overall rating"
        'Here is my evaluation:\n{\n    "Rarity": 6,\n    "Complexity": 5,\n    "Informativeness": 7,\n    "Overall rating": 6\n}',
        '{ "Rarity": 6, "Complexity": 5, "Informativeness": 7, "overall RATING": "6" }',
        # ours: "Overall"
        '{"Rarity": 6, "Complexity": 5, "Informativeness": 7, "Overall": 6}',
        '```json\n{"rarity": 6, "complexity": 5, "informativeness": 7, "OVERALL": 6.0}\n```',
    ],
)
def test_both_layouts_parse(text):
    assert parse_judge_answer(text) == {"rarity": 6, "complexity": 5, "informativeness": 7, "overall": 6}


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"Rarity": 6, "Complexity": 5, "Informativeness": 7, "Overall_rating": 6}', "missing key 'overall'"),
        ('{"Rarity": 6, "Complexity": 5, "Informativeness": 7, "Overall score": 6}', "missing key 'overall'"),
        ('{"Rarity": 6, "Complexity": 5, "Informativeness": 7, "Overall": 6, "Overall rating": 7}', "ambiguous"),
        ('{"Rarity": 0, "Complexity": 0, "Informativeness": 0, "Overall rating": 0}', "outside 1-10"),
        ('{"Rarity": 6, "Complexity": 5, "Informativeness": 7, "Overall rating": 6.5}', "not an integer"),
    ],
)
def test_anything_else_is_a_parse_error(text, why):
    with pytest.raises(JudgeParseError, match=why):
        parse_judge_answer(text)


def test_unknown_rubric_names_the_known_ones():
    with pytest.raises(ValueError, match="known: .*'ds2'"):
        get_rubric("ds3")


def test_openai_judge_sends_each_rubrics_messages_and_parses_ds2_answers(home, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test")  # read at run time; never a config value
    warehouse = WarehouseResource(home=str(home))
    prompts, completions = ["What is 2+2?", "Name a colour."], ["2+2 equals 4.", "Blue."]
    with OpenAICompatServer(answer_fn=ds2_answer) as server:
        judge = JudgeResource(
            backend="openai",
            model="judge-test",
            base_url=server.base_url,
            rubric_version="ds2",
            concurrency=2,
            max_parse_retries=0,
        )
        rating, keys = judge.rate_pairs(prompts, completions, warehouse)
        assert [o.status for o in rating.outcomes] == ["ok", "ok"]
        for o, p, c in zip(rating.outcomes, prompts, completions):
            user = render_judge_prompt(p, c, "ds2")
            assert o.scores == expected_scores(user)  # what the server answered, in DS2's layout
            # the server counts words of every message: DS2's system message (5 words) was sent
            assert o.prompt_tokens == 5 + len(user.split())
        # One rubric per row (e.g. per task type); the per-task rubric has no system message.
        mixed, mixed_keys = judge.rate_pairs(
            prompts, completions, warehouse, rubric_version=["ds2", "per_task_qa_pair"]
        )
        assert mixed.from_cache == [True, False] and mixed_keys[0] == keys[0] and mixed_keys[1] != keys[1]
        user = render_judge_prompt(prompts[1], completions[1], "per_task_qa_pair")
        assert mixed.outcomes[1].prompt_tokens == len(user.split())
        assert server.request_count() == 3
    cached = warehouse.query("select rubric_version, count(*) n from judge_cache group by 1 order by 1")
    assert cached.to_dict("records") == [
        {"rubric_version": "ds2", "n": 2},
        {"rubric_version": "per_task_qa_pair", "n": 1},
    ]


def test_profiles_pick_the_reference_rubrics_on_paper_and_ours_on_demo(monkeypatch):
    from resources.profiles import PROFILES

    paper, demo = PROFILES["paper"]["judge"], PROFILES["demo"]["judge"]
    assert (paper["rubric_version"], paper["distilled_rubric_version"], paper["target_rubric_version"]) == (
        "ds2",
        "per_task_qa_pair",
        "per_task",
    )
    assert (demo["rubric_version"], demo["distilled_rubric_version"], demo["target_rubric_version"]) == (
        "pool_quality_v1",
    ) * 3
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    judge = JudgeResource(**paper)
    judge.validate()
    assert [judge.rubric_for_task(t) for t in ("qa", "paragraph")] == ["per_task_qa", "per_task_para"]
    assert JudgeResource(**demo).rubric_for_task("mcq") == "pool_quality_v1"
