"""Turns every ``dbt_like_sql/*.sql`` model into a Dagster asset (one small factory).

Dependencies come from ``{{ ref('...') }}``; the group, partitioning, step and
launchpad-editable vars from the file's header (see ``lib/sql_models.py``).
Models that share a ``step`` (the quality split: ``high_quality_pool`` and
``low_quality_pool``) become one multi-asset with one config, written in one
transaction, so one threshold governs both tables (docs/method.md, "Quality split").
Each model's ``code_version`` follows its SQL file's text, so editing a model
marks it and its downstream unsynced; each materialisation reports the content
hash of the partition it wrote as its data version.
"""

import hashlib
from pathlib import Path

import dagster as dg
from pydantic import Field, create_model

from lm_mixup_assets.config import launchpad_config
from lm_mixup_assets.lib.settings.base import StageSettings
from lm_mixup_assets.lib.sql_models import SqlModel, SqlStep, group_steps, load_models, materialise_step
from lm_mixup_assets.metadata import code_version, preview_md, table_data_version_in, warehouse_column_schema
from lm_mixup_assets.partitions import source_partitions
from resources import WarehouseResource

SQL_DIR = Path(__file__).resolve().parent.parent / "dbt_like_sql"
PARTITIONS = {"source": source_partitions}
# Bump when the runner (how a step renders and writes its models) changes what the tables hold;
# a model's own SQL is versioned by its file's text (``model_code_version``).
CODE_VERSION = "1"


def model_code_version(model: SqlModel) -> str:
    """The runner's version plus a hash of the model's SQL file: an edited model is a new version."""
    digest = hashlib.sha256(model.path.read_bytes()).hexdigest()[:10]
    return code_version(f"{CODE_VERSION}-{digest}")


def step_settings(step: SqlStep) -> type[StageSettings]:
    """The step's settings model: one field per var of its SQL headers (shared vars once), its
    default and description from the header; preset and env prefix = the step's name
    (``LM_MIXUP_QUALITY_SPLIT_QUALITY_THRESHOLD``)."""
    fields = {}
    for name, (kind, default) in step.vars.items():
        description = step.var_descriptions.get(name, f"SQL var {name!r} of {', '.join(m.name for m in step.models)}.")
        fields[name] = (kind, Field(default=default, description=description))
    model = create_model(f"{step.name.title().replace('_', '')}Settings", __base__=StageSettings, **fields)
    model.preset = step.name
    return model


def _partitions(step: SqlStep):
    if step.partitioned_by and step.partitioned_by not in PARTITIONS:
        raise ValueError(
            f"{step.models[0].path.name}: no partitions named {step.partitioned_by!r} (known: {sorted(PARTITIONS)})"
        )
    return PARTITIONS.get(step.partitioned_by) if step.partitioned_by else None


def _description(model: SqlModel, step: SqlStep) -> str:
    text = f"{model.description}\n\nSQL model `dbt_like_sql/{model.path.name}`."
    if len(step.models) > 1:
        others = ", ".join(f"`{m.name}`" for m in step.models if m is not model)
        text += f" Built with {others} in one step (`{step.name}`): one config, one transaction."
    return text


def _run_step(context, step: SqlStep, values: dict, warehouse: WarehouseResource) -> list[dg.MaterializeResult]:
    partition = context.partition_key if step.partitioned_by else None
    col = step.partitioned_by
    # One transaction for the step's tables, retried whole if a lake commit conflicts.
    counts = warehouse.write(
        lambda con: materialise_step(con, step.models, values, partition, in_transaction=True),
        tables=[m.name for m in step.models],
    )
    with warehouse.connect() as con:
        results = []
        for model in step.models:
            where = f' where "{col}" = ?' if partition else ""
            preview = con.execute(f'select * from "{model.name}"{where} limit 5', [partition] if partition else []).df()
            version = table_data_version_in(con, model.name, col, partition)
            results.append(
                dg.MaterializeResult(
                    asset_key=model.name,
                    data_version=version,
                    metadata={
                        "dagster/row_count": counts[model.name],
                        "dagster/column_schema": warehouse_column_schema(con, model.name),
                        "preview": preview_md(preview),
                        "vars": dg.MetadataValue.json(values),
                        "sql": dg.MetadataValue.md(f"```sql\n{model.render(values, partition or 'x')[0]}\n```"),
                    },
                )
            )
    context.log.info(
        f"{step.name}{f'[{partition}]' if partition else ''}: "
        + ", ".join(f"{name} {n} rows" for name, n in counts.items())
        + f" (vars {values})"
    )
    return results


def build_sql_asset(model: SqlModel) -> dg.AssetsDefinition:
    """A single model as its own step (kept for callers that build one model)."""
    return build_sql_step(SqlStep(model.name, [model]))


def build_sql_step(step: SqlStep) -> dg.AssetsDefinition:
    partitions_def = _partitions(step)
    config_cls = launchpad_config(step_settings(step))

    if len(step.models) == 1:
        model = step.models[0]

        @dg.asset(
            name=model.name,
            group_name=model.group,
            deps=model.refs,
            code_version=model_code_version(model),
            partitions_def=partitions_def,
            kinds=set(model.kinds),
            description=_description(model, step),
            metadata={"sql_file": f"dbt_like_sql/{model.path.name}"},
        )
        def _sql_asset(
            context: dg.AssetExecutionContext, config: config_cls, warehouse: WarehouseResource
        ) -> dg.MaterializeResult:  # type: ignore[valid-type]
            return _run_step(context, step, config.resolve(context).values(), warehouse)[0]

        return _sql_asset

    # One step, several tables: not subsettable, because building one table
    # alone is exactly how two thresholds would end up in one split.
    @dg.multi_asset(
        name=step.name,
        group_name=step.group,
        partitions_def=partitions_def,
        can_subset=False,
        description=f"Builds {', '.join(m.name for m in step.models)} in one transaction from one config.",
        specs=[
            dg.AssetSpec(
                key=model.name,
                deps=model.refs,
                code_version=model_code_version(model),
                kinds=set(model.kinds),
                description=_description(model, step),
                metadata={"sql_file": f"dbt_like_sql/{model.path.name}", "sql_step": step.name},
            )
            for model in step.models
        ],
    )
    def _sql_step(context: dg.AssetExecutionContext, config: config_cls, warehouse: WarehouseResource):  # type: ignore[valid-type]
        yield from _run_step(context, step, config.resolve(context).values(), warehouse)

    return _sql_step


SQL_STEPS = group_steps(load_models(SQL_DIR))
sql_model_assets = [build_sql_step(s) for s in SQL_STEPS]
