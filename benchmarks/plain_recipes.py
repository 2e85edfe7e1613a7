"""The plain recipes the benchmarks compare against, as a tutorial user writes them: no rnnlib
in the data path (only the model bundle is loaded with rnnlib, as a user loads their own model).
Runnable as a script, so that the command benchmark can time one as its own process.

Usage: python benchmarks/plain_recipes.py prepare-imdb DATASETS OUT [--stopwords regex|set]
       python benchmarks/plain_recipes.py score-jsonl DUMP BUNDLE ROWS OUT
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

import pandas as pd


def read_imdb_loop(root: Path) -> pd.DataFrame:
    rows = []
    for split_name in ("train", "test"):
        for label in ("pos", "neg"):
            folder = root / split_name / label
            for name in sorted(os.listdir(folder)):
                with open(folder / name, encoding="utf-8") as fh:
                    rows.append({"text": fh.read(), "label": label, "split": split_name})
    return pd.DataFrame(rows)


def read_jsonl_loop(path: Path) -> pd.DataFrame:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    return pd.DataFrame({"text": [r["text"] for r in rows], "split": "train"})


def prepare(frame_reader, out: Path, stopwords: str = "regex") -> int:
    """Read, clean (strip HTML, lower-case, drop punctuation and NLTK's English stop words),
    count a vocabulary on the training rows, map tokens to ids, write one Parquet file.
    `stopwords`: "regex", the seed tutorial's alternation of every stop word, or "set", the
    faster variant a user with a stop-word set writes (drop the tokens found in it)."""
    from nltk.corpus import stopwords as nltk_stopwords

    df = frame_reader()
    words = sorted(set(nltk_stopwords.words("english")))
    stop = re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b")
    stop_set = frozenset(words)

    def clean(text: str) -> list[str]:
        text = re.sub(r"<[^>]+>", " ", text).lower()
        text = re.sub(r"[^\w\s']+", " ", text)
        if stopwords == "regex":
            return [t.strip("'") for t in stop.sub(" ", text).split() if t.strip("'")]
        return [t for t in (t.strip("'") for t in text.split()) if t and t not in stop_set]

    df["tokens"] = df["text"].apply(clean)
    counter: Counter = Counter()
    for tokens in df.loc[df["split"] == "train", "tokens"]:
        counter.update(tokens)
    vocab = {"<PAD>": 0, "<UNK>": 1}
    for word, _ in counter.most_common():
        vocab[word] = len(vocab)
    df["ids"] = [[vocab.get(t, 1) for t in tokens] for tokens in df["tokens"]]
    df["length"] = df["ids"].apply(len)
    df[["ids", "length"]].to_parquet(out / "baseline.parquet")
    return len(df)


def score_jsonl(dump: Path, rows: int, bundle_dir: Path, out: Path, max_length: int = 400, device: str = "cpu") -> int:
    """Read the gzip JSONL in a Python loop, clean and tokenize each review with regexes, map
    tokens to ids with a dict, pad mini-batches of 64 in file order and score them under
    torch.no_grad in one process (torch's default threads; on a GPU, model and batches moved
    there); results to one Parquet file."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    from rnnlib.modeling.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    model, stoi = bundle.model.to(device).eval(), {t: i for i, t in enumerate(bundle.vocab.tokens)}
    labels = bundle.labels.labels

    def clean(text: str) -> list[str]:
        text = re.sub(r"<[^>]+>", " ", text).lower()
        return re.sub(r"[^\w\s']+", " ", text).split()[:max_length]

    results = []
    with gzip.open(dump, "rt", encoding="utf-8") as fh, torch.no_grad():
        for batch in iter(lambda: list(itertools.islice(fh, 64)), []):
            records = [json.loads(line) for line in batch]
            ids = [torch.tensor([stoi.get(t, 1) for t in clean(r["text"])] or [1]) for r in records]
            lengths = torch.tensor([len(i) for i in ids])
            probabilities = model(pad_sequence(ids, batch_first=True).to(device), lengths.to(device)).softmax(1).cpu()
            best = probabilities.max(1)
            results += [
                {"id": r["id"], "label": labels[int(i)], "probability": float(p)}
                for r, i, p in zip(records, best.indices, best.values)
            ]
            if len(results) >= rows:
                break
    pd.DataFrame(results[:rows]).to_parquet(out / "baseline.parquet")
    return min(len(results), rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="recipe", required=True)
    prep = sub.add_parser("prepare-imdb")
    prep.add_argument("datasets", type=Path)
    prep.add_argument("out", type=Path)
    prep.add_argument("--stopwords", choices=["regex", "set"], default="regex")
    score = sub.add_parser("score-jsonl")
    score.add_argument("dump", type=Path)
    score.add_argument("bundle", type=Path)
    score.add_argument("rows", type=int)
    score.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.recipe == "prepare-imdb":
        prepare(lambda: read_imdb_loop(args.datasets / "imdb" / "aclImdb"), args.out, args.stopwords)
    else:
        score_jsonl(args.dump, args.rows, args.bundle, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
