"""Benchmark: the model's own speed, the limit an end-to-end run can approach.

Three measurements, each printed with this CPU's capability (AVX2, AVX512, ... and whether it
has bf16 units: the figures differ by machine):

  forward     the IMDB recipe's model (word level, bidirectional GRU of 128, max pooling) on
              pre-tokenised, length-sorted batches of real review lengths (`imdb/unsup.jsonl.gz`,
              truncated at 400 tokens), in inference mode with one torch thread: fp32 by batch
              size, int8 and bf16 at 64 rows; tokens/s and GFLOP/s (the GRU's multiply-adds counted as two).
  packing     one training step of a 2-layer BiLSTM on 64 x 400 tokens: padded batches (what
              rnnlib trains on) against PyTorch's packed sequences.
  agreement   a surnames model (configs/names.yaml, trained for --epochs) scored on its test
              split in int8 and bf16 against fp32: test accuracy, predictions unchanged and the
              largest probability change.

Usage: python benchmarks/bench_kernel.py [--datasets ../shared/datasets] [--rows 5000] [--epochs 2]
                                         [--skip packing,agreement]
"""

from __future__ import annotations

import argparse
import copy
import gzip
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rnnlib.config import ModelConfig, PreprocessConfig, TrainFlowConfig, load_config  # noqa: E402
from rnnlib.modeling.batches import collate  # noqa: E402
from rnnlib.modeling.bundle import load_bundle  # noqa: E402
from rnnlib.modeling.device import cpu_has_native_bf16, for_inference  # noqa: E402
from rnnlib.modeling.inference import predict_proba  # noqa: E402
from rnnlib.modeling.model import RNNClassifier  # noqa: E402
from rnnlib.modeling.pipeline import train_model  # noqa: E402
from rnnlib.prepare.text import tokenize  # noqa: E402

IMDB_MODEL = ModelConfig(cell="gru", bidirectional=True, embedding_dim=128, hidden_size=128, pooling="max")
PREPROCESS = PreprocessConfig(level="word", strip_html=True, lowercase=True, punctuation="remove")
MAX_LENGTH, VOCAB = 400, 50_000


def gru_flops_per_token(cfg: ModelConfig) -> float:
    """Multiply-adds of the recurrent layers per token (x2 for FLOPs): three gates, each an
    input and a hidden projection, per direction and layer."""
    directions = 2 if cfg.bidirectional else 1
    flops = 0.0
    for layer in range(cfg.num_layers):
        inputs = cfg.embedding_dim if layer == 0 else cfg.hidden_size * directions
        flops += directions * 3 * 2 * cfg.hidden_size * (inputs + cfg.hidden_size)
    return flops


def review_lengths(datasets: Path, rows: int) -> np.ndarray:
    with gzip.open(datasets / "imdb" / "unsup.jsonl.gz", "rt", encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in itertools.islice(fh, rows)]
    lengths = pc.list_value_length(tokenize(pa.array(texts), PREPROCESS)).to_numpy(zero_copy_only=False)
    return np.clip(lengths, 1, MAX_LENGTH)


def forward_rate(lengths: np.ndarray, batch_size: int, precision: str) -> float:
    """Tokens per second of the model alone over length-sorted batches (random ids: the speed
    does not depend on them)."""
    torch.manual_seed(0)
    model = for_inference(RNNClassifier(VOCAB, 2, IMDB_MODEL).eval(), precision, torch.device("cpu"))
    rng = np.random.default_rng(0)
    ordered = np.sort(lengths)
    ids = pa.array([rng.integers(2, VOCAB, n, dtype=np.int32) for n in ordered], pa.list_(pa.int32()))
    batches = [
        collate(ids.slice(s, batch_size), np.zeros(min(batch_size, len(ids) - s), np.int64))
        for s in range(0, len(ids), batch_size)
    ]
    with torch.inference_mode():
        model(batches[0].ids, batches[0].lengths)  # warm-up
        start = time.perf_counter()
        for batch in batches:
            model(batch.ids, batch.lengths)
    return float(lengths.sum()) / (time.perf_counter() - start)


def packing_step_seconds() -> tuple[float, float]:
    """(padded, packed) seconds of one training step, same model, same 64 x 400 batch."""
    torch.manual_seed(0)
    lstm = nn.LSTM(128, 256, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(64, MAX_LENGTH, 128)
    lengths = torch.randint(50, MAX_LENGTH + 1, (64,)).sort(descending=True).values
    lengths[0] = MAX_LENGTH

    def step(inputs) -> float:
        start = time.perf_counter()
        output = lstm(inputs)[0]
        output = output.data if hasattr(output, "batch_sizes") else output
        output.sum().backward()
        return time.perf_counter() - start

    step(x)  # warm-up
    return step(x), step(pack_padded_sequence(x, lengths, batch_first=True))


def agreement(datasets: Path, epochs: int) -> dict[str, float]:
    """bf16 against fp32 on a trained surnames model's test split."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            TrainFlowConfig,
            REPO / "configs" / "names.yaml",
            [f"source.mirror={datasets}", f"work_dir={tmp}", f"train.epochs={epochs}"],
        )
        trained = train_model(cfg)
        bundle = load_bundle(trained.evaluation.bundle)
        shards = pq.read_table(f"{trained.data.tensorize.path}/test")
        ids, n = shards["ids"].combine_chunks(), len(bundle.labels.labels)
        cpu = torch.device("cpu")
        fp32 = predict_proba(bundle.model, ids, n, 64)
        truth = shards["label"].to_numpy()
        result = {"rows": len(fp32), "fp32": float((fp32.argmax(1) == truth).mean())}
        for precision in ("int8", "bf16"):
            other = predict_proba(for_inference(copy.deepcopy(bundle.model), precision, cpu), ids, n, 64)
            result[precision] = {
                "accuracy": float((other.argmax(1) == truth).mean()),
                "unchanged": float((fp32.argmax(1) == other.argmax(1)).mean()),
                "max_probability_change": float(np.abs(fp32 - other).max()),
            }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--rows", type=int, default=5000, help="reviews whose lengths make the batches")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of the agreement model")
    parser.add_argument("--skip", default="", help="comma-separated: forward, packing, agreement")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(1)
    print(
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, bf16 units: {cpu_has_native_bf16()}; "
        f"torch {torch.__version__}, 1 thread"
    )
    if "forward" not in skip:
        lengths = review_lengths(args.datasets, args.rows)
        flops = gru_flops_per_token(IMDB_MODEL)
        print(
            f"\nforward: {len(lengths)} reviews, {int(lengths.sum()):,} tokens (mean {lengths.mean():.0f}); "
            f"{flops / 1e6:.2f} MFLOP per token in the GRU"
        )
        print(f"{'precision':<10} {'batch':>6} {'tokens/s':>10} {'GFLOP/s':>8}")
        for name, sizes in (("fp32", (64, 256, 1024)), ("int8", (64,)), ("bf16", (64,))):
            for batch_size in sizes:
                rate = forward_rate(lengths, batch_size, name)
                print(f"{name:<10} {batch_size:>6} {rate:>10,.0f} {rate * flops / 1e9:>8.1f}")
    if "packing" not in skip:
        padded, packed = packing_step_seconds()
        print(
            f"\npacking: one training step, 2-layer BiLSTM 256, 64 x {MAX_LENGTH}: padded {padded:.2f} s, "
            f"packed {packed:.2f} s ({packed / padded:.1f}x)"
        )
    if "agreement" not in skip:
        result = agreement(args.datasets, args.epochs)
        print(
            f"\nagreement: surnames model ({args.epochs} epochs), {result['rows']} test rows, "
            f"fp32 test accuracy {result['fp32']:.4f}"
        )
        for precision in ("int8", "bf16"):
            r = result[precision]
            print(
                f"  {precision}: test accuracy {r['accuracy']:.4f}, {r['unchanged']:.1%} of predictions "
                f"unchanged, probabilities within {r['max_probability_change']:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
