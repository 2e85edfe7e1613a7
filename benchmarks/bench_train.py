"""Benchmark: training throughput (real tokens per second) for one pass over IMDB training rows.

  baseline  the tutorials' plain recipe: random batches padded to the batch maximum, fp32;
  rnnlib    batches streamed from the Parquet shards, length-sorted within pools (padding only
            to each batch's own maximum), bf16 on GPU;
  rnnlib-fp32  on GPU only: the same batches without bf16, to tell the two gains apart.

Same model (default: 2-layer bidirectional LSTM, hidden 256, embeddings 128), same rows, same
optimiser, measured in this run. On CPU use --rows to keep it short.

Usage: python benchmarks/bench_train.py [--datasets ../shared/datasets] [--rows 3000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from torch import nn

from rnnlib.common.storage import MANIFEST, write_json
from rnnlib.config import (
    InputSpec,
    ModelConfig,
    PrepareConfig,
    PreprocessConfig,
    SourceConfig,
    SplitConfig,
    TensorizeConfig,
    VocabConfig,
)
from rnnlib.modeling.batches import ShardBatches
from rnnlib.modeling.device import pick_device
from rnnlib.modeling.model import RNNClassifier
from rnnlib.prepare.pipeline import prepare
from rnnlib.prepare.tensorize import Shard, SplitTensors

REPO = Path(__file__).resolve().parents[1]


def prepare_imdb(datasets: Path, rows: int | None, work: Path) -> Path:
    """IMDB training reviews (val carved off as usual) as shards, truncated at 400 tokens."""
    root = datasets / "imdb" / "aclImdb"
    source = SourceConfig(
        inputs=[InputSpec(path=str(root / s), format="folder_per_class", split=s) for s in ("train", "test")]
    )
    data = prepare(
        PrepareConfig(
            source=source,
            work_dir=str(work),
            preprocess=PreprocessConfig(level="word", strip_html=True, lowercase=True, punctuation="remove"),
            split=SplitConfig(train=0.85, val=0.15, test=0.0),
            vocab=VocabConfig(min_freq=2, max_size=50000),
            tensorize=TensorizeConfig(max_length=400, shard_rows=rows or 50000),
        )
    )
    return Path(data.tensorize.path)


def run(model: nn.Module, batches, device: torch.device, amp: bool) -> tuple[float, int, int]:
    """(seconds, real tokens, token positions computed: real + padding)"""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    tokens = positions = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for ids, lengths, labels in batches:
        ids, lengths, labels = (
            ids.to(device, non_blocking=True),
            lengths.to(device),
            labels.to(device, non_blocking=True),
        )
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(ids, lengths)
        loss = nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tokens += int(lengths.sum())
        positions += ids.numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, tokens, positions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--rows", type=int, default=None, help="training rows (default: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()
    device = pick_device("auto")
    cfg = ModelConfig(cell="lstm", bidirectional=True, num_layers=2, hidden_size=args.hidden, embedding_dim=128)
    with tempfile.TemporaryDirectory() as tmp:
        shards = prepare_imdb(args.datasets, args.rows, Path(tmp))
        first = sorted((shards / "train").glob("shard-*.parquet"))
        table = pq.read_table(first if args.rows else shards / "train").slice(0, args.rows or None)
        train_split = SplitTensors.read(shards / "train")
        vocab_size = train_split.vocab_size
        sequences = [torch.tensor(s, dtype=torch.long) for s in table["ids"].to_pylist()]
        labels = torch.tensor(table["label"].to_pylist())

        def plain_batches():
            order = torch.randperm(len(sequences), generator=torch.Generator().manual_seed(0))
            for chunk in order.split(args.batch_size):
                seqs = [sequences[i] for i in chunk]
                yield (
                    nn.utils.rnn.pad_sequence(seqs, batch_first=True),
                    torch.tensor([len(s) for s in seqs]),
                    labels[chunk],
                )

        subset = Path(tmp) / "subset" / "train"
        subset.mkdir(parents=True)
        pq.write_table(table, subset / "shard-0.parquet")
        shard = Shard(file="shard-0.parquet", rows=table.num_rows)
        write_json(subset / MANIFEST, train_split.model_copy(update={"rows": table.num_rows, "shards": [shard]}))

        def rnnlib_batches():
            for batch in ShardBatches(subset, args.batch_size, pool_batches=50, seed=0):
                yield batch.ids.pin_memory() if device.type == "cuda" else batch.ids, batch.lengths, batch.labels

        results = {}
        methods = [("baseline", plain_batches, False), ("rnnlib", rnnlib_batches, device.type == "cuda")]
        if device.type == "cuda":
            methods.insert(1, ("rnnlib-fp32", rnnlib_batches, False))
        for name, batches, amp in methods:
            torch.manual_seed(0)
            model = RNNClassifier(vocab_size, 2, cfg).to(device)
            results[name] = run(model, batches(), device, amp)
    print(
        f"device {device}, {len(sequences)} training reviews (truncated at 400 tokens), "
        f"2-layer BiLSTM hidden {args.hidden}, batch {args.batch_size}; "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    base = results["baseline"][1] / results["baseline"][0]
    for name, (seconds, tokens, positions) in results.items():
        print(
            f"{name:<11} {seconds:8.2f} s  {tokens / seconds:10.0f} tokens/s  {tokens / seconds / base:5.2f}x"
            f"  ({positions / tokens:.2f} positions computed per real token)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
