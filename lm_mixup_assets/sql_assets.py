"""Turns every ``dbt_like_sql/*.sql`` model into a Dagster asset (one small factory).

Dependencies come from ``{{ ref('...') }}``; the group, partitioning and
launchpad-editable vars from the file's header (see ``lib/sql_models.py``).
"""


import os
from pathlib import Path

import dagster as dg
from pydantic import create_model

from lm_mixup_assets.lib.sql_models import SqlModel, load_models, materialise_model
from lm_mixup_assets.metadata import preview_md
from lm_mixup_assets.partitions import source_partitions
from resources import WarehouseResource

SQL_DIR = Path(__file__).resolve().parent.parent / "dbt_like_sql"
PARTITIONS = {"source": source_partitions}


def _config_class(model: SqlModel) -> type[dg.Config]:
    """A launchpad config with one field per declared var; env ``LM_MIXUP_VAR_<NAME>`` sets its default."""
    fields = {}
    for name, (kind, default) in model.vars.items():
        env = os.environ.get(f"LM_MIXUP_VAR_{name.upper()}")
        fields[name] = (kind, kind(env) if env is not None else default)
    return create_model(f"{model.name}_config", __base__=dg.Config, **fields)


def build_sql_asset(model: SqlModel) -> dg.AssetsDefinition:
    if model.partitioned_by and model.partitioned_by not in PARTITIONS:
        raise ValueError(f"{model.path.name}: no partitions named {model.partitioned_by!r} (known: {sorted(PARTITIONS)})")
    config_cls = _config_class(model)

    @dg.asset(
        name=model.name,
        group_name=model.group,
        deps=model.refs,
        partitions_def=PARTITIONS.get(model.partitioned_by) if model.partitioned_by else None,
        kinds=set(model.kinds),
        description=f"{model.description}\n\nSQL model `dbt_like_sql/{model.path.name}`.",
        metadata={"sql_file": f"dbt_like_sql/{model.path.name}"},
    )
    def _sql_asset(context: dg.AssetExecutionContext, config: config_cls, warehouse: WarehouseResource) -> dg.MaterializeResult:  # type: ignore[valid-type]
        partition = context.partition_key if model.partitioned_by else None
        values = config.model_dump()
        with warehouse.connect() as con:
            count = materialise_model(con, model, values, partition)
            where = f' where "{model.partitioned_by}" = ?' if partition else ""
            preview = con.execute(f'select * from "{model.name}"{where} limit 5', [partition] if partition else []).df()
        context.log.info(f"{model.name}{f'[{partition}]' if partition else ''}: {count} rows (vars {values})")
        return dg.MaterializeResult(metadata={
            "dagster/row_count": count,
            "preview": preview_md(preview),
            "vars": dg.MetadataValue.json(values),
            "sql": dg.MetadataValue.md(f"```sql\n{model.render(values, partition or 'x')[0]}\n```"),
        })

    return _sql_asset


sql_model_assets = [build_sql_asset(m) for m in load_models(SQL_DIR)]
