"""Benchmark: fitting the linear half of a wide-and-deep model on a recipe's rows.

  baseline  scikit-learn's TF-IDF + logistic regression over every feature column the model
            defines: the vocabulary and all the hashed bigram buckets (`model.ngram_buckets`);
  rnnlib    the pipeline `rnnlib.modeling.wide` fits: the same, the regression given only the
            columns the training rows use (a column no row uses would keep a zero weight).

One fit of each at the same C on the training split, timed in this run; how many test rows the
two label alike and each one's test accuracy (the same model, so the same up to the solver's
tolerance); then the whole `wide` stage as a training run builds it (C by validation or
cross-validation, the refit when the recipe refits), timed.

Usage: python benchmarks/bench_wide.py --config configs/tweets.yaml [--datasets ../shared/datasets]
                                       [--work-dir .rnnlib] [--C 30] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from sklearn.feature_extraction.text import TfidfTransformer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from rnnlib.config import PrepareConfig, TrainFlowConfig, load_config  # noqa: E402
from rnnlib.modeling import wide  # noqa: E402
from rnnlib.prepare.pipeline import prepare  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="a recipe (YAML)")
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--work-dir", default=".rnnlib")
    parser.add_argument("--C", type=float, default=30.0, help="the regression's C for the one-fit comparison")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    recipe = load_config(
        TrainFlowConfig, args.config, [f"source.mirror={args.datasets}", f"work_dir={args.work_dir}", *args.overrides]
    )
    data = prepare(PrepareConfig.model_validate(recipe.model_dump(include=set(PrepareConfig.model_fields))))
    tensors, buckets = Path(data.tensorize.path), recipe.model.ngram_buckets
    (train_rows, train_labels), (test_rows, test_labels) = wide._rows(tensors / "train"), wide._rows(tensors / "test")
    train, test = (wide.counts(rows, data.vocab_size, buckets) for rows in (train_rows, test_rows))
    print(
        f"{args.config.name}: {train.shape[0]} training rows, {len(data.labels)} classes, {train.shape[1]} feature "
        f"columns ({data.vocab_size} tokens, {buckets} bigram buckets); {os.cpu_count()} cores, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )

    timings, predictions = {}, {}
    plain = make_pipeline(TfidfTransformer(sublinear_tf=True), LogisticRegression(C=args.C, max_iter=2000))
    for name, pipeline in (("baseline", plain), ("rnnlib", wide._pipeline(args.C, seed=0))):
        start = time.perf_counter()
        pipeline.fit(train, train_labels)
        timings[name] = time.perf_counter() - start
        predictions[name] = pipeline.predict(test)
        accuracy = (predictions[name] == test_labels).mean()
        print(f"{name:9s} one fit at C={args.C:g}: {timings[name]:7.1f} s, test accuracy {accuracy:.4f}")
    agree = (predictions["baseline"] == predictions["rnnlib"]).mean()
    print(f"speed-up {timings['baseline'] / timings['rnnlib']:.1f}x; the two label {agree:.2%} of test rows alike")

    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        fitted = wide.fit_wide(
            tensors,
            data.vocab_size,
            len(data.labels),
            buckets,
            out_dir=Path(scratch),
            seed=recipe.train.seed,
            refit=recipe.train.refit,
        )
        print(f"the wide stage: {time.perf_counter() - start:.1f} s ({fitted})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
