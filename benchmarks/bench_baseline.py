"""Benchmark: a recipe's two peers, on exactly its rows: the TF-IDF + logistic regression
baseline and fastText.

Prepares the recipe's data (reused from the work folder when already prepared), fits
`rnnlib.modeling.baseline` on the training split (C chosen on validation) and fastText
(`fasttext_peer`: n-grams, epochs and rate chosen on validation), each fitted again on train +
validation when the recipe refits (`train.refit`), and scores the test split the recurrent model
is evaluated on. Prints accuracy, macro recall and macro F1 of each, and the
seconds each took. fastText needs the `bench` extra.

Usage: python benchmarks/bench_baseline.py --config configs/tweets.yaml [--datasets ../shared/datasets]
                                           [--work-dir .rnnlib] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rnnlib.config import PrepareConfig, TrainFlowConfig, load_config  # noqa: E402
from rnnlib.modeling.baseline import fit_baseline  # noqa: E402
from rnnlib.prepare.pipeline import prepare  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fasttext_peer import fit_fasttext  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="a recipe (YAML)")
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--work-dir", default=".rnnlib")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="fastText seeds")
    args = parser.parse_args()
    recipe = load_config(
        TrainFlowConfig, args.config, [f"source.mirror={args.datasets}", f"work_dir={args.work_dir}", *args.overrides]
    )
    cfg = PrepareConfig.model_validate(recipe.model_dump(include=set(PrepareConfig.model_fields)))
    data = prepare(cfg)
    start = time.perf_counter()
    refit = recipe.train.refit  # the peers use the rows the recipe's model does
    result = fit_baseline(
        data.preprocess.path, data.split.path, level=cfg.preprocess.level, labels=data.labels, refit=refit
    )
    print(
        f"{args.config.name}: {result.features} (C={result.c}{', refit on train + validation' if refit else ''}), "
        f"{result.train_rows} training rows, "
        f"{result.rows} test rows: accuracy {result.accuracy:.4f}, macro recall {result.macro.recall:.4f}, "
        f"macro F1 {result.macro.f1:.4f} ({time.perf_counter() - start:.0f} s)"
    )
    for seed in args.seeds:
        start = time.perf_counter()
        peer = fit_fasttext(
            data.preprocess.path,
            data.split.path,
            level=cfg.preprocess.level,
            labels=data.labels,
            seed=seed,
            refit=refit,
        )
        print(
            f"{args.config.name}: {peer.features}, seed {seed}: accuracy {peer.accuracy:.4f}, macro recall "
            f"{peer.macro.recall:.4f}, macro F1 {peer.macro.f1:.4f} ({time.perf_counter() - start:.0f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
