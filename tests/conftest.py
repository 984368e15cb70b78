import os

# Tests never reach a hub, whatever the machine allows.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import duckdb  # noqa: E402
import pytest  # noqa: E402


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
    """Run SQL against the test's warehouse and return a DataFrame."""

    def _query(sql, params=None):
        con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
        try:
            return con.execute(sql, params or []).df()
        finally:
            con.close()

    return _query
