"""What every warehouse column means: the descriptions the UI shows in each table's column schema.

One dictionary for the whole platform, since most columns (``source``, ``sample_id``, the four
scores…) mean the same in every table; ``TABLE_COLUMNS`` holds the columns whose meaning depends
on the table. ``describe`` picks the table's own description first.
"""

from __future__ import annotations

_SCORE = "the judge's {} score, 1-10 (empty when the row failed)"

COLUMNS: dict[str, str] = {
    # the pool
    "source": "the pool source (a partition of the manifest) the row comes from",
    "sample_id": "stable id of the row: a hash of its source and normalised content",
    "prompt": "the instruction (user turn)",
    "completion": "the answer to the prompt",
    "file": "the input file the row was read from",
    "position": "the row's position in its input file (line, data row or item)",
    "locator": "where the row is, for a person: file and line or item",
    "input_format": "how the row was given: prompt/completion, Alpaca fields or chat messages",
    "duplicate_count": "exact duplicates of this content folded into this one row",
    "reason": "why the row was not ingested",
    "raw_text": "the input row as read (500 characters at most, invalid bytes as \\xNN)",
    "origin": "where the source's rows come from (file path or dataset id)",
    "input_rows": "rows in the source's input",
    "ingested": "rows ingested (in raw_pool)",
    "rejected": "input rows rejected (in rejected_rows)",
    "duplicates": "exact duplicates folded into another row",
    "ingested_at": "when the source was last ingested (UTC)",
    "attempted_at": "when the failed ingest ran (UTC)",
    "rarity": _SCORE.format("Rarity"),
    "complexity": _SCORE.format("Complexity"),
    "informativeness": _SCORE.format("Informativeness"),
    "overall": _SCORE.format("Overall"),
    "overall_compressed": "Overall compressed to 0-5: min(9, max(4, overall)) - 4; the split and acceptance compare this",
    "status": "outcome of the row's judge call: ok, parse_error or api_error",
    "error": "what went wrong when status is not ok",
    "judge_backend": "the judge that rated the row: openai, heuristic or precomputed",
    "judge_model": "the judge's model",
    "rubric_version": "the named rubric the judge was given (lib/rubrics/rubrics.yaml)",
    "prompt_tokens": "prompt tokens this call cost (0 when answered from the cache)",
    "completion_tokens": "completion tokens this call cost (0 when answered from the cache)",
    "from_cache": "whether the answer came from the cache (nothing paid)",
    "cache_key": "the cache entry's key: a hash of everything that decides the answer",
    "rated_at": "when the row was rated (UTC)",
    "quality_threshold": "the compressed-Overall threshold the row was split or accepted with",
    "raw": "rows in raw_pool",
    "rated_ok": "rows the judge rated (status ok)",
    "rated_failed": "rows whose rating failed (parse_error or api_error)",
    "high": "rows in high_quality_pool",
    "low": "rows in low_quality_pool",
    "high_fraction": "high / rated ok",
    "judge_prompt_tokens": "prompt tokens the judge used for the source",
    "judge_completion_tokens": "completion tokens the judge used for the source",
    # caches
    "backend": "the backend that answered (openai, heuristic, transformers, vllm, hf)",
    "model": "the model that answered (a local model carries a fingerprint of its files)",
    "raw_answer": "the answer's text as returned",
    "created_at": "when the row was written (UTC)",
    "params": "the sampling parameters of the generation (JSON)",
    "chat": "the messages sent (JSON)",
    # clusters
    "cluster_id": "the cluster of low-quality rows (within the source)",
    "cluster_size": "members in the row's cluster",
    "member_cosine": "cosine of the row's embedding to its cluster centre",
    "cluster_mean_cosine": "mean member-to-centre cosine of the cluster",
    "embedding_model": "the embedder that produced the vectors",
    "part": "part of a cluster split to fit max_input_tokens (0 when whole)",
    "n_parts": "parts the cluster was split into",
    "member_ids": "sample_ids of the low-quality rows merged into this row (lineage)",
    "n_members": "rows merged",
    "instruction": "the merge instruction given to the distiller",
    "input_text": "the cluster's members as the distiller reads them",
    "input_tokens": "tokens of the distiller input (policy tokenizer)",
    "over_max_tokens": "a single member alone exceeds max_input_tokens (kept whole, skipped when distilled)",
    # MIXTURE
    "paragraph_id": "the Wikipedia paragraph the sample is built from",
    "title": "the Wikipedia article",
    "section": "the article's section",
    "n_chars": "characters of the paragraph",
    "target_id": "the high-quality MIXTURE target",
    "task": "the task type: qa, mcq, tfq, cs or paragraph",
    "writer": "how the target was written: extractive or llm",
    "text": "the sample's text",
    "format_errors": "what the task's format validator found wrong (empty = valid)",
    "kept": "whether the target is kept (valid and at or above min_quality)",
    "drop_reason": "why the target was dropped",
    "variant_id": "the degraded variant",
    "operators": "the noise operators (or LLM rewrite) that made the variant",
    "example_id": "the MIXTURE example",
    "input": "the instruction followed by the variants, blank-line separated",
    "output": "the target the variants are merged into",
    "cot": "the reasoning written for the example (empty for extractive targets)",
    "variant_ids": "the variants of this example",
    "n_variants": "variants in this example",
    "split": "train or test, decided by a hash of the paragraph",
    "origin_file": "the file of the released MIXTURE the example was read from",
    "origin_row": "its row in that file",
    "origin_task_type": "the task type as the released file names it",
    "cot_error": "why writing the cot failed",
    "n_samples": "samples the row counts",
    "path": "the file written",
    "class_counts": "samples per compressed-score class",
    "k_t": "neighbours of the kNN-Bayes transition matrix",
    "smoothing": "additive smoothing of the transition matrix",
    "prior": "class prior of the rating library",
    "T": "the transition matrix of the kNN-Bayes rater",
    # training
    "examples": "examples evaluated",
    "format_compliance": "share of answers in the required layout",
    "parsed_answers": "answers with a complete answer block",
    "alignment": "embedding cosine of the answer to the reference (reward component)",
    "quality_reward": "the kNN-Bayes quality reward",
    "quality": "the kNN-Bayes quality reward",
    "format": "the format reward",
    "total": "the weighted reward",
    "total_reward": "the weighted reward",
    "judge_overall": "the judge's mean Overall of the parsed answers",
    "response": "the model's answer as generated",
    # distill
    "distiller": "the model that merged the cluster",
    "well_formed": "the answer used the <answer> tags",
    "distilled_at": "when the cluster was distilled (UTC)",
    # selection
    "set_name": "the set the row is ranked within: original_high or distilled_high",
    "mean_knn_distance": "mean cosine distance to the k nearest neighbours in its set",
    "long_tail_score": "mean_knn_distance min-max normalised to [0, 1]; higher = rarer",
    "k": "neighbours used",
    "arm": "the training-set recipe (a partition), or base for the untuned model",
    "pool": "the pool the row was drawn from",
    "fraction": "the recipe's share of the pool",
    "wanted": "rows the recipe asks of the pool",
    "available": "rows the pool has",
    "taken": "rows taken",
    "shortfall": "rows wanted but not available (never filled from another pool)",
    # evaluation
    "base_model": "the downstream base model",
    "merged_path": "the merged model folder, when one was written (empty: evaluated as base + adapter)",
    "adapter_path": "the LoRA adapter folder (with the tokenizer)",
    "chat_template": "the text format of training and evaluation: none (plain) or apply",
    "overlong_rows": "what happened to rows over max_length: truncate or drop",
    "data_version": "hash of the training rows and text format",
    "rows": "rows",
    "dropped_too_long": "rows dropped for length",
    "steps": "optimizer steps",
    "wall_seconds": "training time in seconds",
    "device": "where it ran",
    "metric": "the lm-eval metric",
    "filter": "the lm-eval filter the metric was computed after",
    "value": "the score",
    "stderr": "lm-eval's standard error of the score",
    "num_fewshot": "few-shot examples in each prompt",
    "benchmark": "the benchmark the task belongs to",
    "task_limit": "items per task (0 = all)",
    "subset": "how the items were picked: all, first or random(seed)",
    "model_path": "the model folder that was scored",
    "task_version": "the lm-eval task's version",
    "lm_eval_version": "lm-eval's version",
    "seed": "lm-eval's seeds",
    "limit_items": "the limit setting (0 = per task)",
    "task_set": "smoke (offline exemplars) or paper",
    "label": "what the numbers are (smoke-level or paper protocol)",
    "evaluated_at": "when the model was scored (UTC)",
    "eval_key": "hash of the model's files and the protocol: a re-run with the same key reuses these scores",
    "average": "the mean of the accuracy-scale headline metrics (the held-out log-likelihood is left out)",
    "scale": "unit (a share in [0, 1]) or log_likelihood (nats, <= 0, higher is better)",
    "headline": "whether this metric is the task's headline score (the one the report shows)",
    "ci_low": "lower end of the 95% percentile-bootstrap interval of the score (over its items)",
    "ci_high": "upper end of the 95% percentile-bootstrap interval of the score (over its items)",
    "item_ids": "the scored items (held-out: sample_id; lm-eval tasks: doc id), in doc order",
    "item_values": "each item's score, aligned with item_ids (paired comparisons between models use them)",
    "baseline": "the model the arm is compared with (base or full_low)",
    "mean_diff": "mean per-item difference, arm minus baseline, on the same items",
    "diff_low": "lower end of the paired-bootstrap 95% interval of mean_diff",
    "diff_high": "upper end of the paired-bootstrap 95% interval of mean_diff",
    "differs": "true when the interval of mean_diff excludes 0: the arm differs from the baseline",
    # the funnel (lib/summary.py)
    "clusters": "clusters of the source's low-quality rows",
    "distilled": "clusters the distiller answered (not skipped)",
    "distilled_ok": "distiller answers that parsed into a pair",
    "accepted": "distilled pairs re-rated at or above the threshold (distilled_high)",
    "original_in_training_sets": "distinct original rows of the source in at least one training set",
    "distilled_in_training_sets": "distinct distilled pairs of the source in at least one training set",
}

# Columns whose meaning depends on the table.
TABLE_COLUMNS: dict[str, dict[str, str]] = {
    "training_sets": {
        "origin": "original (a pool row) or distilled (a merged pair)",
        "position": "the row's place in the arm's training order",
    },
    "mixture": {
        "source": "where the example comes from: built (wiki) or released MIXTURE",
        "origin": "the example's lineage: built or released",
    },
    "mixture_variants": {
        "origin": "how the variant was made: noise operators or an LLM rewrite",
        "status": "outcome of the variant's judge call",
    },
    "mixture_targets": {"status": "outcome of the target's judge call", "error": "why writing or rating failed"},
    "wiki_paragraphs": {"position": "the paragraph's position in its article"},
    "distilled_pool": {
        "status": "ok (a parsed pair), parse_error, api_error or skipped",
        "reason": "why the cluster was skipped or its answer did not parse",
        "sample_id": "id of the distilled pair (empty unless status ok)",
        "prompt": "the distilled pair's prompt",
        "completion": "the distilled pair's answer",
        "completion_tokens": "tokens generated (0 when answered from the cache)",
    },
    "rated_distilled": {"quality_threshold": "the compressed-Overall threshold distilled_high accepts from"},
    "distilled_high": {"quality_threshold": "the compressed-Overall threshold the pair was accepted with"},
    "rating_library": {"task": "the task type this library rates", "path": "the library's .npz file"},
    "downstream_models": {"rows": "training rows of the arm"},
    "mixture_eval": {"model": "base, sft or grpo"},
    "mixture_eval_responses": {"model": "base, sft or grpo"},
    "benchmark_report": {"arm": "the arm (or base): one row per model"},
    "benchmark_scores": {"task": "the lm-eval task (heldout_instruct: the held-out instruction answers)"},
    "base_model_scores": {"task": "the lm-eval task (heldout_instruct: the held-out instruction answers)"},
    "benchmark_comparisons": {
        "arm": "the arm compared",
        "task": "the task both were scored on",
        "metric": "the task's headline metric",
        "n": "items in the pair",
    },
    "heldout_instructions": {
        "position": "the row's place in the draw (and in the held-out task file)",
        "prompt": "the held-out prompt",
        "completion": "the held-out high-quality answer the evaluation scores the likelihood of",
    },
}


def describe(column: str, table: str | None = None) -> str:
    """The column's description in ``table`` (its own meaning first), '' when unknown. Report columns named
    after a task (e.g. smoke_mmlu) or a delta are described by their pattern."""
    if table and column in TABLE_COLUMNS.get(table, {}):
        return TABLE_COLUMNS[table][column]
    if column in COLUMNS:
        return COLUMNS[column]
    if column.startswith("delta_vs_"):
        return f"the average minus that of the {column[len('delta_vs_') :]} arm"
    if table == "benchmark_report":
        for suffix, side in (("_ci_low", "lower"), ("_ci_high", "upper")):
            if column.endswith(suffix):
                return f"{side} end of the 95% bootstrap interval of task {column[: -len(suffix)]}"
        return f"headline metric of task {column}"
    return ""
