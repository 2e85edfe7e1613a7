"""A short-text check set none of the recipes was tuned on: the opening words of IMDB reviews.

The small-data defaults were chosen on MR and the SemEval tweets; a user's own short texts are
neither. This writes `train.csv` and `test.csv` (columns `text`, `label`: pos or neg) from the
`aclImdb` layout of a mirror: each review's first `--words` words, its HTML tags dropped, a
seeded sample of the official training reviews and another of the official test reviews. Point
`configs/csv_example.yaml` at them (the commands are in `docs/results.md`), with or without the 50,000
unlabelled reviews as `source.unlabelled`, and compare with `bench_baseline.py` on the same rows.

Usage: python benchmarks/short_reviews.py --out DIR [--mirror ../shared/datasets] [--words 30]
                                          [--train 6000] [--test 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import random
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TAG = re.compile(r"<[^>]+>")


def openings(split_dir: Path, words: int) -> list[tuple[str, str]]:
    """(first words, label) of every review of one official split, in file-name order."""
    rows = []
    for label in ("neg", "pos"):
        for review in sorted((split_dir / label).glob("*.txt")):
            text = TAG.sub(" ", review.read_text(encoding="utf-8"))
            rows.append((" ".join(text.split()[:words]), label))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mirror", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--words", type=int, default=30)
    parser.add_argument("--train", type=int, default=6000, help="labelled training rows")
    parser.add_argument("--test", type=int, default=10000, help="test rows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for split, count in (("train", args.train), ("test", args.test)):
        rows = openings(args.mirror / "imdb" / "aclImdb" / split, args.words)
        rng.shuffle(rows)
        with open(args.out / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(rows[:count])
        print(f"{args.out / f'{split}.csv'}: {min(count, len(rows))} of {len(rows)} {split} reviews")


if __name__ == "__main__":
    main()
