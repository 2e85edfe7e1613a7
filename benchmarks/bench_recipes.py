"""Recipe quality: a config trained with several seeds, each evaluated on its dataset's official
test split beside the TF-IDF + logistic regression baseline fitted on the same training rows.
Prints each seed, then the mean and spread (sample standard deviation) of accuracy, macro F1 and
macro recall for the model and the baseline, and the training time. With --seed-pretraining a
seed also seeds what is learnt before training (`pretrain.seed`: the vectors, the language model),
so the spread covers their draw too, for a pretraining per seed.

Usage: python benchmarks/bench_recipes.py CONFIG.yaml [--seeds 0 1 2] [--set KEY=VALUE ...]
                                          [--seed-pretraining] [--mirror ../shared/datasets] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("NLTK_DATA", str(REPO.parent / "shared" / "nltk_data"))

from rnnlib.config import TrainFlowConfig, load_config  # noqa: E402
from rnnlib.modeling.pipeline import train_model  # noqa: E402

METRICS = ("accuracy", "macro F1", "macro recall")


def spread(values: list[float]) -> str:
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {deviation:.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seed-pretraining", action="store_true")
    parser.add_argument("--mirror", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--work-dir", default=str(REPO / ".rnnlib"))
    args = parser.parse_args()
    import torch

    print(
        f"{args.config} {' '.join(args.overrides)}; {os.cpu_count()} cores, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )
    model: dict[str, list[float]] = {m: [] for m in METRICS}
    baseline: dict[str, list[float]] = {m: [] for m in METRICS}
    minutes: list[float] = []
    chosen: list[float] = []  # with train.refit: the accuracy of the run chosen on validation
    for seed in args.seeds:
        config = load_config(
            TrainFlowConfig,
            args.config,
            [  # the seeds last: a --set train={...} keeps them
                f"source.mirror={args.mirror}",
                f"work_dir={args.work_dir}",
                *args.overrides,
                f"train.seed={seed}",
                *([f"pretrain.seed={seed}"] if args.seed_pretraining else []),
            ],
        )
        start = time.perf_counter()
        trained = train_model(config)
        runs = [*trained.fits, *trained.refits]  # every network of a seed ensemble, each fit and refit
        minutes.append(sum(r["seconds"] for run in runs for r in run.manifest.history) / 60)
        kept = ", ".join(f"{f.manifest.best_epoch} of {len(f.manifest.history)}" for f in trained.fits)
        result = trained.evaluation
        for name, value, base in result.comparison():
            if name in model:
                model[name].append(value)
                baseline[name].append(base)
        print(
            f"seed {seed}: model "
            + ", ".join(f"{m} {model[m][-1]:.4f}" for m in METRICS)
            + f" | baseline accuracy {baseline['accuracy'][-1]:.4f} | best epoch {kept},"
            f" {minutes[-1]:.1f} min training, {time.perf_counter() - start:.0f} s in all"
        )
        if (networks := result.ensemble_summary()) is not None:
            print(f"  {networks}")
        if (halves := result.blend_summary()) is not None:
            print(f"  {halves}")
        if (refit := result.refit_summary()) is not None:
            chosen.append(result.refit.chosen_test_accuracy)
            print(f"  {refit}")
    print(f"{'metric':<14} {'rnnlib (mean ± sd)':>20} {'TF-IDF+LR baseline':>20}")
    for m in METRICS:
        print(f"{m:<14} {spread(model[m]):>20} {spread(baseline[m]):>20}")
    if chosen:
        print(f"{'accuracy before the refit':<26} {spread(chosen):>8}")
    print(f"training time per seed: {spread(minutes)} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
