"""Small helpers the tests share."""

import dagster as dg

import definitions


def pool_assets_and_checks():
    """The source-partitioned assets of the pool group plus every check, for dg.materialize."""
    assets = [
        a
        for a in definitions.defs.assets
        if a.partitions_def is not None and a.group_names_by_key and set(a.group_names_by_key.values()) == {"pool"}
    ]
    return [*assets, *definitions.defs.asset_checks]


def assets_of_groups(*groups, checks=True):
    """Every asset of the named groups (plus every check), for dg.materialize."""
    assets = [
        a for a in definitions.defs.assets if a.group_names_by_key and set(a.group_names_by_key.values()) <= set(groups)
    ]
    return [*assets, *definitions.defs.asset_checks] if checks else assets


def materialize_source(source, resources, run_config=None, raise_on_error=True, assets=None):
    return dg.materialize(
        assets or pool_assets_and_checks(),
        resources=resources,
        partition_key=source,
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def checks_by_name(result):
    return {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}
