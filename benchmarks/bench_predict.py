"""Benchmark: a trained model used directly.

  start-up    `rnnlib predict BUNDLE Rossi` as a subprocess, from launch to its answer (median
              of --repeat runs): imports, bundle load and one prediction;
  throughput  `Predictor.predict` on 10,000 surnames in this process (torch's default threads),
              after one warm-up call.

The model: the surnames recipe (configs/names.yaml) trained for one epoch, unless --bundle.

Usage: python benchmarks/bench_predict.py [--datasets ../shared/datasets] [--bundle DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rnnlib.config import TrainFlowConfig, load_config  # noqa: E402
from rnnlib.modeling.pipeline import train_model  # noqa: E402
from rnnlib.scoring.predictor import Predictor  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        if bundle is None:
            cfg = load_config(
                TrainFlowConfig,
                REPO / "configs" / "names.yaml",
                [f"source.mirror={args.datasets}", f"work_dir={tmp}", "train.epochs=1", "evaluate.baseline=false"],
            )
            bundle = Path(train_model(cfg).evaluation.bundle)
        names = [
            line.strip()
            for f in sorted((args.datasets / "names").glob("*.txt"))
            for line in f.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        texts = (names * (10_000 // len(names) + 1))[:10_000]
        startups = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            run = subprocess.run(
                [sys.executable, "-m", "rnnlib_flows.cli", "predict", str(bundle), "Rossi"],
                capture_output=True,
                text=True,
                cwd=REPO,
                check=True,
            )
            startups.append(time.perf_counter() - start)
        predictor = Predictor.from_bundle(bundle)
        predictor.predict(texts[:100])
        start = time.perf_counter()
        predictions = predictor.predict(texts)
        seconds = time.perf_counter() - start
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} torch threads")
    print(
        f"rnnlib predict, launch to answer: median {statistics.median(startups):.2f} s "
        f"(runs: {', '.join(f'{s:.2f}' for s in startups)}); answer: {run.stdout.strip()[:80]}"
    )
    print(f"Predictor.predict: {len(predictions)} texts in {seconds:.2f} s, {len(predictions) / seconds:,.0f} texts/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
