"""Hyperparameter search on the validation split: Optuna's TPE sampler proposes settings from
`tune.space`, each trial is a fit stage on the prepared data (built once, shared by every
trial, and cached by content, so a trial that was already run is not run again), and a trial
whose per-epoch validation figure falls behind the others' is pruned. The first trial is the
configuration's own settings. The study lives in a real
database (SQLite in the work dir by default), so a killed search resumes: its unfinished trials
are retried, and their fit stages resume from their checkpoints. The test split is never looked
at here: the best configuration is evaluated on it afterwards, beside the baseline, as any other.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from rnnlib.common.fingerprint import digest_json
from rnnlib.config import ConfigError, SearchRange, TrainFlowConfig, set_dotted
from rnnlib.modeling.pipeline import fit_stage, with_vectors
from rnnlib.modeling.train import MONITORED
from rnnlib.prepare.pipeline import PreparedData
from rnnlib.stages import StageOutput

if TYPE_CHECKING:
    import optuna
    from distributed import Client

BEST_CONFIG = "best.yaml"


class Trial(BaseModel):
    """One trial: its settings and how it ended (COMPLETE, PRUNED, FAIL, RUNNING)."""

    number: int
    state: str
    value: float | None  # the best validation figure it reached (its monitor's)
    params: dict[str, Any]
    epochs: int | None = None
    best_epoch: int | None = None
    seconds: float | None = None


class Search(BaseModel):
    """A search's trials and the best configuration found."""

    study: str
    storage: str
    monitor: str
    trials: list[Trial]
    best: Trial
    best_config: dict[str, Any]  # a TrainFlowConfig with the best trial's settings

    def config(self) -> TrainFlowConfig:
        return TrainFlowConfig.model_validate(self.best_config)


def with_settings(cfg: TrainFlowConfig, settings: dict[str, Any]) -> TrainFlowConfig:
    """`cfg` with dotted settings (`model.hidden_size`: 128, ...) put in."""
    data = cfg.model_dump(mode="json")
    for key, value in settings.items():
        set_dotted(data, key, value)
    return TrainFlowConfig.model_validate(data)


def suggest(trial: optuna.Trial, space: dict[str, SearchRange]) -> dict[str, Any]:
    """The trial's settings: a choice, an integer (both bounds written as integers) or a float."""
    settings = {}
    for key, r in space.items():
        if r.choices is not None:
            settings[key] = trial.suggest_categorical(key, r.choices)
        elif isinstance(r.low, int) and isinstance(r.high, int):
            settings[key] = trial.suggest_int(key, int(r.low), int(r.high), log=r.log)
        else:
            settings[key] = trial.suggest_float(key, r.low, r.high, log=r.log)
    return settings


def starting_point(cfg: TrainFlowConfig) -> dict[str, Any]:
    """The configuration's own values of the searched settings, those inside the space: tried
    first, so a search never ends below the configuration it started from (on validation)."""
    data = cfg.model_dump(mode="json")
    point = {}
    for key, r in cfg.tune.space.items():
        value: Any = data
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if r.choices is not None:
            inside = value in r.choices
        else:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            inside = number and r.low <= value <= r.high
        if inside:
            point[key] = value
    return point


def storage_url(cfg: TrainFlowConfig) -> str:
    if cfg.tune.storage:
        return cfg.tune.storage
    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(cfg.work_dir).resolve() / 'tune.db'}"


def study_name(cfg: TrainFlowConfig, data: PreparedData) -> str:
    """Named by what decides its trials' results: the data, the search space and every setting
    the search leaves alone; the same search started again continues the same study."""
    fixed = cfg.model_dump(mode="json", include={"model", "train", "pretrain"})
    space = cfg.tune.model_dump(mode="json", include={"space", "prune", "seed"})
    return cfg.tune.study or f"tune-{digest_json([data.tensorize.key, fixed, space])[:12]}"


def _study(cfg: TrainFlowConfig, name: str) -> optuna.Study:
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    # a trial whose process died stops beating: it is marked failed and tried again once
    with warnings.catch_warnings():  # heartbeats are experimental in Optuna, and stable since 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(
            storage_url(cfg),
            heartbeat_interval=30,
            grace_period=90,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
        if cfg.tune.prune
        else optuna.pruners.NopPruner()
    )
    _, higher = MONITORED[cfg.train.monitor]
    return optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        pruner=pruner,
        sampler=optuna.samplers.TPESampler(seed=cfg.tune.seed),
        direction="maximize" if higher else "minimize",
    )


def searched(cfg: TrainFlowConfig) -> TrainFlowConfig:
    """`cfg` as a search runs it: learnt vectors fix the embedding's size, so it is not searched;
    a language model is pretrained for one encoder shape, so a search refuses it."""
    if cfg.pretrain.encoder:
        raise ConfigError(
            "tune searches the classifier alone: turn pretrain.encoder off (or tune first, "
            "then pretrain the chosen encoder with rnnlib train)"
        )
    if cfg.pretrain.vectors and "model.embedding_dim" in cfg.tune.space:
        space = {k: v for k, v in cfg.tune.space.items() if k != "model.embedding_dim"}
        return cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"space": space})})
    return cfg


def run_trials(
    cfg: TrainFlowConfig, data: PreparedData, vectors: StageOutput | None, name: str, trials: int, seconds: float | None
) -> int:
    """Run up to `trials` trials of the study (one worker of a search); returns how many ran."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _study(cfg, name)
    column, _ = MONITORED[cfg.train.monitor]

    def objective(trial: optuna.Trial) -> float:
        settings = suggest(trial, cfg.tune.space)
        chosen = with_settings(cfg, settings)

        def report(record: dict[str, Any]) -> None:
            trial.report(record[column], record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {record['epoch']}: {column} {record[column]:.4f}")

        start = time.perf_counter()
        model = with_vectors(chosen.model, vectors, chosen.pretrain)
        fitted = fit_stage(data.tensorize, model=model, cfg=chosen.train, work_dir=cfg.work_dir, on_epoch=report)
        fit = fitted.manifest
        trial.set_user_attr("epochs", len(fit.history))
        trial.set_user_attr("best_epoch", fit.best_epoch)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        return fit.best_value

    before = len(study.trials)
    study.optimize(objective, n_trials=trials, timeout=seconds, catch=())
    return len(study.trials) - before


def tune(
    cfg: TrainFlowConfig, data: PreparedData, vectors: StageOutput | None = None, client: Client | None = None
) -> Search:
    """Search until the study holds `tune.trials` finished trials or `tune.minutes` pass: in this
    process, or `tune.parallel` workers on `client` sharing the study's database. `vectors`: the
    learnt word vectors every trial starts from (`pretrain.vectors`)."""
    import optuna

    cfg = searched(cfg)
    name = study_name(cfg, data)
    study = _study(cfg, name)
    with warnings.catch_warnings():  # experimental in Optuna, and what heartbeats are for
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a killed search's trials: failed, to be retried
    study.enqueue_trial(starting_point(cfg), skip_if_exists=True)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = cfg.tune.trials - sum(t.state in finished for t in study.trials)
    seconds = cfg.tune.minutes * 60 if cfg.tune.minutes else None
    if remaining > 0 and client is not None and cfg.tune.parallel > 1:
        share = math.ceil(remaining / cfg.tune.parallel)
        futures = [
            client.submit(run_trials, cfg, data, vectors, name, share, seconds, pure=False)
            for _ in range(cfg.tune.parallel)
        ]
        client.gather(futures)
    elif remaining > 0:
        run_trials(cfg, data, vectors, name, remaining, seconds)
    return summarise(cfg, study, name)  # its trials are read from the database, the workers' included


def summarise(cfg: TrainFlowConfig, study: optuna.Study, name: str) -> Search:
    import optuna

    trials = [
        Trial(
            number=t.number,
            state=t.state.name,
            value=t.value,
            params=t.params,
            epochs=t.user_attrs.get("epochs", len(t.intermediate_values) or None),
            best_epoch=t.user_attrs.get("best_epoch"),
            seconds=t.user_attrs.get("seconds"),
        )
        for t in study.trials
    ]
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        raise RuntimeError(f"study {name}: no trial completed ({len(trials)} tried)")
    best = next(t for t in trials if t.number == study.best_trial.number)
    return Search(
        study=name,
        storage=storage_url(cfg),
        monitor=cfg.train.monitor,
        trials=trials,
        best=best,
        best_config=with_settings(cfg, best.params).model_dump(mode="json"),
    )
