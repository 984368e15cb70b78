"""Stage 3, MIXTURE: the distiller's training set, built from encyclopedic text (docs/method.md, MIXTURE).

wiki_paragraphs -> mixture_targets (one high-quality sample per paragraph and task type,
validated and rated) -> mixture_variants (several low-quality versions of each) -> mixture
(a cluster of 2-20 variants mapped to its target, split train/test by paragraph); rating_library
holds the kNN-Bayes quality rater the GRPO reward uses.

Text is written by the ``mixture_writer`` resource (GPT-4o-mini on the paper profile, as in
the paper; unused on the demo, whose writer is extractive), not by the distilling policy.

``mixture`` with ``source=released`` reads the authors' released MIXTURE (``dokiik/MIXTURE``
or a local copy, ``lib/released_mixture.py``) into the same table instead: it keeps its
dependency on ``mixture_variants`` for lineage, but neither reads nor needs the upstream
tables, so materialise it alone (``dagster asset materialize --select mixture``).
``rating_library`` still comes from built targets and variants: the release carries no ratings.
"""

import hashlib
import json

import dagster as dg
import numpy as np
import pandas as pd

from lm_mixup_assets.budgets import budget_metadata, enforce_budgets
from lm_mixup_assets.config import launchpad_config
from lm_mixup_assets.lib.knn_bayes import build_library
from lm_mixup_assets.lib.mixture_llm import (
    draw_cluster_size,
    parse_cot,
    parse_degraded_variants,
    render_cot_prompt,
    render_degrade_prompt,
    render_writer_prompt,
)
from lm_mixup_assets.lib.mixture_noise import make_variants
from lm_mixup_assets.lib.mixture_tasks import (
    DISTILL_INSTRUCTIONS,
    TASK_NAMES,
    distill_user_turn,
    validate_target,
    write_extractive_target,
)
from lm_mixup_assets.lib.pairing import cross_group_neighbours
from lm_mixup_assets.lib.plots import histogram
from lm_mixup_assets.lib.released_mixture import load_released_mixture
from lm_mixup_assets.lib.rubric import SCORE_KEYS, compress_overall
from lm_mixup_assets.lib.settings.mixture import (
    MixtureSettings,
    RatingLibrarySettings,
    TargetsSettings,
    VariantsSettings,
    WikiSettings,
)
from lm_mixup_assets.lib.wiki import sample_wiki_paragraphs
from lm_mixup_assets.metadata import (
    code_version,
    column_schema,
    preview_md,
    table_data_version,
    table_metadata,
)
from lm_mixup_assets.rating import (
    generator_budget,
    generator_usage,
    judge_budget,
    judge_usage,
)
from resources import JudgeResource, WarehouseResource
from resources.embedder import EmbedderResource
from resources.generator import GeneratorResource

GROUP = "mixture"
# Bump when this stage writes different data for the same inputs (rule: metadata.code_version).
CODE_VERSION = code_version("1")


def _stable_id(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]


def _judge_prompt(task: str, title: str, section: str) -> str:
    where = f"the Wikipedia article '{title}'" + (f", section '{section}'" if section else "")
    return f"Write a {TASK_NAMES[task]} based on {where}."


WikiConfig = launchpad_config(WikiSettings)


@dg.asset(
    code_version=CODE_VERSION,
    group_name=GROUP,
    kinds={"duckdb", "pandas"},
    description="Encyclopedic paragraphs with article title and section: markup stripped, length-filtered, "
    "deduplicated. Demo: gensim's packaged enwiki sample (CC BY-SA, Wikipedia); paper: a local dump path.",
)
def wiki_paragraphs(
    context: dg.AssetExecutionContext, config: WikiConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    config = config.resolve(context)
    try:
        df, read = sample_wiki_paragraphs(
            config.dump_path or None,
            max_paragraphs=config.max_paragraphs,
            seed=config.seed,
            min_chars=config.min_chars,
            max_chars=config.max_chars,
            limit_articles=config.max_articles or None,
            progress=lambda state: context.log.info(state.message()),
        )
    except FileNotFoundError as exc:
        raise dg.Failure(
            description=f"Wikipedia dump not found: {exc}. Set dump_path to a pages-articles .xml.bz2"
        ) from None
    total = read.paragraphs_seen
    warehouse.replace_partition("wiki_paragraphs", df.reset_index(drop=True))
    context.log.info(
        f"{total} paragraphs parsed from {read.articles} articles in {read.seconds:.1f}s; kept {len(df)} "
        f"from {df['title'].nunique()} articles"
    )
    return dg.MaterializeResult(
        data_version=table_data_version(warehouse, "wiki_paragraphs"),
        metadata={
            **table_metadata(df, ["title", "section", "text"], table="wiki_paragraphs"),
            "paragraphs_parsed": total,
            "articles_read": read.articles,
            "articles": int(df["title"].nunique()),
            "mean_chars": float(df["n_chars"].mean()) if len(df) else 0.0,
            "source": config.dump_path or "gensim packaged enwiki sample",
        },
    )


TargetsConfig = launchpad_config(TargetsSettings)


TARGET_COLUMNS = [
    "target_id",
    "paragraph_id",
    "task",
    "writer",
    "text",
    "format_errors",
    "status",
    "error",
    "rarity",
    "complexity",
    "informativeness",
    "overall",
    "overall_compressed",
    "kept",
    "drop_reason",
]


@dg.asset(
    code_version=CODE_VERSION,
    group_name=GROUP,
    deps=["wiki_paragraphs"],
    kinds={"duckdb", "pandas"},
    description="One high-quality sample per paragraph and task type (QA, MCQ, TFQ, CS, paragraph), checked "
    "against its format, rated by the judge and kept at compressed Overall >= min_quality. Every "
    "paragraph x task has a row; dropped ones say why.",
)
def mixture_targets(
    context: dg.AssetExecutionContext,
    config: TargetsConfig,
    judge: JudgeResource,
    mixture_writer: GeneratorResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    config = config.resolve(context)
    paragraphs = warehouse.query("select * from wiki_paragraphs order by paragraph_id")
    # Other paragraphs of the same article widen the pool of MCQ distractors and TFQ swaps.
    article_text = paragraphs.groupby("title")["text"].agg(" ".join).to_dict()
    jobs = [(p, task) for p in paragraphs.itertuples() for task in config.tasks]
    budgets, usage_md = [], {}
    if config.writer == "llm":
        chats = [
            [
                {
                    "role": "user",
                    "content": render_writer_prompt(task, {"title": p.title, "section": p.section, "text": p.text}),
                }
            ]
            for p, task in jobs
        ]
        writer_usage: dict = {}
        with mixture_writer.session():  # a local writer's engine leaves the GPU when this asset ends
            outcomes, _ = mixture_writer.generate(chats, warehouse, progress=context.log.info, usage=writer_usage)
        usage_md, usage_line = generator_usage(mixture_writer, writer_usage, "writer")
        context.log.info(f"target writer: {usage_line}")
        budgets.append(generator_budget("mixture_targets", mixture_writer, outcomes, config.max_failed_fraction))
        texts = [o.raw_answer if o.status == "ok" else None for o in outcomes]
        errors = [o.error if o.status != "ok" else None for o in outcomes]
    else:
        rng = np.random.default_rng(config.seed)
        texts = [
            write_extractive_target(
                task,
                {"title": p.title, "section": p.section, "text": p.text, "context": article_text.get(p.title, "")},
                rng,
            )
            for p, task in jobs
        ]
        errors = [
            None if t else f"the extractive writer could not build a {task} sample from this paragraph"
            for t, (_, task) in zip(texts, jobs)
        ]
    rows = []
    for (p, task), text, err in zip(jobs, texts, errors):
        problems = validate_target(task, text) if text else []
        rows.append(
            {
                "target_id": _stable_id(p.paragraph_id, task, config.writer),
                "paragraph_id": p.paragraph_id,
                "task": task,
                "writer": config.writer,
                "text": text,
                "format_errors": "; ".join(problems) or None,
                "_prompt": _judge_prompt(task, p.title, p.section),
                "_err": err,
            }
        )
    df = pd.DataFrame(rows)
    to_rate = df[df["text"].notna() & df["format_errors"].isna()]
    # The reference rates generated samples with its per-task rubric (the pool's rubric is for instruction pairs).
    rating, _ = judge.rate_pairs(
        to_rate["_prompt"].tolist(),
        to_rate["text"].tolist(),
        warehouse,
        progress=context.log.info,
        rubric_version=[judge.rubric_for_task(t) for t in to_rate["task"]],
    )
    judge_md, judge_line = judge_usage(judge, rating)
    context.log.info(f"target judge: {judge_line}")
    budgets.append(judge_budget("mixture_targets", judge, rating.outcomes, config.max_failed_fraction))
    # Columns named: with nothing to rate (every writer call failed) the frame must still have them.
    scores = pd.DataFrame(
        [{"status": o.status, "error": o.error, **(o.scores or {})} for o in rating.outcomes],
        index=to_rate.index,
        columns=["status", "error", *SCORE_KEYS],
    )
    df = df.join(scores)
    df["status"] = df["status"].fillna("not_rated")
    df["overall_compressed"] = df["overall"].map(lambda v: compress_overall(v) if pd.notna(v) else None)
    df["drop_reason"] = np.select(
        [
            df["text"].isna(),
            df["format_errors"].notna(),
            df["status"] != "ok",
            df["overall_compressed"].fillna(-1) < config.min_quality,
        ],
        [
            df["_err"].fillna("no text"),
            "format: " + df["format_errors"].fillna(""),
            "judge " + df["status"],
            "rated below min_quality " + str(config.min_quality),
        ],
        default=None,
    )
    df["drop_reason"] = df["drop_reason"].replace({"None": None, "0": None})
    df["kept"] = df["drop_reason"].isna()
    for c in ("rarity", "complexity", "informativeness", "overall", "overall_compressed"):
        df[c] = df[c].astype("Int64") if c in df else pd.array([pd.NA] * len(df), dtype="Int64")
    df["error"] = df.get("error")
    out = df[TARGET_COLUMNS]
    warehouse.replace_partition("mixture_targets", out)
    enforce_budgets(context, budgets)  # after the write: failed rows are kept, with their drop_reason
    per_task = out.groupby("task").agg(rows=("target_id", "size"), kept=("kept", "sum")).reset_index()
    context.log.info(f"targets: {int(out['kept'].sum())} kept of {len(out)} ({per_task.to_dict('records')})")
    tokens = rating.tokens
    return dg.MaterializeResult(
        data_version=table_data_version(warehouse, "mixture_targets"),
        metadata={
            **table_metadata(out[out["kept"]], ["task", "overall", "text"], table="mixture_targets"),
            "rows_total": len(out),
            "kept": int(out["kept"].sum()),
            "per_task": preview_md(per_task, n=10),
            "drop_reasons": dg.MetadataValue.json(
                out["drop_reason"].dropna().str.slice(0, 60).value_counts().head(8).to_dict()
            ),
            "judge_tokens": int(sum(tokens)),
            **usage_md,
            **judge_md,
            **budget_metadata("judge", budgets[-1]),
            **(budget_metadata("writer", budgets[0]) if len(budgets) > 1 else {}),
            "examples": dg.MetadataValue.md(
                "\n\n".join(
                    f"**{t.task}**\n```\n{t.text[:600]}\n```"
                    for t in out[out["kept"]].groupby("task").head(1).itertuples()
                )
            ),
        },
    )


VariantsConfig = launchpad_config(VariantsSettings)


VARIANT_COLUMNS = [
    "variant_id",
    "target_id",
    "task",
    "text",
    "operators",
    "origin",
    "status",
    "overall",
    "overall_compressed",
]
ROBUSTNESS_OPERATORS = ("typos", "cross_topic_merge")


@dg.asset(
    code_version=CODE_VERSION,
    group_name=GROUP,
    deps=["mixture_targets", "wiki_paragraphs"],
    kinds={"duckdb", "pandas"},
    description="Several low-quality variants of every kept target: seeded noise operators (dropped facts and "
    "sentences, truncation, redundancy, shuffled or split fragments, typos, cross-topic merges of "
    "semantically similar samples) and, with llm_degradation, rewrites by the mixture writer with less "
    "information, each also given surface noise (typos, cross-topic sentences). Each is rated.",
)
def mixture_variants(
    context: dg.AssetExecutionContext,
    config: VariantsConfig,
    embedder: EmbedderResource,
    mixture_writer: GeneratorResource,
    judge: JudgeResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    config = config.resolve(context)
    targets = warehouse.query("""select t.*, p.title, p.section from mixture_targets t join wiki_paragraphs p using (paragraph_id)
                                 where kept order by target_id""")
    rng = np.random.default_rng(config.seed)
    vectors = embedder.embed(targets["text"].tolist())
    # cross-topic: the most similar targets of other articles (kNN index, no N x N matrix)
    partners = cross_group_neighbours(vectors, targets["title"].to_numpy(), config.cross_topic_neighbours)
    rows, others_of = [], {}
    for i, t in enumerate(targets.itertuples()):
        others = [targets["text"].iat[j] for j in partners[i] if j >= 0]
        others_of[t.target_id] = others
        for text, ops in make_variants(t.text, t.task, rng, n=config.variants_per_target, others=others):
            rows.append(
                {
                    "target_id": t.target_id,
                    "task": t.task,
                    "text": text,
                    "operators": ops,
                    "origin": "noise",
                    "_prompt": _judge_prompt(t.task, t.title, t.section),
                }
            )
    llm_failed = 0
    budgets, usage_md = [], {}
    if config.llm_degradation and len(targets) and config.llm_variants_per_target > 0:
        chats = [
            [{"role": "user", "content": render_degrade_prompt(t.task, t.text, n=config.llm_variants_per_target)}]
            for t in targets.itertuples()
        ]
        writer_usage: dict = {}
        with mixture_writer.session():  # a local writer's engine leaves the GPU when this asset ends
            outcomes, _ = mixture_writer.generate(chats, warehouse, progress=context.log.info, usage=writer_usage)
        usage_md, usage_line = generator_usage(mixture_writer, writer_usage, "writer")
        context.log.info(f"degradation writer: {usage_line}")
        budgets.append(
            generator_budget("mixture_variants (degradations)", mixture_writer, outcomes, config.max_failed_fraction)
        )
        for t, o in zip(targets.itertuples(), outcomes):
            if o.status != "ok":
                llm_failed += 1
                context.log.warning(
                    f"degradation of target {t.target_id} failed ({o.status}: {o.error}); "
                    "it keeps its noise variants, a rerun asks again"
                )
                continue
            prompt = _judge_prompt(t.task, t.title, t.section)
            for text in parse_degraded_variants(o.raw_answer, t.text):
                rows.append(
                    {
                        "target_id": t.target_id,
                        "task": t.task,
                        "text": text,
                        "operators": "llm_degrade",
                        "origin": "llm",
                        "_prompt": prompt,
                    }
                )
                if config.llm_noisy_copies > 0:
                    for noisy, ops in make_variants(
                        text,
                        t.task,
                        rng,
                        n=config.llm_noisy_copies,
                        others=others_of[t.target_id],
                        operators=ROBUSTNESS_OPERATORS,
                    ):
                        rows.append(
                            {
                                "target_id": t.target_id,
                                "task": t.task,
                                "text": noisy,
                                "operators": "llm_degrade+" + ops,
                                "origin": "llm+noise",
                                "_prompt": prompt,
                            }
                        )
    df = pd.DataFrame(rows, columns=["target_id", "task", "text", "operators", "origin", "_prompt"])
    df = df.drop_duplicates(["target_id", "text"]).reset_index(drop=True)
    df["variant_id"] = [_stable_id(a, b) for a, b in zip(df["target_id"], df["text"])]
    rating, _ = judge.rate_pairs(
        df["_prompt"].tolist(),
        df["text"].tolist(),
        warehouse,
        progress=context.log.info,
        rubric_version=[judge.rubric_for_task(t) for t in df["task"]],
    )
    judge_md, judge_line = judge_usage(judge, rating)
    context.log.info(f"variant judge: {judge_line}")
    budgets.append(judge_budget("mixture_variants", judge, rating.outcomes, config.max_failed_fraction))
    df["status"] = [o.status for o in rating.outcomes]
    df["overall"] = pd.array([o.scores["overall"] if o.scores else None for o in rating.outcomes], dtype="Int64")
    df["overall_compressed"] = pd.array(
        [compress_overall(o.scores["overall"]) if o.scores else None for o in rating.outcomes], dtype="Int64"
    )
    out = df[VARIANT_COLUMNS]
    warehouse.replace_partition("mixture_variants", out)
    enforce_budgets(context, budgets)  # after the write: failed rows are kept with their status
    counts = out.groupby("target_id").size()
    ops = out["operators"].str.split("+").explode().value_counts()
    context.log.info(
        f"{len(out)} variants for {len(targets)} targets; mean Overall {out['overall'].mean():.2f} vs targets {targets['overall'].mean():.2f}"
    )
    return dg.MaterializeResult(
        data_version=table_data_version(warehouse, "mixture_variants"),
        metadata={
            **table_metadata(out, ["task", "operators", "overall", "text"], table="mixture_variants"),
            "targets": len(targets),
            "variants_per_target": dg.MetadataValue.json(counts.value_counts().sort_index().to_dict()),
            "operator_counts": dg.MetadataValue.json(ops.to_dict()),
            "origin_counts": dg.MetadataValue.json(out["origin"].value_counts().to_dict()),
            "llm_degradations_failed": llm_failed,
            "variant_mean_overall": float(out["overall"].mean()) if len(out) else 0.0,
            "target_mean_overall": float(targets["overall"].mean()) if len(targets) else 0.0,
            "embedding_model": embedder.model,
            **usage_md,
            **judge_md,
            **budget_metadata("judge", budgets[-1]),
            **(budget_metadata("writer", budgets[0]) if len(budgets) > 1 else {}),
        },
    )


MixtureConfig = launchpad_config(MixtureSettings)


MIXTURE_COLUMNS = [
    "example_id",
    "task",
    "paragraph_id",
    "target_id",
    "instruction",
    "input",
    "output",
    "cot",
    "variant_ids",
    "n_variants",
    "split",
    "source",
    "origin",
    "origin_file",
    "origin_row",
    "origin_task_type",
    "cot_error",
]
MIXTURE_COLUMN_TYPES = {"variant_ids": "VARCHAR[]", "n_variants": "BIGINT", "origin_row": "BIGINT"}


def _paragraph_split(paragraph_id: str, test_fraction: float, seed: int) -> str:
    # A hash, not a random draw: the same paragraph lands in the same split on every run.
    bucket = int(hashlib.sha256(f"{seed}:{paragraph_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < test_fraction else "train"


def _built_examples(
    context: dg.AssetExecutionContext, config: MixtureConfig, writer: GeneratorResource, warehouse: WarehouseResource
) -> tuple[pd.DataFrame, dict]:
    targets = warehouse.query("select * from mixture_targets where kept order by target_id")
    targets = targets[targets["task"].isin(config.tasks)]
    variants = warehouse.query("select * from mixture_variants order by variant_id")
    by_target = {k: g for k, g in variants.groupby("target_id")}
    rng = np.random.default_rng(config.seed)
    rows, skipped, clusters = [], [], []
    for t in targets.itertuples():
        pool = by_target.get(t.target_id)
        n = draw_cluster_size(rng, 0 if pool is None else len(pool), config.min_variants, config.max_variants)
        if not n:
            skipped.append(
                {"target_id": t.target_id, "reason": f"{0 if pool is None else len(pool)} variants < min_variants"}
            )
            continue
        chosen = pool.iloc[rng.permutation(len(pool))[:n]]
        texts = chosen["text"].tolist()
        clusters.append((t, texts))
        rows.append(
            {
                "example_id": _stable_id(t.target_id, *chosen["variant_id"]),
                "task": t.task,
                "paragraph_id": t.paragraph_id,
                "target_id": t.target_id,
                "instruction": DISTILL_INSTRUCTIONS[t.task],
                "input": distill_user_turn(t.task, texts),
                "output": t.text,
                "cot": "",
                "variant_ids": chosen["variant_id"].tolist(),
                "n_variants": n,
                "split": _paragraph_split(t.paragraph_id, config.test_fraction, config.seed),
                "source": "built",
                "origin": None,
                "origin_file": None,
                "origin_row": None,
                "origin_task_type": None,
                "cot_error": None,
            }
        )
    if skipped:
        context.log.warning(f"{len(skipped)} kept targets have too few variants for an example: {skipped[:3]}")
    # cot: the reasoning from the variants to the target, by the writer that wrote the target (the method's
    # optional chain of thought); extractive targets have no writer to explain them, so auto leaves them empty.
    wants_cot = [config.cot == "llm" or (config.cot == "auto" and t.writer == "llm") for t, _ in clusters]
    asked = [i for i, w in enumerate(wants_cot) if w]
    budgets, usage_md = [], {}
    if asked:
        chats = [
            [{"role": "user", "content": render_cot_prompt(clusters[i][0].task, clusters[i][1], clusters[i][0].text)}]
            for i in asked
        ]
        writer_usage: dict = {}
        with writer.session():  # a local writer's engine leaves the GPU when this asset ends
            outcomes, _ = writer.generate(chats, warehouse, progress=context.log.info, usage=writer_usage)
        usage_md, usage_line = generator_usage(writer, writer_usage, "cot_writer")
        context.log.info(f"cot writer: {usage_line}")
        budgets.append(generator_budget("mixture (cot)", writer, outcomes, config.max_failed_fraction))
        for i, o in zip(asked, outcomes):
            cot, error = parse_cot(o.raw_answer) if o.status == "ok" else ("", f"writer {o.status}: {o.error}")
            rows[i]["cot"], rows[i]["cot_error"] = cot, error
    failed = sum(1 for r in rows if r["cot_error"])
    if failed:
        context.log.warning(
            f"{failed} of {len(asked)} cot requests failed; those examples keep an empty cot "
            "(cot_error says why) and a rerun asks again"
        )
    return pd.DataFrame(rows, columns=MIXTURE_COLUMNS), {
        "targets_without_enough_variants": len(skipped),
        "cot_requested": len(asked),
        "cot_failed": failed,
        "cot_writer": f"{writer.backend}:{writer.model}" if asked else "",
        **usage_md,
        **{k: v for b in budgets for k, v in budget_metadata("cot", b).items()},
        "_budgets": budgets,
    }


def _released_examples(context: dg.AssetExecutionContext, config: MixtureConfig) -> tuple[pd.DataFrame, dict]:
    try:
        release = load_released_mixture(config.released_path, config.released_part, config.tasks)
    except (FileNotFoundError, ValueError) as exc:
        raise dg.Failure(
            description=f"released MIXTURE at {config.released_path!r} ({config.released_part}): {exc}"
        ) from None
    total = len(release.rows) + len(release.rejects)
    if not release.rows:
        raise dg.Failure(
            description=f"no usable rows in the released MIXTURE at {release.label} ({config.released_part}); "
            f"rejected: {release.rejects[:5]}"
        )
    if release.rejects:
        context.log.warning(f"{len(release.rejects)} of {total} released rows rejected, e.g. {release.rejects[:3]}")
        if len(release.rejects) / total > config.released_max_rejected_fraction:
            raise dg.Failure(
                description=(
                    f"{len(release.rejects)} of {total} released rows are unusable (more than "
                    f"released_max_rejected_fraction={config.released_max_rejected_fraction}); first: {release.rejects[:5]}"
                )
            )
    df = pd.DataFrame(release.rows)
    df["paragraph_id"] = None  # the release names no source paragraph
    df["target_id"] = None
    df["variant_ids"] = [[] for _ in range(len(df))]  # nor the variants: n_variants is counted from the input
    df["source"] = "released"
    df["origin"] = release.label
    df["cot_error"] = None
    context.log.info(
        f"released MIXTURE {release.label} ({release.part}): {len(df)} rows from {len(release.per_file)} files"
    )
    return df[MIXTURE_COLUMNS], {
        "released_from": release.label,
        "released_part": release.part,
        "rows_per_file": dg.MetadataValue.json(release.per_file),
        "rejected_rows": len(release.rejects),
        "rejected_examples": dg.MetadataValue.json(release.rejects[:10]),
    }


def _replace_mixture_table(warehouse: WarehouseResource, df: pd.DataFrame) -> None:
    # The table is replaced whole; one written before the lineage columns existed is dropped, not patched.
    with warehouse.connect() as con:
        existing = {
            r[0]
            for r in con.execute(
                "select column_name from information_schema.columns where table_name = 'mixture'"
            ).fetchall()
        }
        if existing and not set(MIXTURE_COLUMNS) <= existing:
            con.execute('drop table "mixture"')
    warehouse.replace_partition("mixture", df, column_types=MIXTURE_COLUMN_TYPES)


@dg.asset(
    code_version=CODE_VERSION,
    group_name=GROUP,
    deps=["mixture_variants", "mixture_targets"],
    kinds={"duckdb", "pandas"},
    description="The MIXTURE set: each example maps a cluster of 2-20 low-quality variants (the distiller's input, "
    "after the task instruction) to its high-quality target, with task type, cot (written by the mixture writer "
    "for LLM-written targets), source paragraph and a train/test split by paragraph. source=released reads the "
    "authors' dokiik/MIXTURE (or a local copy) instead, with lineage (file, row, task spelling), and does not "
    "read the upstream tables. Also exported as JSONL under artifacts/mixture/.",
)
def mixture(
    context: dg.AssetExecutionContext,
    config: MixtureConfig,
    mixture_writer: GeneratorResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    config = config.resolve(context)
    if config.source == "released":
        df, extra = _released_examples(context, config)
    else:
        df, extra = _built_examples(context, config, mixture_writer, warehouse)
    budgets = extra.pop("_budgets", [])
    _replace_mixture_table(warehouse, df)
    export_dir = warehouse.artifacts_dir / "mixture"
    export_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        with open(export_dir / f"mixture_{split}.jsonl", "w", encoding="utf-8") as fh:
            for r in df[df["split"] == split].itertuples():
                fh.write(
                    json.dumps(
                        {
                            "instruction": r.instruction,
                            "input": r.input,
                            "output": r.output,
                            "cot": r.cot,
                            "task_type": r.task,
                            "paragraph_id": r.paragraph_id,
                            "source": r.source,
                            "origin_file": r.origin_file,
                            "origin_row": None if pd.isna(r.origin_row) else int(r.origin_row),
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
    enforce_budgets(context, budgets)  # after the writes: examples keep an empty cot and the cot_error
    counts = df.groupby(["task", "split"]).size().unstack(fill_value=0).reset_index() if len(df) else pd.DataFrame()
    sizes = df["n_variants"].dropna().astype(int)
    variant_histogram = histogram(
        sizes,
        np.arange(1.5, max(config.max_variants, int(sizes.max()) if len(sizes) else 2) + 1.5),
        "variants per example" + (" (counted from input)" if config.source == "released" else ""),
        "variants per example",
    )
    return dg.MaterializeResult(
        data_version=table_data_version(warehouse, "mixture"),
        metadata={
            **table_metadata(df, ["task", "split", "n_variants", "input", "output"], n=3, table="mixture"),
            "source": config.source,
            "per_task_and_split": preview_md(counts, n=10),
            "train": int((df["split"] == "train").sum()),
            "test": int((df["split"] == "test").sum()),
            "variants_per_example": dg.MetadataValue.json(
                {int(k): int(v) for k, v in sizes.value_counts().sort_index().items()}
            ),
            "mean_variants": float(sizes.mean()) if len(sizes) else 0.0,
            "with_cot": int((df["cot"].fillna("") != "").sum()),
            "variant_histogram": dg.MetadataValue.md(variant_histogram),
            "export": dg.MetadataValue.path(str(export_dir)),
            **extra,
        },
    )


RatingLibraryConfig = launchpad_config(RatingLibrarySettings)


@dg.asset(
    code_version=CODE_VERSION,
    group_name=GROUP,
    deps=["mixture_variants", "mixture_targets"],
    kinds={"pytorch", "duckdb"},
    description="Per task type, the kNN-Bayes rater of docs/method.md: embeddings of rated targets and variants, their "
    "compressed-score classes, the class transition matrix T and the prior p, saved as .npz under "
    "artifacts/rating_library/ for the GRPO quality reward.",
)
def rating_library(
    context: dg.AssetExecutionContext,
    config: RatingLibraryConfig,
    embedder: EmbedderResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    config = config.resolve(context)
    samples = warehouse.query("""
        select task, text, overall_compressed cls from mixture_targets where status = 'ok'
        union all select task, text, overall_compressed from mixture_variants where status = 'ok'""")
    out_dir = warehouse.artifacts_dir / "rating_library"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for task, group in samples.groupby("task"):
        lib = build_library(
            embedder.embed(group["text"].tolist()),
            group["cls"].to_numpy(),
            k_t=config.k_t,
            smoothing=config.smoothing,
            name=task,
        )
        path = lib.save(out_dir / f"{task}.npz")
        counts = group["cls"].value_counts().sort_index()
        rows.append(
            {
                "task": task,
                "n_samples": len(group),
                "path": str(path),
                "embedding_model": embedder.model,
                "class_counts": json.dumps({int(k): int(v) for k, v in counts.items()}),
                "k_t": config.k_t,
                "smoothing": config.smoothing,
                "prior": json.dumps([round(float(x), 4) for x in lib.prior]),
                "T": json.dumps(np.round(lib.T, 4).tolist()),
            }
        )
        context.log.info(f"rating library {task}: {len(group)} samples, classes {dict(counts)}")
    df = pd.DataFrame(rows)
    warehouse.replace_partition("rating_library", df)
    return dg.MaterializeResult(
        data_version=table_data_version(warehouse, "rating_library"),
        metadata={
            "dagster/row_count": len(df),
            "dagster/column_schema": column_schema(df, "rating_library"),
            "libraries": preview_md(df[["task", "n_samples", "class_counts", "prior"]] if len(df) else df, n=10),
            "embedding_model": embedder.model,
            "path": dg.MetadataValue.path(str(out_dir)),
        },
    )


# --------------------------------------------------------------------------- checks


@dg.asset_check(
    asset="mixture",
    description="Every built example has 2-20 variants, all listed; released examples' "
    "counted variant blocks are reported (the release does not list its variants).",
)
def mixture_variant_counts(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    bad = warehouse.query(
        "select example_id, n_variants, len(variant_ids) listed from mixture where source = 'built' "
        "and (n_variants not between 2 and 20 or len(variant_ids) <> n_variants)"
    )
    released_outside = int(
        warehouse.query(
            "select count(*) n from mixture where source = 'released' and n_variants not between 2 and 20"
        ).iloc[0]["n"]
    )
    return dg.AssetCheckResult(
        passed=bad.empty,
        description="2 <= variants <= 20" if bad.empty else f"{len(bad)} examples out of range",
        metadata={
            "released_rows_outside_2_20_blocks": released_outside,
            **({"offenders": preview_md(bad, 10)} if len(bad) else {}),
        },
    )


@dg.asset_check(asset="mixture", description="No paragraph feeds both the train and the test split.")
def mixture_split_by_paragraph(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    # released rows name no paragraph; their split is the release's own
    bad = warehouse.query(
        "select paragraph_id from mixture where paragraph_id is not null group by 1 having count(distinct split) > 1"
    )
    return dg.AssetCheckResult(
        passed=bad.empty,
        description="splits disjoint by paragraph" if bad.empty else f"{len(bad)} paragraphs in both splits",
    )


@dg.asset_check(
    asset="mixture",
    description="Every requested cot was written (a failed one leaves cot empty and says why in cot_error).",
)
def mixture_cot_written(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    failed = warehouse.query("select example_id, task, cot_error from mixture where cot_error is not null")
    # a warning, not an error: cot is optional in the method and a rerun retries the failures
    return dg.AssetCheckResult(
        passed=failed.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description="no cot failures" if failed.empty else f"{len(failed)} examples lack their cot; rerun to retry",
        metadata={"failures": preview_md(failed, 10)} if len(failed) else {},
    )


@dg.asset_check(
    asset="mixture_targets",
    description="Every kept target passes its task's format validator; rows = paragraphs x tasks.",
)
def mixture_targets_valid(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    kept = warehouse.query("select target_id, task, text from mixture_targets where kept")
    bad = [
        (r.target_id, r.task, "; ".join(validate_target(r.task, r.text)))
        for r in kept.itertuples()
        if validate_target(r.task, r.text)
    ]
    counts = warehouse.query(
        "select (select count(*) from mixture_targets) n, (select count(*) from wiki_paragraphs) p, "
        "(select count(distinct task) from mixture_targets) t"
    ).iloc[0]
    accounted = int(counts.n) == int(counts.p) * int(counts.t)
    return dg.AssetCheckResult(
        passed=not bad and accounted,
        description=(
            f"{len(kept)} kept targets valid; {int(counts.n)} rows = {int(counts.p)} paragraphs x {int(counts.t)} tasks"
            if not bad and accounted
            else f"{len(bad)} invalid kept targets; rows accounted: {accounted}"
        ),
        metadata={"invalid": dg.MetadataValue.json(bad[:10])} if bad else {},
    )
