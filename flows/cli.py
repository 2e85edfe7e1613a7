"""`rnnlib` command line: one subcommand per flow, each configured by a YAML file plus overrides."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

# A fresh Prefect database takes longer to create than the ephemeral server's default start-up
# timeout allows; these must be set before Prefect reads its settings.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "rnnlib")  # per-epoch training logs

from pydantic import ValidationError  # noqa: E402

from rnnlib.config import PrepareConfig, TrainFlowConfig, load_config  # noqa: E402
from rnnlib.errors import InputError  # noqa: E402

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
        command.add_argument("--config", metavar="FILE.yaml", help="YAML file with the configuration")
        command.add_argument("--set", dest="overrides", action="append", default=[],
                             metavar="KEY=VALUE", help="override one field (dotted key, YAML value)")
        for flag, (_, flag_help) in SHORTCUTS.items():
            command.add_argument(f"--{flag.replace('_', '-')}", help=flag_help)
        command.add_argument("--print-config", action="store_true",
                             help="print the resolved configuration as YAML and exit")
    return parser


def _overrides(args: argparse.Namespace) -> list[str]:
    shortcut = [f"{field}={json.dumps(getattr(args, name))}"
                for name, (field, _) in SHORTCUTS.items() if getattr(args, name) is not None]
    return shortcut + args.overrides


def _print_summary(summary: dict[str, Any]) -> None:
    print("\nstage        cached   seconds")
    for name, s in summary["stages"].items():
        print(f"{name:<12} {str(s['cached']):<8} {s['seconds']:>7.2f}")
    print(f"\nrows {summary['rows']}: kept {summary['kept']} {summary['splits']}; "
          f"rejected {summary['rejected'] or 'none'}")
    print(f"vocabulary: {summary['vocab_size']} tokens, {len(summary['labels'])} labels "
          f"in {summary['vocab']}")
    print(f"tensor shards: {summary['tensors']}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (InputError, ValidationError, OSError) as exc:  # bad input or config: no traceback
        print(f"rnnlib: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    # one file serves both commands: prepare ignores the model and train sections
    config = load_config(TrainFlowConfig, args.config, _overrides(args))
    config_class = COMMANDS[args.command][1]
    config = config_class.model_validate(config.model_dump(include=set(config_class.model_fields)))
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        return 0
    if args.command == "prepare":
        from flows.prepare import prepare_flow

        _print_summary(prepare_flow(config))
    else:
        from flows.train import train_flow

        summary = train_flow(config)
        _print_summary(summary)
        result = summary["evaluation"]
        print(f"\ntrained {len(summary['history'])} epochs (best: {summary['best_epoch']}); test split "
              f"({result['rows']} rows): accuracy {result['accuracy']:.4f}, "
              f"macro F1 {result['macro']['f1-score']:.4f}, macro recall {result['macro']['recall']:.4f}")
        print(f"model bundle, metrics.json and plots: {result['bundle']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
