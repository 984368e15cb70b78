"""Stage 6, evaluation: fine-tune a downstream model per training-set arm, score it with lm-eval, compare.

``downstream_models[arm]`` (LoRA SFT) -> ``benchmark_scores[arm]`` (lm-eval), with
``base_model_scores`` for the untuned model and ``benchmark_report`` over all arms.
Every arm and the base model are scored with one evaluation setting (the
``LmEvalSettings``, lib/settings/evaluation.py), which a check verifies. Training and evaluation share
one text format (``chat_template``): ``benchmark_scores`` refuses to score a model with a format
other than the one it was trained in.
"""

import hashlib
import json
from pathlib import Path

import dagster as dg
import pandas as pd

from lm_mixup_assets.checks import no_offenders
from lm_mixup_assets.config import launchpad_config
from lm_mixup_assets.lib.checkpoints import ModelCheckpoint
from lm_mixup_assets.lib.downstream import adapter_base, adapter_model_folder, merge_adapter, run_lora_sft
from lm_mixup_assets.lib.eval_tasks import (
    SMOKE_LABEL,
    benchmark_table,
    build_smoke_tasks,
    evaluate_model,
    headline_metrics,
    paper_benchmarks,
    smoke_benchmarks,
)
from lm_mixup_assets.lib.generation import model_fingerprint
from lm_mixup_assets.lib.models import resolve_causal_lm
from lm_mixup_assets.lib.plots import curve_plot, funnel_panels, grouped_bars
from lm_mixup_assets.lib.settings.evaluation import LmEvalSettings, LoraSFTSettings
from lm_mixup_assets.lib.summary import (
    FUNNEL_COLUMNS,
    FUNNEL_LABELS,
    arm_origins,
    pool_length_correlation,
    source_funnel,
)
from lm_mixup_assets.lib.training import free_memory, run_key, vllm_available
from lm_mixup_assets.lib.warehouse import table_exists
from lm_mixup_assets.metadata import (
    code_version,
    column_schema,
    preview_md,
    table_data_version,
    table_metadata,
)
from lm_mixup_assets.partitions import arm_partitions
from lm_mixup_assets.scaling import GPU_POOL, gpu_op_tags
from resources import WarehouseResource
from resources.checkpoint_store import CHECKPOINT_IO_MANAGER

GROUP = "evaluation"
# Bump when this stage writes different data for the same inputs (rule: metadata.code_version).
CODE_VERSION = code_version("1")
_GPU = {"pool": GPU_POOL, "op_tags": gpu_op_tags(), "kinds": {"pytorch"}}

DownstreamConfig = launchpad_config(LoraSFTSettings)


@dg.asset(
    code_version=CODE_VERSION,
    partitions_def=arm_partitions,
    group_name=GROUP,
    deps=["training_sets"],
    **_GPU,
    io_manager_key=CHECKPOINT_IO_MANAGER,  # the adapter reaches benchmark_scores[arm] as a ModelCheckpoint
    description="The downstream model of one arm: TRL SFT with a LoRA adapter (peft) on the arm's training set. "
    "Paper: Llama-3.1-8B, r 64, alpha 16, dropout 0.1, lr 1e-4, 5 epochs, max length 2048, warmup 0.03. "
    "The adapter (with the tokenizer) is saved under artifacts/downstream/<arm>/<run key>/, the key covering the "
    "base model, the training set and every setting: a finished run with the same key is reused, not retrained. "
    "No merged copy is written (benchmark_scores loads base + adapter, or merges for vLLM).",
)
def downstream_models(
    context: dg.AssetExecutionContext, config: DownstreamConfig, warehouse: WarehouseResource
) -> dg.Output[ModelCheckpoint]:
    config = config.resolve(context)
    arm = context.partition_key
    rows = warehouse.query("select prompt, completion from training_sets where arm = ? order by position", [arm])
    if rows.empty:
        raise dg.Failure(
            description=f"training set {arm!r} is empty or missing: materialise training_sets[{arm}] first"
        )
    # The text format is part of the version: a new format never resumes a run trained in another.
    version = hashlib.sha256(
        json.dumps([config.base_model, config.chat_template, config.overlong_rows, rows.values.tolist()]).encode()
    ).hexdigest()[:12]
    base = resolve_causal_lm(config.base_model, str(warehouse.artifacts_dir))
    # Named by everything that decides the run: other data or settings never resume or reuse this folder.
    key = run_key(model_fingerprint(base), version, config.values())
    out_dir = warehouse.artifacts_dir / "downstream" / arm / key
    context.log.info(f"{arm}: LoRA SFT of {config.base_model} on {len(rows)} rows -> {out_dir}")
    result = run_lora_sft(
        base,
        rows.to_dict("records"),
        out_dir,
        config,
        on_log=lambda step, logs: (
            context.log.info(f"{arm} step {step}: loss={logs.get('loss', float('nan')):.4f}")
            if "loss" in logs
            else None
        ),
        reuse_key=key,
    )
    if result.reused:
        context.log.info(
            f"{arm}: reused the finished LoRA run in {out_dir} (same base model, training set and "
            "settings); nothing trained"
        )
    record = pd.DataFrame(
        [
            {
                "arm": arm,
                "base_model": config.base_model,
                "merged_path": "",
                "chat_template": config.chat_template,
                "overlong_rows": config.overlong_rows,
                "adapter_path": result.checkpoint,
                "data_version": version,
                "rows": len(rows),
                "dropped_too_long": result.n_dropped_too_long,
                "steps": result.steps,
                "wall_seconds": round(result.wall_seconds, 2),
                "device": result.device,
                "created_at": pd.Timestamp.now("UTC").tz_localize(None),
            }
        ]
    )
    warehouse.replace_partition("downstream_models", record, "arm", arm)  # a record for users; nothing reads it
    schema = column_schema(record, "downstream_models")
    # The format travels with the model: benchmark_scores refuses to evaluate in another one.
    value = ModelCheckpoint.of_folder(
        result.checkpoint,
        "downstream_models",
        steps=result.steps,
        wall_seconds=round(result.wall_seconds, 2),
        device=result.device,
        data_version=version,
        training_settings={
            "base_model": config.base_model,
            "chat_template": config.chat_template,
            "overlong_rows": config.overlong_rows,
        },
    )
    return dg.Output(
        value,
        metadata={
            "adapter": dg.MetadataValue.path(result.checkpoint),
            "reused": result.reused,
            "dagster/column_schema": schema,
            "base_model": config.base_model,
            "chat_template": config.chat_template,
            "rows": len(rows),
            "dropped_too_long": result.n_dropped_too_long,
            "steps": result.steps,
            "wall_seconds": round(result.wall_seconds, 1),
            "data_version": version,
            "final_loss": float(result.loss_history[-1][1]) if result.loss_history else 0.0,
            "loss_curve": dg.MetadataValue.md(
                curve_plot({"train loss": result.loss_history}, f"LoRA SFT loss, {arm}", "loss")
            ),
        },
        data_version=dg.DataVersion(value.fingerprint),
    )


LmEvalConfig = launchpad_config(LmEvalSettings)


def _eval_backend(context, cfg: LmEvalSettings) -> str:
    if cfg.backend == "vllm" and not vllm_available():
        context.log.warning("vLLM is not installed (pip install -e .[gpu]); evaluating with the hf backend")
        return "hf"
    return cfg.backend


def _loadable_model(path: str, backend: str) -> str:
    """A folder the backend can evaluate for ``path``: a plain model as it is; an adapter linked with its local
    base into one folder (hf), or merged with it (vLLM, or a base that is a hub id), next to the adapter."""
    folder = Path(path)
    if not (folder / "adapter_config.json").is_file():
        return path
    if backend == "hf" and Path(adapter_base(folder)).is_dir():
        return adapter_model_folder(folder, folder.parent / "eval_model")
    return merge_adapter(folder, folder.parent / "merged", dtype="bfloat16" if backend == "vllm" else "float32")


def _protocol_key(cfg: LmEvalSettings, backend: str, model_fp: str, warehouse: WarehouseResource) -> str:
    """What decides the scores: the model's files, the protocol, lm-eval's version and the smoke task files."""
    from importlib.metadata import version as package_version

    tasks = []
    if cfg.tasks == "smoke":
        folder = warehouse.artifacts_dir / "eval_tasks"
        tasks = sorted((f.name, hashlib.sha256(f.read_bytes()).hexdigest()) for f in folder.glob("*") if f.is_file())
    return run_key(model_fp, cfg.protocol(), backend, package_version("lm_eval"), tasks, CODE_VERSION)


def _stored_scores(warehouse: WarehouseResource, table: str, arm: str, key: str) -> pd.DataFrame | None:
    """The rows of ``table`` for ``arm`` if all were scored under ``key`` (same model files and protocol)."""
    with warehouse.connect() as con:
        if not con.execute(
            "select 1 from information_schema.columns where table_name = ? and column_name = 'eval_key'", [table]
        ).fetchall():
            return None
        rows = con.execute(f'select * from "{table}" where arm = ?', [arm]).df()
    return rows if len(rows) and (rows["eval_key"] == key).all() else None


def _scores(
    context, cfg: LmEvalSettings, model_path: str, model_fp: str, warehouse: WarehouseResource, table: str, arm: str
) -> dg.MaterializeResult:
    """Score ``model_path`` and write ``table``'s partition, or keep the stored scores when the model's files
    and the protocol are unchanged (lm-eval is the slow part of a re-run)."""
    backend = _eval_backend(context, cfg)
    if cfg.tasks == "smoke":
        build_smoke_tasks(warehouse.artifacts_dir / "eval_tasks")  # the task files are part of the key
    key = _protocol_key(cfg, backend, model_fp, warehouse)
    stored = _stored_scores(warehouse, table, arm, key)
    if stored is not None:
        context.log.info(
            f"{arm}: reused the scores evaluated at {stored['evaluated_at'].max()} (same model files, "
            f"protocol and lm-eval version); nothing evaluated"
        )
        info = {"seconds": 0.0, "label": str(stored["label"].iat[0]), "reused": True}
        df = stored
    else:
        df, info = _run_eval(context, cfg, _loadable_model(model_path, backend), warehouse, arm)
        df = df.assign(model_path=model_path, eval_key=key)
        with warehouse.connect() as con:  # a warehouse from before the column existed gains it
            con.execute(f'alter table if exists "{table}" add column if not exists eval_key VARCHAR')
        warehouse.replace_partition(table, df, "arm", arm)
        free_memory()
    return dg.MaterializeResult(
        data_version=table_data_version(warehouse, table, "arm", arm),
        metadata={**_scores_metadata(df, info), "reused": bool(info.get("reused"))},
    )


def _run_eval(
    context, cfg: LmEvalSettings, model_path: str, warehouse: WarehouseResource, arm: str
) -> tuple[pd.DataFrame, dict]:
    if cfg.tasks == "smoke":
        built = build_smoke_tasks(warehouse.artifacts_dir / "eval_tasks")
        for name, reasons in built.skipped.items():
            context.log.info(
                f"{name}: {built.items[name]} items, {len(reasons)} exemplars not usable (e.g. {reasons[0]})"
            )
        benchmarks, include = smoke_benchmarks(), built.folder
    elif cfg.tasks == "paper":
        benchmarks, include = paper_benchmarks(cfg.task_subsets, cfg.generation), None
    else:
        raise dg.Failure(description=f"tasks={cfg.tasks!r}: choose 'smoke' or 'paper'")
    backend = _eval_backend(context, cfg)
    context.log.info(
        f"{arm}: lm-eval {[b.name for b in benchmarks]} on {model_path} (limit {cfg.limit or 'per task'}, "
        f"backend {backend}, chat_template {cfg.chat_template})"
    )
    try:
        run = evaluate_model(
            model_path,
            benchmarks,
            include_path=include,
            limit=cfg.limit or None,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            backend=backend,
            chat_template=cfg.chat_template,
        )
    except ValueError as err:
        raise dg.Failure(description=f"{arm}: evaluation of {model_path} failed: {err}") from err
    label = SMOKE_LABEL if cfg.tasks == "smoke" else "paper protocol"
    df = pd.DataFrame(run.scores)
    reported = {t for b in benchmarks for t in (*b.tasks, b.headline_task)}
    df = df[df["task"].isin(reported) & (df["metric"] != "sample_len")]
    df = df.assign(
        arm=arm,
        model_path=model_path,
        task_version=df["task"].map(run.task_versions).fillna(""),
        lm_eval_version=run.lm_eval_version,
        seed=cfg.seed,
        limit_items=cfg.limit,
        task_set=cfg.tasks,
        backend=backend,
        chat_template=cfg.chat_template,
        label=label,
        evaluated_at=pd.Timestamp.now("UTC").tz_localize(None),
    )
    for r in df.itertuples():
        context.log.info(f"{arm} {r.task} {r.metric}/{r.filter}: {r.value:.4f} ± {r.stderr or 0:.4f} (n={r.n_samples})")
    return df, {"seconds": round(run.seconds, 1), "label": label}


def _scores_metadata(df: pd.DataFrame, info: dict) -> dict:
    return {
        **table_metadata(df, ["task", "metric", "filter", "value", "stderr", "n_samples"], n=12),
        "eval_seconds": info["seconds"],
        "label": info["label"],
        "chat_template": str(df["chat_template"].iat[0]),
        **{
            f"{r.task}/{r.metric}": round(r.value, 4)
            for r in df.itertuples()
            if r.filter in ("none", "strip", "last-number", "flexible-extract", "get-answer")
        },
    }


@dg.asset(
    code_version=CODE_VERSION,
    partitions_def=arm_partitions,
    group_name=GROUP,
    **_GPU,
    description="lm-eval scores of one arm's downstream model, per task and metric, with stderr, lm-eval and task "
    "versions, seed and limit. Demo: offline smoke tasks built from the lm-eval package (smoke-level numbers); "
    "paper, as DS2's run_eval.sh: MMLU 0-shot (all), GSM8K 8-shot CoT (200), BBH 3-shot CoT (40 per subtask), "
    "TruthfulQA MC2 (all), TyDiQA 1-shot (9 languages, 100 each); the model's training text format.",
)
def benchmark_scores(
    context: dg.AssetExecutionContext,
    config: LmEvalConfig,
    warehouse: WarehouseResource,
    downstream_models: ModelCheckpoint,
) -> dg.MaterializeResult:
    config = config.resolve(context)
    arm = context.partition_key
    trained = downstream_models.training_settings.get("chat_template")
    if trained != config.chat_template:
        raise dg.Failure(
            description=(
                f"{arm}: the downstream model was trained with chat_template={trained!r} but evaluation asks for "
                f"chat_template={config.chat_template!r}; train and evaluate in one format (set both, or rematerialise "
                f"downstream_models[{arm}])"
            )
        )
    base = downstream_models.training_settings.get("base_model")
    if base and base != config.base_model:  # the report compares each arm with base_model_scores' model
        context.log.warning(
            f"{arm} was fine-tuned from {base!r} but base_model_scores scores {config.base_model!r}: "
            "the report's base row is then not this arm's starting point"
        )
    return _scores(
        context, config, downstream_models.path, downstream_models.fingerprint, warehouse, "benchmark_scores", arm
    )


@dg.asset(
    code_version=CODE_VERSION,
    group_name=GROUP,
    **_GPU,
    description="The untuned downstream base model scored with the same lm-eval protocol as every arm.",
)
def base_model_scores(
    context: dg.AssetExecutionContext, config: LmEvalConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    config = config.resolve(context)
    path = resolve_causal_lm(config.base_model, str(warehouse.artifacts_dir))
    return _scores(context, config, path, model_fingerprint(path), warehouse, "base_model_scores", "base")


@dg.asset(
    code_version=CODE_VERSION,
    group_name=GROUP,
    kinds={"duckdb", "pandas"},
    # The scores, and what the funnel plot counts: rows of every stage, per source, down to the training sets.
    deps=[
        "benchmark_scores",
        "base_model_scores",
        "pool_summary",
        "rated_pool",
        "cluster_inputs",
        "distilled_pool",
        "distilled_high",
        "training_sets",
    ],
    description="Arms x tasks (headline metric per task) with the average, the base model row and the delta to the "
    "full_low and random arms; a bar plot, a markdown summary of the protocol (and of the judge's known length "
    "bias), and the funnel per source: input rows -> rejected / duplicates -> high / low -> clusters -> distilled "
    "-> accepted -> rows in the training sets.",
)
def benchmark_report(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    scores = warehouse.query("select * from benchmark_scores union all by name select * from base_model_scores")
    if scores.empty:
        raise dg.Failure(
            description="no benchmark scores yet: materialise benchmark_scores for some arms and base_model_scores"
        )
    task_set = scores["task_set"].iat[0]
    headline = headline_metrics(smoke_benchmarks() if task_set == "smoke" else paper_benchmarks())
    table = benchmark_table(scores, headline=headline)
    warehouse.replace_partition("benchmark_report", table)
    tasks = [c for c in table.columns if c not in ("arm", "average") and not c.startswith("delta_vs_")]
    smoke = (scores["task_set"] == "smoke").any()
    protocol = scores[scores["task"].isin(tasks)].drop_duplicates(["task"])
    with warehouse.connect() as con:
        funnel = source_funnel(con)
        arms = arm_origins(con, shortfall=False)
        bias = pool_length_correlation(con)
        judges = (
            con.execute(
                "select distinct judge_backend || ':' || judge_model from rated_pool where status = 'ok'"
            ).fetchall()
            if table_exists(con, "rated_pool")
            else []
        )
    judge_line = (
        f"**Judge**: {', '.join(sorted(j[0] for j in judges)) or 'none yet'}; its Overall correlates "
        f"{bias['spearman']:.2f} (Spearman; Pearson {bias['pearson']:.2f}) with log(answer length) over the "
        f"{bias['n']} rated pool rows"
        + (
            ": the heuristic judge is mostly a length meter, not a judge of correctness."
            if any(j[0].startswith("heuristic") for j in judges)
            else "."
        )
    )
    flow = ", ".join(f"{r.arm} {r.rows} rows ({r.distilled} distilled)" for r in arms.itertuples())
    summary = "\n".join(
        [
            "**Protocol**: lm-eval "
            + ", ".join(sorted(set(scores["lm_eval_version"])))
            + "; "
            + ", ".join(
                f"{r.task} (v{r.task_version or '-'}, {int(r.num_fewshot) if pd.notna(r.num_fewshot) else 'default'}"
                f"-shot, {f'{int(r.task_limit)} items per task, {r.subset}' if r.task_limit else 'all items'})"
                for r in protocol.itertuples()
            )
            + f"; seed {int(scores['seed'].iat[0])}; backend {scores['backend'].iat[0]}; chat template "
            + f"{scores['chat_template'].iat[0]} (training and evaluation). Same settings for every arm and the base model.",
            "",
            (
                f"**These numbers are {SMOKE_LABEL}.** They show the loop runs end to end; do not compare them with published scores."
                if smoke
                else "Paper protocol: DS2's run_eval.sh on lm-eval's tasks; differences in docs/method.md §6."
            ),
            "",
            judge_line,
            "",
            f"**Training sets**: {flow or 'none yet'}.",
            "",
            preview_md(table.round(4), n=len(table), max_chars=30).value,
        ]
    )
    context.log.info(f"benchmark report over {len(table)} rows (arms + base), tasks {tasks}")

    plot = grouped_bars(
        {r.arm: [getattr(r, t) for t in tasks] + [r.average] for r in table.itertuples(index=False)},
        [*tasks, "average"],
        "benchmark scores per arm" + (" (smoke-level)" if smoke else ""),
        "benchmark scores",
        ylim=(0, 1),
        figsize=(7, 3),
        legend_columns=2,
        legend_fontsize=6,
    )
    by_source = funnel[funnel["source"] != "total"]
    funnel_plot = funnel_panels(
        {r["source"]: {FUNNEL_LABELS[c]: int(r[c]) for c in FUNNEL_COLUMNS} for r in by_source.to_dict("records")},
        "rows per stage, per source (log scale)",
        "funnel per source",
    )
    return dg.MaterializeResult(
        data_version=table_data_version(warehouse, "benchmark_report"),
        metadata={
            "dagster/row_count": len(table),
            "dagster/column_schema": column_schema(table, "benchmark_report"),
            "report": dg.MetadataValue.md(summary),
            "plot": dg.MetadataValue.md(plot),
            "funnel": dg.MetadataValue.md(funnel_plot),
            "funnel_table": dg.MetadataValue.md(funnel.rename(columns=FUNNEL_LABELS).to_markdown(index=False)),
            "judge_length_spearman": round(bias["spearman"], 3) if bias["n"] >= 3 else None,
            "smoke_level": bool(smoke),
            **{f"average/{r.arm}": round(float(r.average), 4) for r in table.itertuples()},
        },
    )


# --------------------------------------------------------------------------- checks


@dg.asset_check(
    asset="benchmark_report",
    additional_deps=["benchmark_scores", "base_model_scores"],
    blocking=True,
    description="Every arm and the base model were scored with identical settings (tasks, versions, shots, per-task "
    "limits and subsets, seed, backend, chat template).",
)
def same_eval_settings(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    scores = warehouse.query("select * from benchmark_scores union all by name select * from base_model_scores")
    keys = ["task_set", "lm_eval_version", "seed", "limit_items", "backend", "chat_template"]
    per_arm = scores.groupby("arm").apply(
        lambda g: json.dumps(
            [
                sorted(
                    set(
                        zip(
                            g["task"],
                            g["task_version"],
                            g["num_fewshot"].fillna(-1),
                            g["metric"],
                            g["filter"],
                            g["task_limit"].fillna(0),
                            g["subset"].fillna(""),
                        )
                    )
                ),
                *[sorted(set(g[k].astype(str))) for k in keys],
            ]
        ),
        include_groups=False,
    )
    settings_seen = per_arm.value_counts()
    return dg.AssetCheckResult(
        passed=len(settings_seen) == 1,
        description="identical settings for all arms"
        if len(settings_seen) == 1
        else f"{len(settings_seen)} different settings",
        metadata={
            "arms_by_setting": dg.MetadataValue.json(
                {s[:300]: sorted(per_arm[per_arm == s].index) for s in settings_seen.index}
            )
        },
    )


@dg.asset_check(
    asset="benchmark_scores",
    partitions_def=arm_partitions,
    description="Every score (and stderr) of this arm is within [0, 1].",
)
def scores_in_unit_range(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    return no_offenders(
        context,
        warehouse,
        """select arm, task, metric, filter, value, stderr from benchmark_scores
                             where value is null or value < 0 or value > 1 or stderr < 0 or stderr > 1""",
        "all in [0, 1]",
        "{n} scores out of range",
        column="arm",
    )
