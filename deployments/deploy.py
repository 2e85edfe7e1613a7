"""Create rnnlib's deployments on the Prefect server that PREFECT_API_URL points at, for a
process work pool (run `prefect worker start --pool POOL` from this repository to execute them):

  retrain/nightly             the `retrain` flow on a cron schedule; at most one run at a time
  score-new-files/on-arrival  the `score-new-files` flow, triggered by each `rnnlib.files.arrived`
                              event (see deployments/watcher.py) with the files it announces
  score/ad-hoc                the `score` flow, run on demand with a full ScoreConfig, confined to
                              the --score-root folders (default: the current one)

Usage: python -m rnnlib_deployments.deploy --pool rnnlib [--cron "0 2 * * *"] [--dataset names]
           [--config-file configs/names.yaml] [--registry models] [--output-root scored]
           [--set key=value ...] [--score-root DIR ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from uuid import UUID

from prefect import flow
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

from rnnlib_deployments.watcher import FILES_ARRIVED, RESOURCE_PREFIX

REPO = Path(__file__).resolve().parents[1]


def file_arrival_trigger() -> DeploymentEventTrigger:
    """One scoring run per announcement: its files (path, size and modification time each) as the
    `files` parameter, kept a list. Runs beyond the deployment's concurrency limit wait in its
    queue."""
    return DeploymentEventTrigger(
        name="new files to score",
        expect={FILES_ARRIVED},
        match={"prefect.resource.id": f"{RESOURCE_PREFIX}*"},
        for_each={"prefect.resource.id"},
        parameters={"files": "{{ event.payload.files }}"},
    )


def deploy(
    pool: str,
    cron: str,
    dataset: str | None,
    config_file: str | None,
    registry: str,
    output_root: str,
    overrides: list[str],
    scoring_concurrency: int = 1,
    score_roots: list[str] | None = None,
) -> dict[str, UUID]:
    """Create (or update) the three deployments; folders are made absolute, so every worker
    agrees on them whatever its working directory. `score_roots`: the folders an ad-hoc scoring
    run may read and write (default: the current folder)."""
    registry, output_root = str(Path(registry).resolve()), str(Path(output_root).resolve())
    score_roots = [str(Path(root).resolve()) for root in score_roots or ["."]]
    source = str(REPO)
    ids = {}
    ids["retrain/nightly"] = flow.from_source(source, "flows/retrain.py:retrain_flow").deploy(
        name="nightly",
        work_pool_name=pool,
        cron=cron,
        concurrency_limit=1,
        print_next_steps=False,
        parameters={"dataset": dataset, "config_file": config_file, "registry": registry, "overrides": overrides},
        description="Retrain on the latest data; promote the model only if it is no worse.",
    )
    ids["score-new-files/on-arrival"] = flow.from_source(source, "flows/score.py:score_new_files_flow").deploy(
        name="on-arrival",
        work_pool_name=pool,
        triggers=[file_arrival_trigger()],
        print_next_steps=False,
        concurrency_limit=scoring_concurrency,  # each run starts a cluster of one worker per core
        parameters={"registry": registry, "output_root": output_root},
        description="Score newly arrived files with the registry's current model.",
    )
    ids["score/ad-hoc"] = flow.from_source(source, "flows/score.py:score_flow").deploy(
        name="ad-hoc",
        work_pool_name=pool,
        print_next_steps=False,
        parameters={"roots": score_roots},
        description=f"Score inputs with a bundle (or registry) on demand, within {', '.join(score_roots)}.",
    )
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", required=True, help="process work pool name")
    parser.add_argument("--cron", default="0 2 * * *", help="retraining schedule (default: 02:00 daily)")
    parser.add_argument("--dataset", default=None, help="registered dataset to retrain on")
    parser.add_argument("--config-file", default=None, help="YAML recipe for retraining")
    parser.add_argument("--registry", default="models", help="model registry folder")
    parser.add_argument("--output-root", default="scored", help="where triggered scoring runs write")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="retraining config override (as `rnnlib train --set`)",
    )
    parser.add_argument(
        "--scoring-concurrency",
        type=int,
        default=1,
        help="most file-triggered scoring runs at once (the rest queue); each starts one Dask worker per core",
    )
    parser.add_argument(
        "--score-root",
        dest="score_roots",
        action="append",
        metavar="DIR",
        help="a folder ad-hoc scoring runs may read from and write to (repeat for "
        "more; default: the current folder); inputs, bundle and output elsewhere "
        "are refused",
    )
    args = parser.parse_args(argv)
    for name, deployment_id in deploy(
        args.pool,
        args.cron,
        args.dataset,
        args.config_file,
        args.registry,
        args.output_root,
        args.overrides,
        args.scoring_concurrency,
        args.score_roots,
    ).items():
        print(f"deployment {name}: {deployment_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
