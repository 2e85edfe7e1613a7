"""The `rnnlib` command line: `prepare`, `train` and `score` run their flows, each configured by
defaults < a YAML file < shortcut flags < `--set` overrides. (`retrain` runs as a deployment.)"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, get_args

from pydantic import ValidationError

from rnnlib.config import (
    ConfigError,
    EngineName,
    PrepareConfig,
    ScoreConfig,
    TrainFlowConfig,
    commented_yaml,
    field_docs,
    load_config,
)
from rnnlib.errors import InputError
from rnnlib_flows.reaper import start_reaper
from rnnlib_flows.render import (
    data_summary,
    evaluation_summary,
    markdown_table,
    search_summary,
    stage_table,
    trial_rows,
)

if TYPE_CHECKING:
    from rnnlib.modeling.pipeline import TrainedModel
    from rnnlib.prepare.pipeline import PreparedData
    from rnnlib.scoring.registry import Decision
    from rnnlib.stages import StageOutput

SHORTCUTS = {  # friendly flags for the most used fields; everything else via --set
    "dataset": ("source.dataset", "registered dataset: names, imdb, semeval2016_tweets, ag_news"),
    "mirror": ("source.mirror", "local mirror of the public datasets"),
    "work_dir": ("work_dir", "where stage outputs are written"),
    "dask_address": ("dask.address", "scheduler address of an existing Dask cluster"),
}


COMMANDS = {
    "prepare": ("ingest, preprocess, split, fit the vocabulary and write tensor shards", PrepareConfig),
    "train": ("prepare, then train a model, evaluate it on the test split and write its bundle", TrainFlowConfig),
}


ENGINE_CHOICES = list(get_args(EngineName))
ENGINE_HELP = (
    "what runs the model: PyTorch fp32/bf16/int8, ONNX Runtime (onnx, onnx-int8) or OpenVINO "
    "(openvino, openvino-bf16); auto (default): "
    "the fastest engine that labels rows as fp32 does, measured on this machine once"
)


def _common(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", metavar="FILE.yaml", help="YAML file with the configuration")
    command.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field (dotted key, YAML value)",
    )
    command.add_argument(
        "--print-config", action="store_true", help="print the resolved configuration as YAML and exit"
    )


def _flow_flag(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--flow",
        action="store_true",
        help="run the Prefect flow even when every stage's output is cached (by "
        "default such a rerun prints the cached result without starting Prefect)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_prepare_and_train, _add_tune, _add_score, _add_predict, _add_export, _add_models, _add_cache):
        add(sub)
    return parser


def _shortcuts(args: argparse.Namespace) -> dict[str, Any]:
    """The shortcut flags given, as settings (dotted key -> value)."""
    return {field: getattr(args, name) for name, (field, _) in SHORTCUTS.items() if getattr(args, name) is not None}


def _print_summary(data: PreparedData, stages: list[StageOutput]) -> None:
    print("\n".join(["", *stage_table(stages), "", *data_summary(data)]))
    print(f"vocabulary: {data.vocab.path}\ntensor shards: {data.tensorize.path}")


PREFECT_DEFAULTS = {
    # a fresh Prefect database takes longer to create than the ephemeral server's default start-up
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "rnnlib",  # per-epoch training logs
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name, value in PREFECT_DEFAULTS.items():  # before any flow imports Prefect
        os.environ.setdefault(name, value)
    try:
        return args.handler(args)
    except ValidationError as exc:  # one line per bad setting
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "config"
            print(f"rnnlib: error: {where}: {error['msg']}", file=sys.stderr)
        return 2
    except (InputError, ConfigError, OSError) as exc:  # bad input or config: no traceback
        print(f"rnnlib: error: {exc}", file=sys.stderr)
        return 2


def _pipeline_config(args: argparse.Namespace) -> PrepareConfig | TrainFlowConfig:
    """One file serves both commands: prepare ignores the model and train sections."""
    config = load_config(TrainFlowConfig, args.config, args.overrides, _shortcuts(args))
    config_class = COMMANDS[args.command][1]
    return config_class.model_validate(config.model_dump(include=set(config_class.model_fields)))


def _add_prepare_and_train(sub: Any) -> None:
    for name, (text, config_class) in COMMANDS.items():
        command = sub.add_parser(
            name,
            help=text,
            epilog=_settings_help(config_class),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            description=f"Run the {name} flow: {text}. Configuration: defaults (surnames recipe) < "
            f"--config file < shortcut flags < --set overrides. Every field of "
            f"rnnlib.config.{config_class.__name__} can be set, e.g. --set preprocess.level=word.",
        )
        _common(command)
        _flow_flag(command)
        command.set_defaults(handler=_prepare if name == "prepare" else _train)
        for flag, (_, flag_help) in SHORTCUTS.items():
            command.add_argument(f"--{flag.replace('_', '-')}", help=flag_help)


def _prepare(args: argparse.Namespace) -> int:
    config = _pipeline_config(args)
    if args.print_config:
        return _print_config(config)
    data = None if args.flow else _reused_prepare(config)
    if data is None:
        start_reaper()
        from rnnlib_tasks.dask_clients import close_clients, start_client

        if not args.flow:  # a stage has to be built, so the cluster will be needed
            start_client(config.dask)
        try:
            from rnnlib_flows.prepare import prepare_flow

            data = prepare_flow(config)
        finally:
            close_clients()  # a flow run that failed to start leaves no cluster behind
    _print_summary(data, data.stages)
    return 0


def _train(args: argparse.Namespace) -> int:
    config = _pipeline_config(args)
    if args.print_config:
        return _print_config(config)
    trained = None if args.flow or config.tracking.uri else _reused_training(config)
    if trained is None:
        start_reaper()
        from rnnlib_flows.train import train_flow

        trained = train_flow(config)
    _print_summary(trained.data, trained.stages)
    result = trained.evaluation
    print(f"\ntrained {len(trained.history)} epochs (best: {trained.best_epoch})")
    print("\n".join(evaluation_summary(result)))
    print(f"model bundle, model card, metrics.json and plots: {result.bundle}")
    return 0


def _add_export(sub: Any) -> None:
    export = sub.add_parser(
        "export",
        help="export a bundle's model for serving (ONNX)",
        description="Export a bundle's model as ONNX: (ids, lengths) -> probabilities, batch and "
        "length dynamic, the labels in the file's metadata. The export is run in ONNX Runtime and "
        "checked against PyTorch before it is kept. The text -> ids step is the consumer's: see "
        "the bundle's config.json (preprocess) and vocab.json.",
    )
    export.add_argument("bundle", help="model bundle, or a model registry folder (its current model)")
    export.add_argument("--format", choices=["onnx"], default="onnx")
    export.add_argument("-o", "--output", default="model.onnx", help="file to write (default: model.onnx)")
    export.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from rnnlib.modeling.bundle import locate_bundle
    from rnnlib.modeling.export import export_onnx

    print(f"wrote {export_onnx(locate_bundle(args.bundle), args.output)} (checked in ONNX Runtime)")
    return 0


def _add_tune(sub: Any) -> None:
    tune = sub.add_parser(
        "tune",
        help="search a recipe's settings on the validation split, then train and evaluate the best",
        epilog=_settings_help(TrainFlowConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the tune flow: Optuna's TPE sampler proposes the settings of tune.space, each "
        "trial trains on the prepared data (built once) and is judged on the validation split, bad "
        "trials are pruned by their per-epoch figure. The study is kept in work_dir/tune.db, so the "
        "same command started again resumes it. The best configuration is trained, evaluated on the "
        "test split beside the baseline, and written as YAML for `rnnlib train --config`.",
    )
    _common(tune)
    tune.add_argument("--trials", type=int, help="trials to run (default 20)")
    tune.add_argument("--minutes", type=float, help="start no trial after this many minutes")
    for flag, (_, flag_help) in SHORTCUTS.items():
        tune.add_argument(f"--{flag.replace('_', '-')}", help=flag_help)
    tune.set_defaults(handler=_tune)


def _tune(args: argparse.Namespace) -> int:
    budget = {"tune.trials": args.trials, "tune.minutes": args.minutes}
    flags = {**_shortcuts(args), **{key: value for key, value in budget.items() if value is not None}}
    config = load_config(TrainFlowConfig, args.config, args.overrides, flags)
    if args.print_config:
        return _print_config(config)
    start_reaper()
    from rnnlib_flows.tune import tune_flow

    search, trained, path = tune_flow(config)
    print("\n".join(["", *markdown_table(trial_rows(search)), "", *search_summary(search, trained.evaluation, path)]))
    return 0


def _reused_prepare(config: PrepareConfig) -> PreparedData | None:
    """The prepared data when every prepare stage is cached (no Prefect, no cluster), else None."""
    from rnnlib.prepare.pipeline import prepare
    from rnnlib.stages import reused

    return _announce_reuse(reused(lambda: prepare(config)), config.work_dir)


def _reused_training(config: TrainFlowConfig) -> TrainedModel | None:
    """The trained model when every stage is cached (an untracked run), else None."""
    from rnnlib.modeling.pipeline import train_model
    from rnnlib.stages import reused

    return _announce_reuse(reused(lambda: train_model(config)), config.work_dir)


def _announce_reuse(result: Any, work_dir: str) -> Any:
    if result is not None:
        print(
            f"every stage is reused from {work_dir}: nothing to run, so no flow run was started "
            "(--flow starts one anyway)"
        )
    return result


def _print_config(config: Any) -> int:
    print(commented_yaml(config), end="")
    return 0


def _settings_help(config_class: type) -> str:
    lines = [f"settings (--set KEY=VALUE, or in the --config file), of {config_class.__name__}:"]
    lines += [
        f"  {key:<34} {description} (default: {default})" for key, description, default in field_docs(config_class)
    ]
    return "\n".join(lines)


def _add_score(sub: Any) -> None:
    score = sub.add_parser(
        "score",
        help="apply a model bundle to files of new text, writing partitioned Parquet",
        epilog=_settings_help(ScoreConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the score flow: every row of the inputs is scored (label, probability, "
        "top-k) or rejected with its reason. A killed run started again resumes; a finished one is "
        "a no-op. Every field of rnnlib.config.ScoreConfig can be set with --set.",
    )
    score.add_argument("bundle", nargs="?", help="model bundle directory (from `rnnlib train`)")
    score.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="files, directories or globs (CSV/TSV/JSONL/Parquet/text, gz; local or URLs)",
    )
    score.add_argument("-o", "--output", help="output directory")
    score.add_argument("--format", help="input format (default: from each file's suffix)")
    score.add_argument("--text-column", action="append", help="text column/field (repeat to join several)")
    score.add_argument("--id-column", help="column/field holding each row's id (default: file:row)")
    score.add_argument("--encoding", help="text encoding of the inputs: a Python codec name, or auto (default utf-8)")
    score.add_argument("--top-k", type=int, help="labels with probabilities kept per row")
    score.add_argument("--engine", choices=ENGINE_CHOICES, help=ENGINE_HELP)
    score.add_argument("--overwrite", action="store_true", default=None, help="redo a finished run")
    score.add_argument("--dask-address", help="scheduler address of an existing Dask cluster")
    _common(score)
    score.set_defaults(handler=_score)


def _score_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given, as settings (dotted key -> value); every input gets the same options."""
    spec = {
        "format": args.format,
        "text_columns": args.text_column,
        "id_column": args.id_column,
        "encoding": args.encoding,
    }
    spec = {key: value for key, value in spec.items() if value}
    fields = {
        "bundle": args.bundle,
        "output": args.output,
        "top_k": args.top_k,
        "engine": args.engine,
        "overwrite": args.overwrite,
        "dask.address": args.dask_address,
        "inputs": [{"path": path, **spec} for path in args.inputs] or None,
    }
    return {key: value for key, value in fields.items() if value is not None}


def _score(args: argparse.Namespace) -> int:
    config = load_config(ScoreConfig, args.config, args.overrides, _score_flags(args))
    if args.print_config:
        return _print_config(config)
    start_reaper()
    from rnnlib.scoring.pipeline import ScoringFailed
    from rnnlib_flows.score import score_flow

    try:
        result = score_flow(config)
    except ScoringFailed as exc:
        print(f"rnnlib: scoring incomplete: {exc}\nrun the same command again to retry what failed", file=sys.stderr)
        return 1
    if result.already_complete:
        print(
            f"already complete: {result.rows} rows were scored into {config.output} by this "
            "bundle with these options; nothing to do (--overwrite redoes it)"
        )
        return 0
    print(
        f"\nrows {result.rows}: scored {result.scored}, rejected "
        f"{result.rejected or 'none'}, truncated {result.truncated}"
    )
    print(f"labels: {result.labels}")
    print(
        f"this run: {result.rows_scored_now} rows in {result.seconds:.1f} s "
        f"({result.rows_per_second:.0f} rows/s, {result.mb_per_second} MB/s)"
    )
    print(
        f"scores in {config.output}/scores, rejects in {config.output}/rejects, "
        f"accounting in {config.output}/_manifest.json"
    )
    return 0


def _add_predict(sub: Any) -> None:
    predict = sub.add_parser(
        "predict",
        help="label texts with a model bundle, in this process",
        description="Label texts with a bundle's model in this process: no Prefect server and no "
        "Dask cluster are started. Texts are the arguments, or one per line on standard input. "
        "The bundle's own preprocessing, vocabulary and maximum length are applied, as in `score`.",
    )
    predict.add_argument("bundle", help="model bundle, or a model registry folder (its current model)")
    predict.add_argument("texts", nargs="*", metavar="TEXT", help="texts (default: standard input, one per line)")
    predict.add_argument("--top-k", type=int, default=1, help="labels with probabilities per text")
    predict.add_argument(
        "--output", choices=["jsonl", "table"], default="jsonl", help="JSON lines (default) or an aligned table"
    )
    predict.add_argument("--engine", choices=ENGINE_CHOICES, default="auto", help=ENGINE_HELP)
    predict.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    predict.add_argument("--batch-size", type=int, help="texts per model batch (default by device)")
    predict.set_defaults(handler=_predict)


def _predict(args: argparse.Namespace) -> int:
    from rnnlib.scoring.predictor import Predictor

    predictor = Predictor.from_bundle(args.bundle, device=args.device, engine=args.engine, batch_size=args.batch_size)
    texts = args.texts or [line.rstrip("\r\n") for line in sys.stdin]
    predictions = predictor.predict(texts, top_k=args.top_k)
    for text, p in zip(texts, predictions):
        if args.output == "table":
            shown = text if len(text) <= 60 else text[:57] + "..."
            result = f"{p.label:<16} {p.probability:.3f}" if p.rejected is None else f"{'-':<16} {'-':>5}"
            print(f"{result}  {shown}" + (f"  (rejected: {p.rejected})" if p.rejected else ""))
        else:
            print(
                json.dumps(
                    {
                        "text": text,
                        "label": p.label,
                        "probability": p.probability,
                        "top_k": [{"label": label, "probability": prob} for label, prob in p.top_k],
                        "truncated": p.truncated,
                        "rejected": p.rejected,
                    },
                    ensure_ascii=False,
                )
            )
    return 0


def _add_models(sub: Any) -> None:
    models = sub.add_parser(
        "models",
        help="list a model registry, promote a model by hand, roll back",
        description="Every change is recorded in the registry's decisions.jsonl.",
    )
    models_sub = models.add_subparsers(dest="action", required=True)
    listing = models_sub.add_parser("list", help="the registry's bundles, the current one marked")
    listing.add_argument("registry")
    listing.set_defaults(handler=_models_list)
    promote = models_sub.add_parser("promote", help="make a bundle of the registry current")
    promote.add_argument("registry")
    promote.add_argument("version", help="a version that `rnnlib models list` shows")
    promote.set_defaults(handler=_models_promote)
    rollback = models_sub.add_parser("rollback", help="make the previous current model current again")
    rollback.add_argument("registry")
    rollback.set_defaults(handler=_models_rollback)


def _models_list(args: argparse.Namespace) -> int:
    from rnnlib.scoring import registry

    models = registry.list_models(args.registry)
    for m in models:
        accuracy = f"{m.accuracy:.4f}" if m.accuracy is not None else "-"
        print(f"{'*' if m.current else ' '} {m.version}  promoted {m.promoted_at or '-'}  accuracy {accuracy}")
    if not models:
        print(f"{args.registry}: no model yet")
    return 0


def _models_promote(args: argparse.Namespace) -> int:
    from rnnlib.scoring import registry

    return _print_decision(
        registry.set_current(args.registry, args.version, "promoted by hand (rnnlib models promote)")
    )


def _models_rollback(args: argparse.Namespace) -> int:
    from rnnlib.scoring import registry

    return _print_decision(registry.rollback(args.registry))


def _print_decision(decision: Decision) -> int:
    print(f"current model: {decision.candidate} (was {decision.current}); {decision.reason}")
    return 0


def _add_cache(sub: Any) -> None:
    cache = sub.add_parser(
        "cache",
        help="list or prune the stage outputs of a work dir",
        description="Stage outputs are kept by content key; prune removes the ones "
        "not used for a while, never one a running flow holds.",
    )
    cache_sub = cache.add_subparsers(dest="action", required=True)
    cache_list = cache_sub.add_parser("list", help="every stage output: size, age, complete")
    prune = cache_sub.add_parser("prune", help="remove stage outputs older than --older-than days")
    for command in (cache_list, prune):
        command.add_argument("--work-dir", default=".rnnlib")
    prune.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    prune.add_argument(
        "--keep-for",
        action="append",
        default=[],
        metavar="BUNDLE_OR_REGISTRY",
        help="keep the data these bundles (or a registry's bundles) were trained on",
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would be removed")
    cache_list.set_defaults(handler=_cache_list)
    prune.set_defaults(handler=_cache_prune)


def _cache_list(args: argparse.Namespace) -> int:
    from rnnlib import stages

    for o in stages.cached_outputs(args.work_dir):
        print(
            f"{o.stage:<11} {o.key}  {o.bytes / 2**20:9.1f} MiB  {o.age_days:7.2f} days"
            f"{'' if o.complete else '  (incomplete)'}"
        )
    return 0


def _cache_prune(args: argparse.Namespace) -> int:
    from rnnlib import stages
    from rnnlib.scoring.registry import trained_on

    keep = trained_on(args.keep_for)
    removed = stages.prune(args.work_dir, older_than_days=args.older_than, keep=keep, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for o in removed:
        print(f"{verb} {o.stage}/{o.key} ({o.bytes / 2**20:.1f} MiB, {o.age_days:.1f} days)")
    print(
        f"{verb} {len(removed)} outputs, {sum(o.bytes for o in removed) / 2**20:.1f} MiB; kept {len(keep)} keys in use"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
