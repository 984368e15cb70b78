"""The mixture group materialised on a small slice of the packaged Wikipedia sample."""

import json

import dagster as dg
import numpy as np

import definitions
from lm_mixup_assets.lib.knn_bayes import KnnBayesLibrary
from lm_mixup_assets.lib.mixture_tasks import TASK_TYPES, validate_target
from tests.helpers import checks_by_name


def mixture_assets_and_checks():
    assets = [a for a in definitions.defs.assets if set(a.group_names_by_key.values()) == {"mixture"}]
    checks = [
        c
        for c in definitions.defs.asset_checks
        if any(k.asset_key.path[-1].startswith("mixture") for k in c.check_keys)
    ]
    return [*assets, *checks]


def test_mixture_group_on_a_small_slice(resources, query, home):
    config = {
        "ops": {
            "wiki_paragraphs": {"config": {"max_paragraphs": 12}},
            "mixture_variants": {"config": {"variants_per_target": 4}},
            "mixture": {"config": {"max_variants": 4, "test_fraction": 0.25}},
        }
    }
    result = dg.materialize(mixture_assets_and_checks(), resources=resources, run_config=config)
    assert result.success
    checks = checks_by_name(result)
    assert all(c.passed for c in checks.values()), {k: c.description for k, c in checks.items()}

    targets = query("select * from mixture_targets")
    assert len(targets) == 12 * len(TASK_TYPES)  # every paragraph x task has a row
    assert targets.loc[~targets["kept"], "drop_reason"].notna().all()  # each drop says why
    kept = targets[targets["kept"]]
    assert set(kept["task"]) == set(TASK_TYPES)
    assert all(not validate_target(t, x) for t, x in zip(kept["task"], kept["text"]))

    variants = query("select v.*, t.text as target from mixture_variants v join mixture_targets t using (target_id)")
    assert (variants["text"] != variants["target"]).all()
    assert variants.groupby("target_id").size().max() <= 4
    # degradation works: variants rate below their targets on average
    assert variants["overall"].mean() < kept["overall"].mean()

    mix = query("select * from mixture")
    assert mix["n_variants"].between(2, 4).all()
    assert mix.groupby("paragraph_id")["split"].nunique().max() == 1
    row = mix.iloc[0]
    assert row["input"].startswith(row["instruction"]) and row["output"] in set(kept["text"])
    export = home / "artifacts" / "mixture" / "mixture_train.jsonl"
    first = json.loads(export.read_text().splitlines()[0])
    assert {"instruction", "input", "output", "cot", "task_type"} <= set(first)

    libs = query("select * from rating_library")
    assert set(libs["task"]) == set(TASK_TYPES)
    lib = KnnBayesLibrary.load(libs["path"].iloc[0])
    assert np.allclose(lib.T.sum(axis=1), 1.0)


def test_paper_cluster_sizes_span_2_to_20(resources, query):
    """The paper profile's variant settings (a pool of 20 noise variants, clusters up to 20) on a small slice."""
    from lm_mixup_assets.config import resolved_settings
    from lm_mixup_assets.lib.settings.mixture import MixtureSettings, VariantsSettings

    variants, mix = resolved_settings(VariantsSettings, "paper")[0], resolved_settings(MixtureSettings, "paper")[0]
    assert (variants.variants_per_target, mix.max_variants) == (20, 20)
    config = {
        "ops": {
            "wiki_paragraphs": {"config": {"max_paragraphs": 5}},
            "mixture_variants": {"config": {"variants_per_target": variants.variants_per_target}},
            "mixture": {"config": {"max_variants": mix.max_variants}},
        }
    }
    # rating_library (embedding every variant) is left out: its path is the first test's
    built = [
        a
        for a in mixture_assets_and_checks()
        if getattr(a, "node_def", None) is None or a.node_def.name != "rating_library"
    ]
    result = dg.materialize(
        built,
        resources=resources,
        run_config=config,
        selection=[dg.AssetKey(k) for k in ("wiki_paragraphs", "mixture_targets", "mixture_variants", "mixture")],
    )
    assert result.success
    assert checks_by_name(result)["mixture_variant_counts"].passed
    pools = query("select target_id, count(*) n from mixture_variants group by 1")
    assert pools["n"].max() == 20
    mix = query("select n_variants, len(variant_ids) listed, source, cot from mixture")
    assert mix["n_variants"].between(2, 20).all() and (mix["listed"] == mix["n_variants"]).all()
    assert mix["n_variants"].max() > 12 and mix["n_variants"].min() < 6  # spread over the range, not demo's 2-6
    assert (mix["source"] == "built").all() and (mix["cot"] == "").all()  # extractive targets: cot auto writes none


def test_llm_writer_degrades_and_writes_cot_through_mixture_writer(resources, query, monkeypatch):
    """Targets, degradations and cot come from the mixture_writer resource (not the distilling generator);
    a failed cot stays visible in cot_error and the warning check."""
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")  # the openai writer reads it at run time
    import re

    from resources.generator import GeneratorResource
    from tests.openai_server import OpenAICompatServer

    def answer(user_message: str) -> str:
        if user_message.startswith("You write training data"):
            title = re.search(r"Article: (.*)", user_message).group(1).strip()
            return f"Q: What is {title} known for?\nA: {title} is known for several facts described in its article."
        if "low-quality versions" in user_message:
            title = re.search(r"Q: What is (.*?) known for\?", user_message).group(1)
            return f"Q: What is {title} known for?\nA: Some facts.\n###\nQ: What is {title}?\nA: It is known."
        assert "Write the expert's reasoning" in user_message
        if "Q: What is " + first_title + " known" in user_message:
            return "<answer>a copied answer</answer>"  # not reasoning: must not reach the cot column
        return "The versions agree on the subject; I keep the complete answer and drop the vague ones."

    paragraphs = None
    with OpenAICompatServer(answer_fn=answer, mode="thread") as server:
        res = dict(resources)
        res["mixture_writer"] = GeneratorResource(backend="openai", model="writer", base_url=server.base_url)
        res["generator"] = GeneratorResource(backend="openai", model="never-called", base_url="http://127.0.0.1:9")
        wiki = [a for a in definitions.defs.assets if a.node_def.name == "wiki_paragraphs"]
        assert dg.materialize(
            wiki, resources=res, run_config={"ops": {"wiki_paragraphs": {"config": {"max_paragraphs": 4}}}}
        ).success
        paragraphs = query("select title from wiki_paragraphs order by paragraph_id")
        first_title = paragraphs["title"].iloc[0]
        rest = [
            a
            for a in mixture_assets_and_checks()
            if getattr(a, "node_def", None) is None or a.node_def.name != "wiki_paragraphs"
        ]
        config = {
            "ops": {
                "mixture_targets": {"config": {"writer": "llm", "tasks": ["qa"]}},
                "mixture_variants": {
                    "config": {
                        "variants_per_target": 2,
                        "llm_degradation": True,
                        "llm_variants_per_target": 2,
                        "llm_noisy_copies": 1,
                    }
                },
                "mixture": {"config": {"cot": "auto", "test_fraction": 0.0}},
            }
        }
        result = dg.materialize(
            rest,
            resources=res,
            run_config=config,
            selection=[dg.AssetKey(k) for k in ("mixture_targets", "mixture_variants", "mixture")],
        )
        assert result.success
    variants = query("select origin, operators from mixture_variants")
    assert {"noise", "llm", "llm+noise"} <= set(variants["origin"])
    noisy = variants[variants["origin"] == "llm+noise"]["operators"]
    assert noisy.str.startswith("llm_degrade+").all()
    assert set(noisy.str.split("+").explode()) <= {"llm_degrade", "typos", "cross_topic_merge"}
    mix = query("select m.cot, m.cot_error, p.title from mixture m join wiki_paragraphs p using (paragraph_id)")
    assert len(mix) == 4
    bad = mix[mix["title"] == first_title]
    assert (bad["cot"] == "").all() and bad["cot_error"].str.contains("tags").all()
    good = mix[mix["title"] != first_title]
    assert good["cot"].str.startswith("The versions agree").all() and good["cot_error"].isna().all()
    check = checks_by_name(result)["mixture_cot_written"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
