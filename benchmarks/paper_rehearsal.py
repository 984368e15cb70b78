"""Paper-scale rehearsal: the paper profile's CPU path on a 300k-row pool, stage by stage.

    flock /tmp/bench.lock .venv/bin/python benchmarks/paper_rehearsal.py [--rows 300000]

What runs (the platform's own code, with the paper profile's settings, ``resolved_settings(Model, "paper")``):

1. ``sources``: 5 sources generated offline and seeded, named after DS2's pool (alpaca, dolly, flan_v2,
   wizardlm, oasst) with that pool's shape of lengths, in words: log-normal prompt / answer lengths,
   clipped to prompts 20-200 and answers 20-400 words, medians per source
   alpaca 25 / 60, dolly 45 / 70, flan_v2 120 / 30, wizardlm 70 / 300, oasst 40 / 180.
   Words come from a Zipf vocabulary of 30,000 made-up words, half of each row from one of 500 topic
   vocabularies, so embeddings have neighbourhoods to find.
2. ``judge``: ``JudgeResource`` with the paper profile's judge settings (``openai`` backend, DS2 rubric,
   concurrency 128, ``chunk_rows``) and the real ``openai`` client, against the local OpenAI-compatible
   server of tests/openai_server.py (0.3 s latency per answer, DS2-style answers), one call per source
   as the ``rated_pool`` partitions make it, through the DuckDB judge cache. Its line also gives the
   requests/s and the ratio to concurrency / latency. With ``--judge-batch`` the same rows go through
   the Batch API path instead (``batch: true``: JSONL files of up to 50,000 requests uploaded to the
   server's ``/v1/files``, one batch each, polled every 0.2 s, results downloaded and parsed); its line
   gives batches, seconds and this process's peak RSS, which should follow one batch file, not the pool.
3. ``quality_split``: the SQL models dbt_like_sql/{high,low}_quality_pool.sql, per source.
4. ``embed_low``: the fast offline embedder of this benchmark (below) over every low row.
5. ``clusters``: ``lib/clustering.py::capacity_constrained_clusters`` per source (the clusters stage).
6. ``distilled_stand_in``: NOT a platform stage. The distiller is a GPU model; one distilled row per
   cluster (its members' prompts and answers joined) stands in for it, and every third one is taken as
   "high", so the long-tail and training-set stages have a distilled pool of the right size.
7. ``embed_targets`` and ``mixture_pairing``: ``--targets`` (144,000) synthetic MIXTURE targets, 5 per
   paragraph and ~10 paragraphs per article, embedded, then ``lib/pairing.py::cross_group_neighbours``
   with the paper's ``cross_topic_neighbours``.
8. ``long_tail``: ``lib/selection.py::long_tail_scores`` (exact faiss kNN, k=15) over the original high
   and the distilled high pools, embedded with the paper's prefixes (``long_tail_text``).
9. ``training_sets``: ``lib/selection.py::compose_arm`` for every paper arm at the paper's 10,000 rows,
   written to the warehouse as the asset does.

Embedder: sentence-transformers' MiniLM runs ~100 rows/s on 2 cores (too slow for 300k rows here) and
model2vec is not installed, so this benchmark embeds with scikit-learn's ``HashingVectorizer`` (word
1-2-grams, 2^17 features, l2) followed by a fixed seeded Gaussian projection to 384 dimensions,
L2-normalised: the same shape of vectors as MiniLM's, at ~5-10k rows/s. It measures the platform's
code around the embedder, not an embedding model.

Printed, one line per stage: ``stage <name> rows=<n> seconds=<s> peak_rss_mb=<m>`` (the peak resident
set of this process during the stage, sampled every 50 ms; the judge server is a separate process and
its RSS is on the ``judge`` line) plus stage details, and at the end
``rehearsal rows=<n> seconds=<s> peak_rss_mb=<m>``. Targets on 2 cores: under 30 minutes, peak RSS under
8 GB, judge ratio >= 0.9. The warehouse is a DuckDB file in a temporary folder (the paper profile's
DuckLake needs a catalog; the SQL and the tables are the same).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

SOURCES = {  # name: (median prompt words, median answer words)
    "alpaca": (25, 60),
    "dolly": (45, 70),
    "flan_v2": (120, 30),
    "wizardlm": (70, 300),
    "oasst": (40, 180),
}
PROMPT_WORDS = (20, 200)
ANSWER_WORDS = (20, 400)
VOCABULARY = 30_000
TOPICS = 500
TOPIC_WORDS = 200
EMBED_DIM = 384
HASH_FEATURES = 1 << 17
LATENCY_S = 0.3
CONCURRENCY = 128


# --------------------------------------------------------------------------- measuring


class PeakRss:
    """Samples this process's resident set every ``interval_s``; ``stage()`` gives the peak since its start."""

    def __init__(self, interval_s: float = 0.05) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval_s = interval_s
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def reset(self) -> None:
        self._peak = self._process.memory_info().rss

    def peak_mb(self) -> float:
        return max(self._peak, self._process.memory_info().rss) / 2**20

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


RSS: PeakRss | None = None


@contextmanager
def stage(name: str, details: dict | None = None):
    """Times the block and prints its line; the block fills ``details`` (``rows`` first)."""
    details = {} if details is None else details
    RSS.reset()
    started = time.perf_counter()
    yield details
    seconds = time.perf_counter() - started
    rows = details.pop("rows")
    extra = "".join(f" {k}={v}" for k, v in details.items())
    print(f"stage {name} rows={rows} seconds={seconds:.1f} peak_rss_mb={RSS.peak_mb():.0f}{extra}", flush=True)


# --------------------------------------------------------------------------- synthetic data


def make_vocabulary(rng: np.random.Generator) -> np.ndarray:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(2, 10, size=VOCABULARY)
    chars = rng.integers(0, 26, size=int(lengths.sum()))
    words, at = [], 0
    for i, n in enumerate(lengths):
        words.append("".join(letters[chars[at : at + n]]) + str(i % 7))  # distinct strings
        at += n
    return np.array(words, dtype=object)


def texts(rng: np.random.Generator, vocab: np.ndarray, topics: np.ndarray, median: int, bounds: tuple) -> list[str]:
    """One text per row of ``topics``: a log-normal number of words, half from the row's topic vocabulary."""
    n = len(topics)
    lengths = np.clip(np.round(rng.lognormal(np.log(median), 0.5, size=n)), *bounds).astype(np.int64)
    zipf = 1.0 / np.arange(1, VOCABULARY + 1)
    common = rng.choice(VOCABULARY, size=int(lengths.sum()), p=zipf / zipf.sum())
    topical = topics.repeat(lengths) * (VOCABULARY // TOPICS) + rng.integers(0, TOPIC_WORDS, size=int(lengths.sum()))
    words = vocab[np.where(rng.random(int(lengths.sum())) < 0.5, common, topical % VOCABULARY)]
    ends = np.cumsum(lengths)
    return [" ".join(words[e - k : e]) + "." for e, k in zip(ends, lengths)]


def make_pool(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    vocab = make_vocabulary(rng)
    frames = []
    for i, (source, (prompt_median, answer_median)) in enumerate(SOURCES.items()):
        n = rows // len(SOURCES) + (i < rows % len(SOURCES))
        topics = rng.integers(0, TOPICS, size=n)
        frames.append(
            pd.DataFrame(
                {
                    "source": source,
                    "sample_id": [f"{source}-{j:06d}" for j in range(n)],
                    "prompt": texts(rng, vocab, topics, prompt_median, PROMPT_WORDS),
                    "completion": texts(rng, vocab, topics, answer_median, ANSWER_WORDS),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def make_targets(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``n`` MIXTURE-like targets: 5 per paragraph, ~10 paragraphs per article (the title is the group)."""
    rng = np.random.default_rng(seed + 1)
    vocab = make_vocabulary(rng)
    paragraphs = -(-n // 5)
    article_of_paragraph = np.sort(rng.integers(0, max(1, paragraphs // 10), size=paragraphs))
    article = article_of_paragraph.repeat(5)[:n]
    return texts(rng, vocab, article % TOPICS, 60, (20, 200)), np.array([f"article {a}" for a in article])


# --------------------------------------------------------------------------- the fast embedder


class HashingEmbedder:
    """Word 1-2-gram hashing (scikit-learn) -> fixed Gaussian projection to 384-d -> L2-normalised float32."""

    def __init__(self, seed: int = 0, batch: int = 8192) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.vectorizer = HashingVectorizer(
            n_features=HASH_FEATURES, ngram_range=(1, 2), alternate_sign=False, norm="l2", dtype=np.float32
        )
        rng = np.random.default_rng(seed)
        self.projection = (rng.standard_normal((HASH_FEATURES, EMBED_DIM), dtype=np.float32)) / np.sqrt(EMBED_DIM)
        self.batch = batch

    def embed(self, docs: list[str]) -> np.ndarray:
        out = np.empty((len(docs), EMBED_DIM), dtype=np.float32)
        for a in range(0, len(docs), self.batch):
            v = np.asarray(self.vectorizer.transform(docs[a : a + self.batch]) @ self.projection)
            out[a : a + self.batch] = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return out


# --------------------------------------------------------------------------- the rehearsal


def rate(pool: pd.DataFrame, warehouse, judge_settings: dict) -> tuple[pd.DataFrame, dict]:
    """rated_pool, one ``rate_pairs`` call per source (as its partitions), and the judge's figures
    (online: requests/s against concurrency / latency; ``batch`` on: batches and answered lines)."""
    import psutil

    from lm_mixup_assets.lib.rubric import compress_overall
    from resources import JudgeResource
    from tests.openai_server import OpenAICompatServer

    os.environ.setdefault("OPENAI_API_KEY", "EMPTY")  # the local server takes any key
    with OpenAICompatServer(latency_s=LATENCY_S, answer_fn="tests.openai_server:ds2_answer") as server:
        judge = JudgeResource(**{**judge_settings, "base_url": server.base_url, "concurrency": CONCURRENCY})
        batch = bool(judge_settings.get("batch"))
        frames, sent, batch_lines, seconds = [], 0, 0, 0.0
        for _, rows in pool.groupby("source", sort=False):
            started = time.perf_counter()
            rating, _ = judge.rate_pairs(rows["prompt"].tolist(), rows["completion"].tolist(), warehouse)
            seconds += time.perf_counter() - started
            sent += rating.stats.get("requests_sent", 0)  # batch on: batch lines + online re-asks
            batch_lines += rating.stats.get("batch_requests", 0)
            scores = [o.scores if o.status == "ok" else None for o in rating.outcomes]
            frame = rows.assign(
                **{
                    key: pd.array([s[key] if s else None for s in scores], dtype="Int64")
                    for key in ("rarity", "complexity", "informativeness", "overall")
                },
                overall_compressed=pd.array(
                    [compress_overall(s["overall"]) if s else None for s in scores], dtype="Int64"
                ),
                status=[o.status for o in rating.outcomes],
                judge_model=judge.model,
                rubric_version=judge.rubric_version,
            )
            frames.append(frame)
        server_rss = psutil.Process(server._proc.pid).memory_info().rss / 2**20 if server._proc else 0.0
        served = server.stats()
    rated = pd.concat(frames, ignore_index=True)
    figures = {"ok": int((rated["status"] == "ok").sum()), "failed": int((rated["status"] != "ok").sum())}
    if batch:
        figures.update(
            batches=served["batches_created"],
            batch_lines=batch_lines,
            batch_max_requests=judge.batch_max_requests,
            online_reasks=sent - batch_lines,
            rows_per_s=f"{len(rated) / max(seconds, 1e-9):.1f}",
        )
    else:
        per_s = sent / max(seconds, 1e-9)
        ideal = CONCURRENCY / LATENCY_S
        figures.update(
            requests=sent,
            requests_per_s=f"{per_s:.1f}",
            ideal_per_s=f"{ideal:.1f}",
            ratio=f"{per_s / ideal:.3f}",
            chunk_rows=judge.chunk_rows,
        )
    figures["server_rss_mb"] = f"{server_rss:.0f}"
    return rated, figures


def quality_split(warehouse, rated: pd.DataFrame, threshold: int) -> tuple[int, int]:
    from lm_mixup_assets.lib.sql_models import load_models, materialise_step

    models = [m for m in load_models(REPO / "dbt_like_sql") if m.name in ("high_quality_pool", "low_quality_pool")]
    with warehouse.connect() as con:
        con.register("_rated", rated)
        con.execute("create or replace table rated_pool as select * from _rated")
        con.unregister("_rated")
        high = low = 0
        for source in rated["source"].unique():
            counts = materialise_step(con, models, {"quality_threshold": threshold}, source)
            high += counts["high_quality_pool"]
            low += counts["low_quality_pool"]
    return high, low


def main(argv: list[str] | None = None) -> None:
    global RSS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300_000, help="pool rows over the 5 sources")
    parser.add_argument("--targets", type=int, default=144_000, help="synthetic MIXTURE targets to pair")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", default="", help="warehouse folder (default: a temporary one)")
    parser.add_argument(
        "--judge-batch", action="store_true", help="rate through the Batch API path (batch: true) instead of online"
    )
    args = parser.parse_args(argv)

    from lm_mixup_assets.config import resolved_settings
    from lm_mixup_assets.lib.clustering import capacity_constrained_clusters
    from lm_mixup_assets.lib.pairing import cross_group_neighbours
    from lm_mixup_assets.lib.selection import compose_arm, long_tail_scores, long_tail_text, parse_arm
    from lm_mixup_assets.lib.settings.clusters import ClusteringSettings
    from lm_mixup_assets.lib.settings.mixture import VariantsSettings
    from lm_mixup_assets.lib.settings.selection import LongTailSettings, TrainingSetSettings
    from lm_mixup_assets.selection import LIST_TYPES, TRAINING_SET_COLUMNS
    from resources import WarehouseResource
    from resources.profiles import PROFILES

    clustering = resolved_settings(ClusteringSettings, "paper")[0]
    long_tail = resolved_settings(LongTailSettings, "paper")[0]
    training = resolved_settings(TrainingSetSettings, "paper")[0]
    variants = resolved_settings(VariantsSettings, "paper")[0]
    judge_settings = dict(PROFILES["paper"]["judge"])
    if args.judge_batch:
        judge_settings.update(batch=True, batch_poll_interval_s=0.2)

    RSS = PeakRss()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="paper-rehearsal-") as tmp:
        warehouse = WarehouseResource(home=args.home or tmp, backend="duckdb")
        embedder = HashingEmbedder(args.seed)

        with stage("sources") as d:
            pool = make_pool(args.rows, args.seed)
            d["rows"] = len(pool)
            d["sources"] = pool["source"].nunique()
            d["prompt_words_mean"] = f"{pool['prompt'].str.count(' ').mean() + 1:.0f}"
            d["answer_words_mean"] = f"{pool['completion'].str.count(' ').mean() + 1:.0f}"

        with stage("judge") as d:
            d["rows"] = len(pool)
            rated, figures = rate(pool, warehouse, judge_settings)
            d.update(figures)
        del pool

        with stage("quality_split") as d:
            d["rows"] = len(rated)
            high_n, low_n = quality_split(warehouse, rated, threshold=4)
            d.update(high=high_n, low=low_n, failed=int((rated["status"] != "ok").sum()))
        low = warehouse.query("select source, sample_id, prompt, completion from low_quality_pool order by all")
        high = warehouse.query(
            "select source, sample_id, [sample_id] member_ids, prompt, completion, overall_compressed "
            "from high_quality_pool order by source, sample_id"
        )

        with stage("embed_low") as d:
            d["rows"] = len(low)
            embed_started = time.perf_counter()
            low_vectors = embedder.embed((low["prompt"] + "\n" + low["completion"]).tolist())
            d["rows_per_s"] = f"{len(low) / max(time.perf_counter() - embed_started, 1e-9):.0f}"

        with stage("clusters") as d:
            d["rows"] = len(low)
            labels = np.empty(len(low), dtype=np.int64)
            n_clusters = 0
            sizes = {k: getattr(clustering, k) for k in ("min_size", "max_size", "mean_cap", "std_cap", "seed")}
            for source in low["source"].unique():
                at = np.flatnonzero(low["source"].to_numpy() == source)
                result = capacity_constrained_clusters(low_vectors[at], **sizes)
                labels[at] = result.labels + n_clusters
                n_clusters += len(result.sizes)
            d["clusters"] = n_clusters
            d["mean_size"] = f"{len(low) / max(n_clusters, 1):.2f}"
        del low_vectors

        with stage("distilled_stand_in") as d:
            d["rows"] = n_clusters
            groups = low.assign(cluster=labels).groupby("cluster", sort=True)
            distilled = pd.DataFrame(
                {
                    "source": groups["source"].first().to_numpy(),
                    "sample_id": [f"distilled-{c:07d}" for c in groups.size().index],
                    "member_ids": groups["sample_id"].agg(list).to_numpy(),
                    "prompt": groups["prompt"].agg(" ".join).to_numpy(),
                    "completion": groups["completion"].agg(" ".join).to_numpy(),
                    "overall_compressed": 4,
                }
            )
            distilled = distilled.iloc[::3].reset_index(drop=True)  # the "high" third
            d["distilled_high"] = len(distilled)

        with stage("embed_targets") as d:
            target_texts, titles = make_targets(args.targets, args.seed)
            d["rows"] = len(target_texts)
            target_vectors = embedder.embed(target_texts)
            d["articles"] = len(set(titles))
        with stage("mixture_pairing") as d:
            d["rows"] = len(target_vectors)
            partners = cross_group_neighbours(target_vectors, titles, variants.cross_topic_neighbours)
            d["k"] = variants.cross_topic_neighbours
            d["partners_per_target"] = f"{(partners >= 0).sum(axis=1).mean():.2f}"
        del target_vectors, target_texts, partners

        with stage("long_tail") as d:
            d["rows"] = len(high) + len(distilled)
            ranked = {}
            for name, frame in (("original_high", high), ("distilled_high", distilled)):
                docs = [
                    long_tail_text(p, c, long_tail.prompt_prefix, long_tail.answer_prefix)
                    for p, c in zip(frame["prompt"], frame["completion"])
                ]
                raw, score = long_tail_scores(embedder.embed(docs), long_tail.k)
                ranked[name] = frame.assign(mean_knn_distance=raw, long_tail_score=score)
            d["k"] = long_tail.k

        with stage("training_sets") as d:
            rated_ok = rated.loc[rated["status"] == "ok", ["source", "sample_id", "prompt", "completion"]]
            candidates = {
                **ranked,
                "original_low": low.assign(member_ids=[[s] for s in low["sample_id"]]),
                "rated_pool": rated_ok.assign(member_ids=[[s] for s in rated_ok["sample_id"]]),
            }
            arms = training.arm_list()
            total = shortfall = 0
            for arm in arms:
                composed = compose_arm(
                    parse_arm(arm),
                    candidates,
                    training.size,
                    seed=training.seed,
                    original_rank=training.original_rank,
                    row_order=training.row_order,
                    shuffle_seed=training.shuffle_seed,
                    drop_duplicate_content=training.drop_duplicate_content,
                )
                rows = composed.rows.assign(arm=arm).reindex(columns=TRAINING_SET_COLUMNS)
                rows["long_tail_score"] = rows["long_tail_score"].astype("float64")
                warehouse.replace_partition(
                    "training_sets", rows, "arm", arm, column_types={**LIST_TYPES, "position": "BIGINT"}
                )
                total += len(rows)
                shortfall += sum(composed.shortfall.values())
            d["rows"] = total
            d.update(arms=len(arms), size=training.size, shortfall=shortfall)

    print(
        f"rehearsal rows={args.rows} seconds={time.perf_counter() - started:.1f} "
        f"peak_rss_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}",
        flush=True,
    )
    RSS.close()


if __name__ == "__main__":
    main()
