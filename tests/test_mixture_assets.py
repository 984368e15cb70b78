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
    checks = [c for c in definitions.defs.asset_checks
              if any(k.asset_key.path[-1].startswith("mixture") for k in c.check_keys)]
    return [*assets, *checks]


def test_mixture_group_on_a_small_slice(resources, query, home):
    config = {"ops": {"wiki_paragraphs": {"config": {"max_paragraphs": 12}},
                      "mixture_variants": {"config": {"variants_per_target": 4}},
                      "mixture": {"config": {"max_variants": 4, "test_fraction": 0.25}}}}
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

    variants = query("select v.*, t.text target from mixture_variants v join mixture_targets t using (target_id)")
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
