"""Rating a frame of (prompt, completion) rows with the judge: shared by ``rated_pool`` and ``rated_distilled``.

One place decides what a rated row holds (four scores, compressed Overall,
status, tokens, cache key) and what the UI shows about a rating run, so the
pool and the distilled set are judged and reported the same way.
"""

from __future__ import annotations

import time

import dagster as dg
import pandas as pd

from lm_mixup_assets.lib.plots import histogram_grid
from lm_mixup_assets.lib.rubric import compress_overall
from lm_mixup_assets.metadata import table_metadata
from resources import JudgeResource, WarehouseResource

SCORE_COLUMNS = ["rarity", "complexity", "informativeness", "overall", "overall_compressed"]
JUDGE_COLUMNS = [*SCORE_COLUMNS, "status", "error", "judge_backend", "judge_model", "rubric_version",
                 "prompt_tokens", "completion_tokens", "from_cache", "cache_key", "rated_at"]


def rate_frame(context: dg.AssetExecutionContext, rows: pd.DataFrame, carry: list[str], judge: JudgeResource,
               warehouse: WarehouseResource, label: str, rubric_version: str | None = None) -> tuple[pd.DataFrame, dict]:
    """``rows`` (with ``prompt`` and ``completion``) rated: the ``carry`` columns plus :data:`JUDGE_COLUMNS`,
    one output row per input row, and the metadata for the asset. ``rubric_version``: None = the judge's
    pool rubric (``judge.rubric_version``)."""
    rubric_version = rubric_version or judge.rubric_version
    context.log.info(f"rating {len(rows)} rows of {label} with judge {judge.backend}/{judge.model} (rubric {rubric_version})")
    started = time.monotonic()
    rating, keys = judge.rate_pairs(rows["prompt"].tolist(), rows["completion"].tolist(), warehouse,
                                    progress=context.log.info, rubric_version=rubric_version)
    elapsed = time.monotonic() - started
    now = pd.Timestamp.now("UTC").tz_localize(None)
    records = []
    for row, outcome, hit, key in zip(rows[carry].to_dict("records"), rating.outcomes, rating.from_cache, keys):
        s = outcome.scores if outcome.status == "ok" else None
        records.append({
            **row,
            "rarity": s and s["rarity"], "complexity": s and s["complexity"],
            "informativeness": s and s["informativeness"], "overall": s and s["overall"],
            "overall_compressed": compress_overall(s["overall"]) if s else None,
            "status": outcome.status, "error": outcome.error, "judge_backend": judge.backend,
            "judge_model": judge.model, "rubric_version": rubric_version,
            "prompt_tokens": 0 if hit else outcome.prompt_tokens, "completion_tokens": 0 if hit else outcome.completion_tokens,
            "from_cache": bool(hit), "cache_key": key, "rated_at": now,
        })
    df = pd.DataFrame(records, columns=[*carry, *JUDGE_COLUMNS]).astype({c: "Int64" for c in SCORE_COLUMNS})

    status_counts = df["status"].value_counts().to_dict()
    prompt_tokens, completion_tokens = rating.tokens
    cost = judge.cost_usd(prompt_tokens, completion_tokens)
    ok = df[df["status"] == "ok"]
    context.log.info(
        f"{label}: {status_counts} in {elapsed:.1f}s; {rating.requests_made} judge calls, "
        f"{int(df['from_cache'].sum())} cache hits, tokens {prompt_tokens}+{completion_tokens}"
    )
    failed = df[df["status"] != "ok"]
    if len(failed):
        context.log.warning(f"{len(failed)} rows failed to rate (kept with their status; a re-run retries them): "
                            f"{failed['error'].astype(str).str[:120].value_counts().head(3).to_dict()}")
    metadata = {
        **table_metadata(df, ["sample_id", "overall", "overall_compressed", "status", "prompt"]),
        "rated_ok": int(status_counts.get("ok", 0)),
        "parse_errors": int(status_counts.get("parse_error", 0)),
        "api_errors": int(status_counts.get("api_error", 0)),
        "judge_requests": rating.requests_made,
        "cache_hits": int(df["from_cache"].sum()),
        "judge_prompt_tokens": prompt_tokens,
        "judge_completion_tokens": completion_tokens,
        "judge": f"{judge.backend}:{judge.model}",
        "rubric_version": rubric_version,
        "seconds": round(elapsed, 2),
        "overall_mean": float(ok["overall"].mean()) if len(ok) else 0.0,
        "score_histogram": dg.MetadataValue.md(
            histogram_grid({label: ok["overall"].astype(float).tolist()}, bins=[x + 0.5 for x in range(0, 11)],
                           title=f"Overall score, {label}", xlabel="Overall (1-10)")
        ),
    }
    if cost is not None:
        metadata["judge_cost_usd"] = round(cost, 4)
    if rating.stats:
        metadata["client_stats"] = dg.MetadataValue.json(rating.stats)
    return df, metadata


def precomputed_frame(rows: pd.DataFrame, carry: list[str], label: str) -> tuple[pd.DataFrame, dict]:
    """Rows that came with ratings (``rows`` holds the carry columns, the five scores, ``judge_model`` and
    ``rubric_version``): the same columns as :func:`rate_frame`, judge_backend ``precomputed``, no calls made."""
    now = pd.Timestamp.now("UTC").tz_localize(None)
    df = rows[[*carry, *SCORE_COLUMNS, "judge_model", "rubric_version"]].copy()
    df = df.assign(status="ok", error=None, judge_backend="precomputed", prompt_tokens=0, completion_tokens=0,
                   from_cache=False, cache_key=None, rated_at=now)
    df = df[[*carry, *JUDGE_COLUMNS]].astype({c: "Int64" for c in SCORE_COLUMNS})
    has_overall = df["overall"].notna()
    if has_overall.any():
        values, bins, what = df.loc[has_overall, "overall"], [x + 0.5 for x in range(0, 11)], "Overall (1-10)"
    else:  # only compressed labels were released (e.g. DS2's tulu_300k scores)
        values, bins, what = df["overall_compressed"], [x - 0.5 for x in range(0, 7)], "compressed Overall (0-5)"
    metadata = {
        **table_metadata(df, ["sample_id", "overall", "overall_compressed", "status", "prompt"]),
        "rated_ok": len(df), "parse_errors": 0, "api_errors": 0,
        "judge_requests": 0, "cache_hits": 0, "judge_prompt_tokens": 0, "judge_completion_tokens": 0,
        "judge": "precomputed:" + ", ".join(sorted(set(df["judge_model"].astype(str)))),
        "rubric_version": ", ".join(sorted(set(df["rubric_version"].astype(str)))),
        "overall_mean": float(df.loc[has_overall, "overall"].mean()) if has_overall.any() else 0.0,
        "overall_compressed_mean": float(df["overall_compressed"].mean()) if len(df) else 0.0,
        "score_histogram": dg.MetadataValue.md(
            histogram_grid({label: values.astype(float).tolist()}, bins=bins, title=f"Precomputed {what}, {label}", xlabel=what)
        ),
    }
    return df, metadata
