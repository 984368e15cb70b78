"""One threshold splits the pool: one step, one config, one transaction; a split that does not add up blocks."""

import dagster as dg
import duckdb
import pytest

import definitions
from lm_mixup_assets.config import resolved_settings
from lm_mixup_assets.lib.settings.base import SettingsError
from lm_mixup_assets.lib.sql_models import SqlModelError, group_steps, materialise_step, parse_model
from lm_mixup_assets.sql_assets import SQL_STEPS, step_settings
from tests.helpers import checks_by_name, materialize_source


def tamper_rated_row_into_both_pools(home, source):
    """Give one high-scored rated row a second, low-scored copy (same sample_id): the split then puts it in both pools."""
    con = duckdb.connect(str(home / "warehouse.duckdb"))
    try:
        con.execute(
            """insert into rated_pool
                       select * replace (1 as overall, 0 as overall_compressed) from rated_pool
                       where source = ? and status = 'ok' and overall_compressed >= 4 order by sample_id limit 1""",
            [source],
        )
    finally:
        con.close()


def _split_config(threshold):
    return {"ops": {"quality_split": {"config": {"quality_threshold": threshold}}}}


def test_both_pools_are_one_step_with_one_threshold():
    [split] = [a for a in definitions.defs.assets if dg.AssetKey("high_quality_pool") in a.keys]
    assert set(split.keys) == {dg.AssetKey("high_quality_pool"), dg.AssetKey("low_quality_pool")}
    assert split.node_def.name == "quality_split" and not split.can_subset
    fields = split.node_def.config_schema.config_type.fields
    assert list(fields) == ["quality_threshold"] and fields["quality_threshold"].description
    check = next(
        s for c in definitions.defs.asset_checks for s in c.check_specs if s.name == "quality_split_accounting"
    )
    assert check.blocking


def test_a_per_run_threshold_moves_rows_consistently(resources, query):
    first = materialize_source("humaneval", resources, run_config=_split_config(5))
    assert checks_by_name(first)["quality_split_accounting"].passed
    ok = query("select overall_compressed c from rated_pool where source = 'humaneval' and status = 'ok'")["c"]
    sides = {}
    for threshold in (5, 3):
        if threshold != 5:
            result = materialize_source("humaneval", resources, run_config=_split_config(threshold))
            assert checks_by_name(result)["quality_split_accounting"].passed
        high = query("select * from high_quality_pool where source = 'humaneval'")
        low = query("select * from low_quality_pool where source = 'humaneval'")
        assert len(high) == int((ok >= threshold).sum()) and len(low) == int((ok < threshold).sum())
        assert len(high) + len(low) == len(ok) == 164
        assert set(high["quality_threshold"]) | set(low["quality_threshold"]) == {threshold}
        assert not set(high["sample_id"]) & set(low["sample_id"])
        sides[threshold] = set(high["sample_id"])
    assert sides[5] < sides[3]  # lowering the bar only moves rows from low to high


def test_a_split_with_a_row_in_both_pools_fails_the_blocking_check_and_stops_clustering(home, resources, query):
    pool_and_clusters = [
        a
        for a in definitions.defs.assets
        if a.partitions_def is not None
        and a.group_names_by_key
        and set(a.group_names_by_key.values()) <= {"pool", "clusters"}
    ]
    assets = [*pool_and_clusters, *definitions.defs.asset_checks]
    assert dg.materialize(assets, resources=resources, partition_key="humaneval").success
    clusters_before = query("select count(*) n from low_quality_clusters where source = 'humaneval'")["n"][0]

    tamper_rated_row_into_both_pools(home, "humaneval")
    result = dg.materialize(
        assets,
        resources=resources,
        partition_key="humaneval",
        raise_on_error=False,
        selection=dg.AssetSelection.assets("high_quality_pool", "low_quality_pool", "low_quality_clusters"),
    )
    assert not result.success
    split = checks_by_name(result)["quality_split_accounting"]
    assert not split.passed and split.partition == "humaneval"
    assert split.description.startswith("this source fails: split does not add up")
    assert not result.asset_materializations_for_node("low_quality_clusters")  # blocked downstream
    assert query("select count(*) n from low_quality_clusters where source = 'humaneval'")["n"][0] == clusters_before
    # Counts alone still add up (165 ok rows = 160 high + 5 low); only the in-both test sees the broken split.
    assert split.metadata["mismatches"].value.count("humaneval") == 1
    high, low = (
        query(f"select count(*) n from {t} where source = 'humaneval'")["n"][0]
        for t in ("high_quality_pool", "low_quality_pool")
    )
    assert (high, low) == (160, 5)
    both = query("select count(*) n from high_quality_pool h join low_quality_pool l using (source, sample_id)")["n"][0]
    assert both == 1


def test_the_threshold_resolves_from_header_profile_env_and_launchpad(monkeypatch):
    split = next(s for s in SQL_STEPS if s.name == "quality_split")
    model = step_settings(split)
    monkeypatch.delenv("LM_MIXUP_QUALITY_SPLIT_QUALITY_THRESHOLD", raising=False)
    for profile in ("demo", "paper"):  # the SQL header's 4 in both profiles
        assert resolved_settings(model, profile)[0].quality_threshold == 4
    monkeypatch.setenv("LM_MIXUP_QUALITY_SPLIT_QUALITY_THRESHOLD", "3")
    settings, sources = resolved_settings(model, "demo")
    assert (
        settings.quality_threshold == 3 and sources["quality_threshold"] == "LM_MIXUP_QUALITY_SPLIT_QUALITY_THRESHOLD"
    )
    settings, sources = resolved_settings(model, "demo", explicit={"quality_threshold": 2})
    assert settings.quality_threshold == 2 and sources["quality_threshold"] == "launchpad"
    monkeypatch.setenv("LM_MIXUP_QUALITY_SPLIT_QUALITY_THRESHOLD", "four")
    with pytest.raises(SettingsError, match="QUALITY_THRESHOLD.*valid integer"):
        resolved_settings(model, "demo")


def _model(tmp_path, name, header, body="select 1 as source, {{ var('t') }} as t"):
    path = tmp_path / f"{name}.sql"
    path.write_text(header + "\n" + body + "\n")
    return parse_model(path)


def test_models_of_one_step_must_agree_on_their_vars(tmp_path):
    a = _model(tmp_path, "a", "-- step: split\n-- var: t int 4 | the threshold")
    b = _model(tmp_path, "b", "-- step: split\n-- var: t int 5")
    with pytest.raises(SqlModelError, match=r"a\.sql \(step 'split'\): var t is int 4 here but int 5 in b\.sql"):
        group_steps([a, b])
    c = _model(tmp_path, "c", "-- step: split\n-- var: t int 4")
    [step] = group_steps([a, c])
    assert [m.name for m in step.models] == ["a", "c"] and step.var_descriptions == {"t": "the threshold"}


def test_a_step_writes_all_its_tables_or_none(tmp_path):
    con = duckdb.connect()
    good = _model(tmp_path, "good", "-- step: s\n-- var: t int 1", "select {{ var('t') }} as t")
    bad = _model(
        tmp_path, "bad", "-- step: s\n-- var: t int 1", "select {{ var('t') }} / 0 as t, cast('x' as int) as y"
    )
    assert materialise_step(con, [good], {"t": 1}) == {"good": 1}
    with pytest.raises(duckdb.Error):
        materialise_step(con, [good, bad], {"t": 2})
    assert con.execute("select t from good").fetchall() == [(1,)]  # the first table rolled back too
