import os
import uuid

# Tests never reach a hub, whatever the machine allows.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import duckdb
import pytest


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A temporary LM_MIXUP_HOME (warehouse + artifacts) for one test."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("LM_MIXUP_HOME", str(path))
    return path


@pytest.fixture
def resources(home):
    from resources import build_resources

    return build_resources(profile="demo", home=str(home))


@pytest.fixture
def query(home):
    """Run SQL against the test's warehouse (either backend: LM_MIXUP_WAREHOUSE_*) and return a DataFrame."""
    from resources import warehouse_resource

    def _query(sql, params=None):
        warehouse = warehouse_resource(home=str(home))
        if warehouse.lake is not None:
            return warehouse.query(sql, params)
        con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
        try:
            return con.execute(sql, params or []).df()
        finally:
            con.close()

    return _query


# Where the ducklake tests find a Postgres server for a real Postgres catalog (.ci/run starts one and sets it).
POSTGRES_DSN_VAR = "LM_MIXUP_TEST_POSTGRES_DSN"
WAREHOUSE_BACKENDS = ["duckdb", "ducklake", "ducklake-postgres"]


@pytest.fixture(params=WAREHOUSE_BACKENDS)
def warehouse_backend(request, monkeypatch):
    """Run the test once per warehouse backend: a DuckDB file, a DuckLake with a SQLite catalog, and a
    DuckLake with a Postgres catalog (its own schema; skipped, saying so, without a server).
    Sets LM_MIXUP_WAREHOUSE_*, so ``resources``, ``query`` and child processes all use it; request it
    before those fixtures."""
    backend = request.param
    if backend == "duckdb":
        monkeypatch.setenv("LM_MIXUP_WAREHOUSE_BACKEND", "duckdb")
        yield backend
        return
    monkeypatch.setenv("LM_MIXUP_WAREHOUSE_BACKEND", "ducklake")
    schema = None
    if backend == "ducklake-postgres":
        dsn = os.environ.get(POSTGRES_DSN_VAR)
        if not dsn:
            pytest.skip(
                f"no Postgres for the ducklake catalog test: set {POSTGRES_DSN_VAR} (postgres://user@host:port/db); "
                ".ci/run starts one"
            )
        schema = f"t_{uuid.uuid4().hex[:12]}"
        monkeypatch.setenv("LM_MIXUP_WAREHOUSE_CATALOG", dsn)
        monkeypatch.setenv("LM_MIXUP_WAREHOUSE_METADATA_SCHEMA", schema)
    yield backend
    from lm_mixup_assets.lib.warehouse import close_lakes, drop_postgres_schema

    close_lakes()
    if schema:
        drop_postgres_schema(os.environ[POSTGRES_DSN_VAR], schema)


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory):
    """A ~3M-parameter random Llama with the SmolLM2 tokenizer: real code paths in seconds."""
    from lm_mixup_assets.lib.models import save_tiny_llama

    folder = tmp_path_factory.mktemp("tiny-lm")
    return save_tiny_llama(folder, str(tmp_path_factory.getbasetemp() / "tokcache"))


@pytest.fixture(scope="session", autouse=True)
def lineage_reads():
    """Every table read through the warehouse resource in this session, by the step that read it.

    tests/test_lineage.py checks them against the declared asset graph after all other tests ran.
    """
    from lm_mixup_assets.lib.warehouse import recording_reads

    with recording_reads() as recorder:
        yield recorder


def pytest_collection_modifyitems(session, config, items):
    # The session-wide lineage audit needs the reads of every other test: run it last.
    last = [item for item in items if item.name.startswith("test_session_reads_")]
    items[:] = [item for item in items if item not in last] + last
