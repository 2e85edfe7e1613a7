"""Benchmark: ingest + preprocess + split + vocab + tensorize on real IMDB data.

Four ways over the same rows with the same preprocessing (lower-case, strip HTML, drop
punctuation, drop NLTK English stop words), each timed in this run:

  baseline   the tutorials' plain recipe (plain_recipes.prepare): read files in a Python loop
             into pandas, `.apply` of a regex function with a stop-word alternation regex, a
             `Counter` vocabulary, a per-row token -> index loop, one Parquet file;
             `baseline-set` drops the stop words by set lookup instead of the regex;
  rnnlib-1p  rnnlib's vectorised stage functions called in this process, without Dask, on one
             partition per input (the IMDB folders are two inputs: train and test);
  rnnlib     the pipeline as the flow runs it: partitions on a Dask LocalCluster.

Each method runs --repeat times (default 3), the methods interleaved; the table gives medians
and, in brackets, each round's ratio to the baseline of the same round.

Usage: python benchmarks/bench_prepare.py [--datasets ../shared/datasets] [--workers 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("NLTK_DATA", str(REPO.parent / "shared" / "nltk_data"))

from rnnlib.common.cluster import dask_client  # noqa: E402
from rnnlib.common.storage import partitions  # noqa: E402
from rnnlib.config import (  # noqa: E402
    DaskConfig,
    InputSpec,
    PrepareConfig,
    PreprocessConfig,
    SourceConfig,
)
from rnnlib.prepare.pipeline import prepare  # noqa: E402
from rnnlib.prepare.text import stopword_set  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_recipes import prepare as plain_prepare  # noqa: E402
from plain_recipes import read_imdb_loop, read_jsonl_loop  # noqa: E402

PREPROCESS = PreprocessConfig(level="word", strip_html=True, lowercase=True, punctuation="remove", stopwords=True)


# ---------------------------------------------------------------- rnnlib
def rnnlib_pipeline(source: SourceConfig, work: Path, client) -> int:
    """The library's prepare driver, input fingerprints (its cache key) included."""
    return prepare(PrepareConfig(source=source, preprocess=PREPROCESS, work_dir=str(work)), client).rows


def in_one_partition_per_input(source: SourceConfig, work: Path) -> int:
    rows = rnnlib_pipeline(source, work, None)
    ingested = next((work / "ingest").iterdir())
    assert len(partitions(ingested)) == len(source.inputs)
    return rows


def warm_up() -> None:
    """Import what the stages use and load the stop words, as the baseline's process already has."""
    import pyarrow.parquet  # noqa: F401

    stopword_set("english")


def timed(fn) -> tuple[float, int]:
    start = time.perf_counter()
    rows = fn()
    return time.perf_counter() - start, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of all three methods, interleaved; medians are reported"
    )
    args = parser.parse_args()
    imdb_root = args.datasets / "imdb" / "aclImdb"
    dump = args.datasets / "imdb" / "unsup.jsonl.gz"
    corpora = {
        "IMDB aclImdb folders (50,000 files)": (
            SourceConfig(
                inputs=[
                    InputSpec(path=str(imdb_root / s), format="folder_per_class", split=s) for s in ("train", "test")
                ]
            ),
            lambda: read_imdb_loop(imdb_root),
            True,
            sum(f.stat().st_size for f in imdb_root.rglob("*.txt")),
        ),
        "IMDB unlabelled JSONL dump (50,000 reviews)": (
            SourceConfig(inputs=[InputSpec(path=str(dump), label_column=None, id_column="id")]),
            lambda: read_jsonl_loop(dump),
            False,
            sum(len(json.loads(line)["text"].encode()) for line in gzip.open(dump, "rt", encoding="utf-8")),
        ),
    }
    warm_up()
    import torch

    print(f"{os.cpu_count()} cores, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(
        f"{'corpus':<46} {'method':<12} {'seconds':>8} {'rows/s':>9} {'MB/s':>6} {'vs baseline':>11}"
        f"  (each round's ratio)"
    )
    with dask_client(DaskConfig(n_workers=args.workers, processes=True)) as client:
        client.run(warm_up)
        for name, (source, reader, _labelled, text_bytes) in corpora.items():
            one = source.model_copy(update={"partition_rows": 10**9})
            methods = {
                "baseline": lambda tmp: plain_prepare(reader, tmp),
                "baseline-set": lambda tmp: plain_prepare(reader, tmp, "set"),
                "rnnlib-1p": lambda tmp: in_one_partition_per_input(one, tmp / "1p"),
                "rnnlib": lambda tmp: rnnlib_pipeline(source, tmp / "dask", client),
            }
            reader()  # warm the page cache so no method pays the first disk read
            results: dict[str, list[tuple[float, int]]] = {m: [] for m in methods}
            for _ in range(args.repeat):  # interleaved, so that drift of the machine hits all alike
                for method, fn in methods.items():
                    with tempfile.TemporaryDirectory() as tmp:
                        results[method].append(timed(lambda: fn(Path(tmp))))
            median = {m: statistics.median(s for s, _ in runs) for m, runs in results.items()}
            for method, runs in results.items():
                seconds, rows = median[method], runs[0][1]
                rounds = ", ".join(f"{b / s:.2f}" for (b, _), (s, _) in zip(results["baseline"], runs))
                print(
                    f"{name:<46} {method:<12} {seconds:>8.2f} {rows / seconds:>9.0f} "
                    f"{text_bytes / 1e6 / seconds:>6.1f} {median['baseline'] / seconds:>10.2f}x  ({rounds})"
                )
            print(f"{'':<46} dask vs one partition: {median['rnnlib-1p'] / median['rnnlib']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
