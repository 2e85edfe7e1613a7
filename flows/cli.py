"""The `rnnlib` command line: `prepare`, `train` and `score` run their flows, each configured by
defaults < a YAML file < shortcut flags < `--set` overrides. (`retrain` runs as a deployment.)"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

# A fresh Prefect database takes longer to create than the ephemeral server's default start-up
# timeout allows; these must be set before Prefect reads its settings.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "rnnlib")  # per-epoch training logs

from pydantic import ValidationError  # noqa: E402

from rnnlib.config import PrepareConfig, ScoreConfig, TrainFlowConfig, load_config  # noqa: E402
from rnnlib.errors import InputError  # noqa: E402

if TYPE_CHECKING:
    from rnnlib.prepare.pipeline import PreparedData
    from rnnlib.stages import StageOutput

SHORTCUTS = {  # friendly flags for the most used fields; everything else via --set
    "dataset": ("source.dataset", "registered dataset: names, imdb, semeval2016_tweets, ag_news"),
    "mirror": ("source.mirror", "local mirror of the public datasets"),
    "work_dir": ("work_dir", "where stage outputs are written"),
    "dask_address": ("dask.address", "scheduler address of an existing Dask cluster"),
}


COMMANDS = {
    "prepare": ("ingest, preprocess, split, fit the vocabulary and write tensor shards",
                PrepareConfig),
    "train": ("prepare, then train a model, evaluate it on the test split and write its bundle",
              TrainFlowConfig),
}


def _common(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", metavar="FILE.yaml", help="YAML file with the configuration")
    command.add_argument("--set", dest="overrides", action="append", default=[],
                         metavar="KEY=VALUE", help="override one field (dotted key, YAML value)")
    command.add_argument("--print-config", action="store_true",
                         help="print the resolved configuration as YAML and exit")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (text, config_class) in COMMANDS.items():
        command = sub.add_parser(
            name, help=text,
            description=f"Run the {name} flow: {text}. Configuration: defaults (surnames recipe) < "
            f"--config file < shortcut flags < --set overrides. Every field of "
            f"rnnlib.config.{config_class.__name__} can be set, e.g. --set preprocess.level=word.",
        )
        _common(command)
        for flag, (_, flag_help) in SHORTCUTS.items():
            command.add_argument(f"--{flag.replace('_', '-')}", help=flag_help)
    score = sub.add_parser(
        "score", help="apply a model bundle to files of new text, writing partitioned Parquet",
        description="Run the score flow: every row of the inputs is scored (label, probability, "
        "top-k) or rejected with its reason. A killed run started again resumes; a finished one is "
        "a no-op. Every field of rnnlib.config.ScoreConfig can be set with --set.",
    )
    score.add_argument("bundle", nargs="?", help="model bundle directory (from `rnnlib train`)")
    score.add_argument("inputs", nargs="*", metavar="INPUT",
                       help="files, directories or globs (CSV/TSV/JSONL/Parquet/text, gz; local or URLs)")
    score.add_argument("-o", "--output", help="output directory")
    score.add_argument("--format", help="input format (default: from each file's suffix)")
    score.add_argument("--text-column", action="append", help="text column/field (repeat to join several)")
    score.add_argument("--id-column", help="column/field holding each row's id (default: file:row)")
    score.add_argument("--top-k", type=int, help="labels with probabilities kept per row")
    score.add_argument("--overwrite", action="store_true", default=None, help="redo a finished run")
    score.add_argument("--dask-address", help="scheduler address of an existing Dask cluster")
    _common(score)
    return parser


def _score_overrides(args: argparse.Namespace) -> list[str]:
    spec: dict[str, Any] = {}
    if args.format:
        spec["format"] = args.format
    if args.text_column:
        spec["text_columns"] = args.text_column
    if args.id_column:
        spec["id_column"] = args.id_column
    fields = {"bundle": args.bundle, "output": args.output, "top_k": args.top_k,
              "overwrite": args.overwrite, "dask.address": args.dask_address,
              "inputs": [{"path": path, **spec} for path in args.inputs] or None}
    return [f"{key}={json.dumps(value)}" for key, value in fields.items() if value is not None] + args.overrides


def _overrides(args: argparse.Namespace) -> list[str]:
    shortcut = [f"{field}={json.dumps(getattr(args, name))}"
                for name, (field, _) in SHORTCUTS.items() if getattr(args, name) is not None]
    return shortcut + args.overrides


def _print_summary(data: PreparedData, stages: list[StageOutput]) -> None:
    print("\nstage        cached   seconds")
    for stage in stages:
        print(f"{stage.stage:<12} {str(stage.cached):<8} {stage.seconds:>7.2f}")
    print(f"\nrows {data.rows}: kept {data.kept} {data.splits}; rejected {data.rejected or 'none'}")
    print(f"vocabulary: {data.vocab_size} tokens, {len(data.labels)} labels in {data.vocab.path}")
    print(f"tensor shards: {data.tensorize.path}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (InputError, ValidationError, OSError) as exc:  # bad input or config: no traceback
        print(f"rnnlib: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "score":
        return _score(args)
    # one file serves both commands: prepare ignores the model and train sections
    config = load_config(TrainFlowConfig, args.config, _overrides(args))
    config_class = COMMANDS[args.command][1]
    config = config_class.model_validate(config.model_dump(include=set(config_class.model_fields)))
    if args.print_config:
        return _print_config(config)
    if args.command == "prepare":
        from rnnlib_flows.prepare import prepare_flow

        data = prepare_flow(config)
        _print_summary(data, data.stages)
    else:
        from rnnlib_flows.train import train_flow

        trained = train_flow(config)
        _print_summary(trained.data, trained.stages)
        result = trained.evaluation
        print(f"\ntrained {len(trained.history)} epochs (best: {trained.best_epoch}); test split "
              f"({result.rows} rows): accuracy {result.accuracy:.4f}, "
              f"macro F1 {result.macro.f1:.4f}, macro recall {result.macro.recall:.4f}")
        print(f"model bundle, metrics.json and plots: {result.bundle}")
    return 0


def _print_config(config: Any) -> int:
    import yaml

    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return 0


def _score(args: argparse.Namespace) -> int:
    config = load_config(ScoreConfig, args.config, _score_overrides(args))
    if args.print_config:
        return _print_config(config)
    from rnnlib_flows.score import ScoringFailed, score_flow

    try:
        result = score_flow(config)
    except ScoringFailed as exc:
        print(f"rnnlib: scoring incomplete: {exc}\nrun the same command again to retry what failed",
              file=sys.stderr)
        return 1
    if result.already_complete:
        print(f"already complete: {result.rows} rows were scored into {config.output} by this "
              "bundle with these options; nothing to do (--overwrite redoes it)")
        return 0
    print(f"\nrows {result.rows}: scored {result.scored}, rejected "
          f"{result.rejected or 'none'}, truncated {result.truncated}")
    print(f"labels: {result.labels}")
    print(f"this run: {result.rows_scored_now} rows in {result.seconds:.1f} s "
          f"({result.rows_per_second:.0f} rows/s, {result.mb_per_second} MB/s)")
    print(f"scores in {config.output}/scores, rejects in {config.output}/rejects, "
          f"accounting in {config.output}/_manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
