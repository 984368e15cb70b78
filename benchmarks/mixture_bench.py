"""MIXTURE throughput of the offline path: examples built per second for N paragraphs.

    python benchmarks/mixture_bench.py [--paragraphs 1000] [--variants 6] [--max-variants 6]
    python benchmarks/mixture_bench.py --paper-sizes      # the paper's 20 variants, clusters of 2-20

Materialises the mixture group (extractive writer, heuristic judge, MiniLM
embeddings for cross-topic merges and the rating library) into a temporary
home and prints each stage's seconds, examples/s, and the distribution of
variants per example. One figure per line.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["LM_MIXUP_PROFILE"] = "demo"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dagster as dg  # noqa: E402

import definitions  # noqa: E402
from resources import build_resources  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--paragraphs", type=int, default=1000)
    ap.add_argument("--variants", type=int, default=6)
    ap.add_argument("--max-variants", type=int, default=6)
    ap.add_argument("--paper-sizes", action="store_true", help="variants and cluster sizes of the paper profile")
    args = ap.parse_args()
    if args.paper_sizes:
        from resources.profiles import PROFILES

        args.variants = PROFILES["paper"]["mixture"]["variants_per_target"]
        args.max_variants = PROFILES["paper"]["mixture"]["max_variants"]
    assets = [a for a in definitions.defs.assets if set(a.group_names_by_key.values()) == {"mixture"}]
    config = {"ops": {"wiki_paragraphs": {"config": {"max_paragraphs": args.paragraphs}},
                      "mixture_variants": {"config": {"variants_per_target": args.variants}},
                      "mixture": {"config": {"max_variants": args.max_variants}}}}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        result = dg.materialize(assets, resources=build_resources(home=tmp), run_config=config)
        total = time.monotonic() - started
        mixture_meta = result.asset_materializations_for_node("mixture")[0].metadata
        examples = mixture_meta["dagster/row_count"].value
        sizes = mixture_meta["variants_per_example"].value
        mean_size = mixture_meta["mean_variants"].value
        variants = result.asset_materializations_for_node("mixture_variants")[0].metadata["dagster/row_count"].value
    print(f"paragraphs={args.paragraphs}")
    for event in result.get_step_success_events():
        print(f"stage {event.step_key} seconds={event.event_specific_data.duration_ms / 1000:.2f}")
    print(f"variants={variants}")
    print(f"examples={examples}")
    print(f"variants_per_example_range={min(map(int, sizes), default=0)}-{max(map(int, sizes), default=0)}")
    print(f"variants_per_example_mean={mean_size:.2f}")
    print(f"variants_per_example_histogram={sizes}")
    print(f"total_seconds={total:.1f}")
    print(f"examples_per_s={examples / total:.1f}")


if __name__ == "__main__":
    main()
