"""Benchmark: batch scoring of the 50,000 unlabelled IMDB reviews (`imdb/unsup.jsonl.gz`).

Every method scores the same reviews with the same model bundle (the preprocessing and
recurrent model of configs/imdb.yaml without its n-gram bag: word level, HTML stripped,
lower-cased, punctuation removed, a bidirectional GRU of 128 with max pooling; reviews truncated
at 400 tokens; untrained unless --bundle is given: speed does not depend on the weights), timed
in this run:

  baseline    the plain recipe (plain_recipes.score_jsonl): read the gzip JSONL in a Python loop, clean and
              tokenize each review with Python regexes, map tokens to ids with a dict, pad mini-batches of 64
              in file order and score them under torch.no_grad, in one process (torch's default
              threads), results to one Parquet file;
  kernel      the limit: the model alone over the same reviews, tokenised beforehand, in
              length-sorted batches of 64 with one thread, run by each scoring engine installed
              (fp32, int8, onnx, onnx-int8, openvino; bf16 only on a CPU with bf16 units, where
              PyTorch's is not emulated and far slower; openvino-bf16 where OpenVINO reports bf16
              support); each rnnlib run is shown as
              a share of its engine's limit (N workers: N times the one-thread limit);
  rnnlib-Nw   `rnnlib.scoring.pipeline.score` on a LocalCluster of N worker processes (one thread
              each): partitions, length-sorted batches, inference mode, per-partition Parquet;
              `-ENGINE`: run by that engine (`engine=...`); `-auto`: the engine `engine=auto`
              measured and chose on this machine (its calibration, once, is not timed).

On a GPU (--device auto finds one; cuda asks for it) every method runs its model there: the plain
recipe moves its model and batches to the GPU; the kernel limit is each GPU engine (fp32, bf16)
over batches of 1,024, the scoring default there, after a warm-up batch; the N workers share the
one GPU, so their limit is the kernel's, not N times it. --workers sets N (default: the cores).

With --memory GB the reviews are replicated into a JSONL file of at least GB gigabytes (in a
temporary folder, deleted afterwards) and scored by rnnlib with the same model, engine `auto`, on
all cores, sampling the peak resident memory of the driver and workers together, next to the same
for one copy: the dump rate of a large dump, its share of the chosen engine's kernel limit × workers
(the limit of one copy times the copies), and whether memory stays flat with input size.

With --cell lstm the untrained bundle's cell is an LSTM: ONNX Runtime quantises LSTMs to 8 bits
(onnx-int8) but not GRUs.

With --repeat N the rnnlib runs are repeated in N interleaved rounds, each round starting one
method later, and their medians shown (this machine drifts by more than the engines differ within
a run of a few minutes, and no method should always run last).

Usage: python benchmarks/bench_score.py [--datasets ../shared/datasets] [--rows 50000] [--repeat 1] [--engines a,b]
                                        [--bundle DIR] [--cell gru|lstm] [--memory 1.0]
                                        [--device auto|cpu|cuda] [--workers N]
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pyarrow as pa
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rnnlib.common.cluster import dask_client  # noqa: E402
from rnnlib.config import (  # noqa: E402
    DaskConfig,
    InputSpec,
    ModelConfig,
    PreprocessConfig,
    ScoreConfig,
)
from rnnlib.modeling.bundle import load_bundle, save_bundle  # noqa: E402
from rnnlib.modeling.device import cpu_has_native_bf16, default_batch_rows, pick_device  # noqa: E402
from rnnlib.modeling.engines import GRAPH_ENGINES, available_engines  # noqa: E402
from rnnlib.modeling.inference import predict_proba  # noqa: E402
from rnnlib.modeling.model import RNNClassifier  # noqa: E402
from rnnlib.prepare.tensorize import encode_ids  # noqa: E402
from rnnlib.prepare.text import tokenize  # noqa: E402
from rnnlib.prepare.vocab import (  # noqa: E402
    LABELS_FILE,
    SPECIALS,
    VOCAB_FILE,
    LabelEncoder,
    Vocabulary,
)
from rnnlib.scoring.output import ScoreReport  # noqa: E402
from rnnlib.scoring.partition import ScoringSettings, load_model, onnx_graph  # noqa: E402
from rnnlib.scoring.pipeline import score  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_recipes import score_jsonl  # noqa: E402

PREPROCESS = PreprocessConfig(level="word", strip_html=True, lowercase=True, keep_emoticons=True, punctuation="remove")
MODEL = ModelConfig(cell="gru", bidirectional=True, embedding_dim=128, hidden_size=128, dropout=0.5, pooling="max")
MAX_LENGTH = 400


def read_reviews(dump: Path, rows: int) -> list[dict]:
    with gzip.open(dump, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in itertools.islice(fh, rows)]


def make_bundle(reviews: list[dict], out: Path, model_cfg: ModelConfig) -> Path:
    """A bundle with the recipe's vocabulary (50,000 most frequent tokens of these reviews)."""
    tokens = tokenize(pa.array([r["text"] for r in reviews]), PREPROCESS)
    counts = Counter(pa.compute.list_flatten(tokens).cast(pa.string()).to_pylist())
    vocab = Vocabulary(SPECIALS + tuple(t for t, n in counts.most_common(50_000 - len(SPECIALS)) if n >= 2))
    vocab_dir = out / "vocab"
    vocab_dir.mkdir(parents=True)
    vocab.save(vocab_dir / VOCAB_FILE)
    LabelEncoder(("neg", "pos")).save(vocab_dir / LABELS_FILE)
    torch.manual_seed(0)
    torch.save(RNNClassifier(len(vocab.tokens), 2, model_cfg).state_dict(), out / "weights.pt")
    save_bundle(out / "bundle", out / "weights.pt", vocab_dir, PREPROCESS, model_cfg, MAX_LENGTH, {})
    return out / "bundle"


# ---------------------------------------------------------------- the limit
def pretokenised(reviews: list[dict], bundle_dir: Path) -> pa.ListArray:
    """The reviews as the bundle's ids, as scoring makes them (texts left with no token, which
    scoring rejects, dropped)."""
    bundle = load_bundle(bundle_dir)
    tokens = tokenize(pa.array([r["text"] for r in reviews]), bundle.preprocess)
    ids, lengths = encode_ids(tokens, bundle.vocab, bundle.max_length)
    return ids.filter(pa.array(lengths > 0))


def kernel_seconds(ids: pa.ListArray, bundle_dir: Path, engine: str, cache: Path, device: torch.device) -> float:
    """Seconds the model alone takes over pre-tokenised reviews, in length-sorted batches of the
    device's scoring size, run by `engine` in this process: on a CPU with one thread, the most a
    scoring worker could do; on a GPU after a warm-up batch (CUDA's and cuDNN's start-up), the
    most the GPU could do."""
    bundle = load_bundle(bundle_dir)
    graph = None
    if engine in GRAPH_ENGINES:
        graph = str(onnx_graph(ScoringSettings(str(bundle_dir), bundle.version, 1, MAX_LENGTH), cache, engine))
    classes, batch = len(bundle.labels.labels), default_batch_rows(device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        loaded = load_model(bundle_dir, device.type, engine, graph)
        if device.type != "cpu":
            predict_proba(loaded.engine, ids.slice(max(0, len(ids) - batch)), classes, batch)
        start = time.perf_counter()
        predict_proba(loaded.engine, ids, classes, batch)
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- rnnlib
def rnnlib_score(
    dump: Path,
    bundle_dir: Path,
    out: Path,
    client,
    engine: str = "fp32",
    cache: Path | None = None,
    device: str = "cpu",
) -> ScoreReport:
    config = ScoreConfig(
        bundle=str(bundle_dir),
        inputs=[InputSpec(path=str(dump), id_column="id")],
        output=str(out),
        device=device,
        engine=engine,
        engine_cache=str(cache or out.parent / "engines"),
    )
    manifest = score(config, client)
    assert manifest.complete and manifest.rows == manifest.scored + sum(manifest.rejected.values())
    return manifest


class PeakMemory:
    """Peak resident memory of this process and all its children together, sampled."""

    def __init__(self, interval: float = 0.1) -> None:
        self.peak, self.interval, self._stop = 0, interval, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def memory_profile(
    reviews: list[dict],
    gigabytes: float,
    tmp: Path,
    bundle_dir: Path,
    cache: Path,
    limits: dict[str, float],
    device: torch.device,
) -> None:
    one = tmp / "one.jsonl"
    with open(one, "w", encoding="utf-8") as fh:
        for r in reviews:
            fh.write(json.dumps(r) + "\n")
    big = tmp / "big.jsonl"
    with open(big, "wb") as fh:
        copy = 0
        while fh.tell() < gigabytes * 1e9:
            for r in reviews:  # a fresh id per copy: ids stay unique
                fh.write((json.dumps({"id": f"{copy}-{r['id']}", "text": r["text"]}) + "\n").encode())
            copy += 1
    workers = os.cpu_count() or 1
    parallel = workers if device.type == "cpu" else 1  # the workers share one GPU
    print(f"\nlarge dump, engine auto, peak resident memory (driver + {workers} workers):")
    with dask_client(DaskConfig(processes=True)) as client:
        for name, path, copies in (
            (f"1 copy ({one.stat().st_size / 1e6:.0f} MB)", one, 1),
            (f"{copy} copies ({big.stat().st_size / 1e9:.2f} GB)", big, copy),
        ):
            with PeakMemory() as peak:
                start = time.perf_counter()
                manifest = rnnlib_score(path, bundle_dir, tmp / f"out-{path.stem}", client, "auto", cache, device.type)
                seconds = time.perf_counter() - start
            limit = limits.get(manifest.engine)
            share = (
                "" if limit is None else f"  {limit * copies / parallel / seconds:.0%} of the {manifest.engine} limit"
            )
            print(
                f"  {name:<24} rows {manifest.rows:>9}  {seconds:7.1f} s  {manifest.rows / seconds:6.0f} docs/s"
                f"  peak RSS {peak.peak / 2**20:7.0f} MiB{share}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--bundle", type=Path, help="a trained bundle (default: an untrained IMDB-recipe one)")
    parser.add_argument(
        "--cell",
        choices=["gru", "lstm"],
        default="gru",
        help="the untrained bundle's cell (onnx-int8 quantises LSTMs only)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the rnnlib runs, interleaved (medians)")
    parser.add_argument("--memory", type=float, metavar="GB", help="also profile memory on a GB-sized input")
    parser.add_argument(
        "--engines", help="comma-separated engines to run beside fp32 and auto (default: every one installed)"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: the GPU if any")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="scoring workers (default: cores)")
    args = parser.parse_args()
    device, workers = pick_device(args.device), args.workers
    source = args.datasets / "imdb" / "unsup.jsonl.gz"
    reviews = read_reviews(source, args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dump = tmp / "reviews.jsonl.gz"  # exactly --rows reviews, so every method scores the same
        with gzip.open(dump, "wt", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in reviews)
        text_mb = sum(len(r["text"].encode()) for r in reviews) / 1e6
        model = MODEL.model_copy(update={"cell": args.cell})
        bundle_dir = args.bundle or make_bundle(reviews, tmp / "recipe", model)
        print(
            f"{len(reviews)} reviews ({text_mb:.0f} MB of text), model {model.cell} bidirectional "
            f"{model.hidden_size}, max length {MAX_LENGTH}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}, bf16 units: {cpu_has_native_bf16()}, "
            f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}"
        )
        start = time.perf_counter()
        rows = score_jsonl(dump, args.rows, bundle_dir, tmp, MAX_LENGTH, device.type)
        results = {"baseline": (time.perf_counter() - start, rows)}
        engines = [e for e in available_engines(device) if e != "bf16" or device.type != "cpu" or cpu_has_native_bf16()]
        if args.engines:
            engines = ["fp32", *(e for e in engines if e in args.engines.split(",") and e != "fp32")]
        ids = pretokenised(reviews, bundle_dir)
        cache = tmp / "engines"
        limits = {engine: kernel_seconds(ids, bundle_dir, engine, cache, device) for engine in engines}
        warm = tmp / "warm.jsonl"
        warm.write_text("".join(json.dumps(r) + "\n" for r in reviews[:600]))
        runs = [(1, "fp32"), (workers, "fp32"), *((workers, engine) for engine in engines[1:]), (workers, "auto")]
        chosen, rounds = {}, {}
        for round_ in range(args.repeat):
            # the methods interleaved, each round starting one method later: neither a drifting
            # machine nor a method's place in the order favours one
            for run_workers, engine in runs[round_ % len(runs) :] + runs[: round_ % len(runs)]:
                method = f"rnnlib-{run_workers}w" + ("" if engine == "fp32" else f"-{engine}")
                with dask_client(DaskConfig(n_workers=run_workers, processes=True)) as client:
                    threads = set(client.run(torch.get_num_threads).values())
                    # imports, the model loaded; auto's engine measured (on 512 of these rows) and cached
                    rnnlib_score(warm, bundle_dir, tmp / f"warm-{method}-{round_}", client, engine, cache, device.type)
                    start = time.perf_counter()
                    manifest = rnnlib_score(
                        dump, bundle_dir, tmp / f"out-{method}-{round_}", client, engine, cache, device.type
                    )
                    rounds.setdefault(method, []).append(time.perf_counter() - start)
                    results[method] = (statistics.median(rounds[method]), manifest.rows)
                    chosen[method] = manifest.engine
                    if engine == "auto" and round_ == 0:
                        print(f"auto chose {manifest.engine}: {manifest.engine_reason}")
                assert threads == {1}, threads
        if args.repeat > 1:
            print(f"{args.repeat} rounds, medians below; each round's seconds:")
            print(
                "\n".join(f"  {method:<24} {' '.join(f'{s:.2f}' for s in times)}" for method, times in rounds.items())
            )
        base = results["baseline"][0]
        print(
            f"{'method':<24} {'seconds':>8} {'docs/s':>8} {'MB/s':>6} {'vs baseline':>11} {'of the kernel limit':>19}"
        )
        for engine, seconds in limits.items():
            print(
                f"{'kernel-1t-' + engine:<24} {seconds:>8.2f} {len(reviews) / seconds:>8.0f} {'':>6} {'':>11} "
                f"{'(the limit)':>19}"
            )
        for (method, (seconds, n)), (run_workers, _) in zip(results.items(), [(workers, "fp32"), *runs]):
            limit = limits.get(chosen.get(method, ""))
            parallel = run_workers if device.type == "cpu" else 1  # the workers share one GPU
            share = "" if limit is None else f"{limit / parallel / seconds:>18.0%}"
            print(
                f"{method:<24} {seconds:>8.2f} {n / seconds:>8.0f} {text_mb / seconds:>6.2f} "
                f"{base / seconds:>10.2f}x {share:>19}"
            )
        many = f"rnnlib-{workers}w"
        print(f"scaling 1 -> {workers} workers: {results['rnnlib-1w'][0] / results[many][0]:.2f}x")
        auto = results[f"{many}-auto"][0]
        print(f"auto ({chosen[f'{many}-auto']}) vs {workers} workers fp32: {results[many][0] / auto:.2f}x")
        if args.memory:
            memory_profile(reviews, args.memory, tmp, bundle_dir, cache, limits, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
