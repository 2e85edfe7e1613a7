"""The modelling stages, each cached by content, and `train_model()`, which runs them after the
prepare stages.

    (prepare) -> [vectors] -> [language model] -> fit -> [refit], [wide], baseline -> evaluate
    (bundle, metrics beside the baseline's, plots, card)

A seed ensemble (`model.ensemble`) fits (and refits) each of its networks as a stage of its own,
keyed as that one network with its seed, so growing an ensemble reuses the networks it had. Each
network also learns its own word vectors (and language model) from its own pretraining seed:
averaging over that draw too is what makes the ensemble steadier than one network.

As in `rnnlib.prepare.pipeline`, the Prefect tasks wrap the `*_stage` functions one each.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from pydantic import BaseModel

from rnnlib.common.storage import MANIFEST, building, durable_replace, write_json
from rnnlib.config import (
    EmbeddingsConfig,
    ModelConfig,
    PreprocessConfig,
    PretrainConfig,
    TrainConfig,
    TrainFlowConfig,
)
from rnnlib.modeling.baseline import BaselineResult, fit_baseline
from rnnlib.modeling.bundle import save_bundle
from rnnlib.modeling.card import CARD, model_card
from rnnlib.modeling.evaluate import Evaluation, Member, Refit, Selection, accuracy_on_test, evaluate_bundle
from rnnlib.modeling.initial import initial_identity
from rnnlib.modeling.language_model import ENCODER_FILE, LanguageModelManifest, pretrain_encoder
from rnnlib.modeling.model import RNNClassifier, SeedEnsemble, classifier, member_config
from rnnlib.modeling.pretrain import VECTORS_FILE, VectorsManifest, train_vectors
from rnnlib.modeling.train import BEST, FitManifest, RefitManifest, refit, train
from rnnlib.modeling.wide import REFIT_WIDE_FILE, WIDE_FILE, Blend, WideFit, choose_blend, fit_wide, load_wide
from rnnlib.prepare.pipeline import PreparedData, prepare
from rnnlib.prepare.tensorize import TensorizeManifest
from rnnlib.stages import IN_PROCESS, InProcess, M, StageOutput, holding_outputs, run_stage

if TYPE_CHECKING:
    from distributed import Client

BUNDLE = "bundle"
# what the pretraining stages read of the pretrain and model options: a change to another re-runs
# only the stages that read it
VECTORS_OPTIONS = {"epochs", "min_words", "window", "min_count", "min_n", "max_n", "workers"}
LANGUAGE_MODEL_OPTIONS = {"encoder_epochs", "encoder_lr", "encoder_max_texts", "heldout_every"}
ENCODER_OPTIONS = {
    "cell",
    "embedding_dim",
    "hidden_size",
    "num_layers",
    "bidirectional",
    "dropout",
    "embedding_dropout",
    "unk_dropout",
    "embeddings",
}


def fit_stage(
    tensors: StageOutput[TensorizeManifest],
    *,
    model: ModelConfig,
    cfg: TrainConfig,
    work_dir: str,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> StageOutput[FitManifest]:
    """Train. Checkpoints live in `<key>.partial/` until training ends, so a killed run that is
    started again resumes from its last epoch. `on_epoch` watches the epochs (not in the key)."""

    model = member_config(model)  # the linear half is fitted on its own: toggling it reuses this
    cfg = cfg.model_copy(update={"refit": False})  # a later stage: toggling it reuses this
    params = {
        "tensors": tensors,
        "model": model,
        "cfg": cfg,
        "work_dir": work_dir,
        "initial": initial_identity(model.embeddings, cfg.init_from, model.encoder),
    }
    return run_stage(
        "fit",
        params,
        resumable(lambda partial: train(tensors.path, out_dir=partial, model=model, cfg=cfg, on_epoch=on_epoch)),
        code=[train],
        manifest=FitManifest,
    )


def refit_stage(
    tensors: StageOutput[TensorizeManifest],
    fitted: StageOutput[FitManifest],
    *,
    model: ModelConfig,
    cfg: TrainConfig,
    work_dir: str,
) -> StageOutput[RefitManifest]:
    """Train again on train + validation for the epochs `fitted` kept (see `refit`); resumes
    from its checkpoints like the fit."""
    model = member_config(model)
    params = {
        "tensors": tensors,
        "fitted": fitted,
        "model": model,
        "cfg": cfg,
        "work_dir": work_dir,
        "initial": initial_identity(model.embeddings, cfg.init_from, model.encoder),
    }
    return run_stage(
        "refit",
        params,
        resumable(lambda partial: refit(tensors.path, out_dir=partial, model=model, cfg=cfg, chosen=fitted.manifest)),
        code=[refit, train],
        manifest=RefitManifest,
    )


def resumable(make: Callable[[Path], M]) -> Callable[[Path], M]:
    """A build that checkpoints: `make` works in `<key>.partial/`, which is renamed into place
    once it ends, so a killed run started again finds its checkpoints there and resumes."""

    def build(out: Path) -> M:
        partial = out.with_name(out.name + ".partial")
        manifest = make(partial)
        write_json(partial / MANIFEST, manifest)
        if out.exists():  # an incomplete leftover
            shutil.rmtree(out)
        durable_replace(partial, out)
        return manifest

    return build


def vectors_stage(
    data: PreparedData, *, cfg: PretrainConfig, dim: int, seed: int, work_dir: str
) -> StageOutput[VectorsManifest]:
    """Word vectors from the training split and the unlabelled text (see `pretrain`)."""
    unlabelled = [data.unlabelled.preprocess] if data.unlabelled else []
    params = {
        "tokens": data.preprocess,
        "splits": data.split,
        "vocab": data.vocab,
        "unlabelled": unlabelled,
        "cfg": cfg.model_dump(include=VECTORS_OPTIONS),
        "dim": dim,
        "seed": seed,
        "work_dir": work_dir,
    }
    return run_stage(
        "vectors",
        params,
        lambda out: train_vectors(
            data.preprocess.path,
            data.split.path,
            data.vocab.path,
            [u.path for u in unlabelled],
            out_dir=out,
            cfg=cfg,
            dim=dim,
            seed=seed,
        ),
        code=[train_vectors],
        manifest=VectorsManifest,
    )


def with_vectors(model: ModelConfig, vectors: StageOutput[VectorsManifest] | None, cfg: PretrainConfig) -> ModelConfig:
    """The model configuration that starts its embedding from learnt vectors, if there are any."""
    if vectors is None:
        return model
    embeddings = EmbeddingsConfig(path=str(Path(vectors.path) / VECTORS_FILE), format="word2vec", freeze=cfg.freeze)
    return model.model_copy(update={"embeddings": embeddings})


def language_model_stage(
    data: PreparedData,
    *,
    model: ModelConfig,
    cfg: PretrainConfig,
    max_length: int | None,
    batch_size: int,
    seed: int,
    device: str,
    work_dir: str,
) -> StageOutput[LanguageModelManifest]:
    """The encoder pretrained as a language model on the training split and the unlabelled text
    (see `language_model`), starting from the learnt vectors if `model` has them. Checkpoints
    live in `<key>.partial/` until it ends, so a killed run resumes from its last epoch."""
    unlabelled = [data.unlabelled.preprocess] if data.unlabelled else []
    params = {
        "tokens": data.preprocess,
        "splits": data.split,
        "vocab": data.vocab,
        "unlabelled": unlabelled,
        "model": model.model_dump(include=ENCODER_OPTIONS),
        "cfg": cfg.model_dump(include=LANGUAGE_MODEL_OPTIONS),
        "max_length": max_length,
        "batch_size": batch_size,
        "seed": seed,
        "work_dir": work_dir,
        "initial": initial_identity(model.embeddings, None),
    }
    return run_stage(
        "language_model",
        params,
        resumable(
            lambda partial: pretrain_encoder(
                data.preprocess.path,
                data.split.path,
                data.vocab.path,
                [u.path for u in unlabelled],
                out_dir=partial,
                model=model,
                cfg=cfg,
                max_length=max_length,
                batch_size=batch_size,
                seed=seed,
                device=device,
            )
        ),
        code=[pretrain_encoder],
        manifest=LanguageModelManifest,
    )


def with_encoder(model: ModelConfig, language_model: StageOutput[LanguageModelManifest] | None) -> ModelConfig:
    """The model configuration that starts its encoder from the language model, if there is one."""
    if language_model is None:
        return model
    return model.model_copy(update={"encoder": str(Path(language_model.path) / ENCODER_FILE)})


class Pretrained(NamedTuple):
    """What one network starts from: its word vectors and language model (None where off), and
    the model configuration that reads them."""

    vectors: StageOutput[VectorsManifest] | None
    language_model: StageOutput[LanguageModelManifest] | None
    model: ModelConfig


def pretrain_stages(data: PreparedData, cfg: TrainFlowConfig, runner: InProcess, *, seed: int) -> Pretrained:
    """The pretraining stages that `cfg.pretrain` turns on, from `seed`: the vectors, then the
    language model starting from them."""
    vectors = (
        runner.run(vectors_stage, data, cfg=cfg.pretrain, dim=cfg.model.embedding_dim, seed=seed, work_dir=cfg.work_dir)
        if cfg.pretrain.vectors
        else None
    )
    model = with_vectors(cfg.model, vectors, cfg.pretrain)
    language_model = (
        runner.run(
            language_model_stage,
            data,
            model=model,
            cfg=cfg.pretrain,
            max_length=cfg.tensorize.max_length,
            batch_size=cfg.train.batch_size,
            seed=seed,
            device=cfg.train.device,
            work_dir=cfg.work_dir,
        )
        if cfg.pretrain.encoder
        else None
    )
    return Pretrained(vectors, language_model, with_encoder(model, language_model))


def baseline_stage(
    data: PreparedData, *, level: str, work_dir: str, refit: bool = False
) -> StageOutput[BaselineResult]:
    """TF-IDF + logistic regression on the prepared rows (see `baseline`), with `refit` fitted
    again on train + validation as the model is. A stage of its own: it depends on the data only,
    so a change to the model or its training reuses it."""
    params = {
        "tokens": data.preprocess,
        "splits": data.split,
        "vocab": data.vocab,
        "level": level,
        "refit": refit,
        "work_dir": work_dir,
    }

    def build(out: Path) -> BaselineResult:
        result = fit_baseline(data.preprocess.path, data.split.path, level=level, labels=data.labels, refit=refit)
        with building(out) as scratch:
            write_json(scratch / MANIFEST, result)
        return result

    return run_stage("baseline", params, build, code=[fit_baseline], manifest=BaselineResult)


def wide_stage(
    data: PreparedData, *, buckets: int, seed: int, work_dir: str, refit: bool = False
) -> StageOutput[WideFit]:
    """The linear half of a wide-and-deep model (see `wide`), and with `refit` the same fitted
    again on train + validation. A stage of its own: it depends on the data only, so a change to
    the recurrent model or its training reuses it."""
    params = {"tensors": data.tensorize, "buckets": buckets, "seed": seed, "refit": refit, "work_dir": work_dir}

    def build(out: Path) -> WideFit:
        with building(out) as scratch:
            fitted = fit_wide(
                data.tensorize.path,
                data.vocab_size,
                len(data.labels),
                buckets,
                out_dir=scratch,
                seed=seed,
                refit=refit,
            )
            write_json(scratch / MANIFEST, fitted)
        return fitted

    return run_stage("wide", params, build, code=[fit_wide], manifest=WideFit)


def evaluate_stage(
    data: PreparedData,
    fitted: list[StageOutput[FitManifest]],
    baseline: StageOutput[BaselineResult] | None,
    *,
    preprocess: PreprocessConfig,
    model: ModelConfig,
    max_length: int | None,
    work_dir: str,
    wide: StageOutput[WideFit] | None = None,
    refitted: list[StageOutput[RefitManifest]] | None = None,
    batch_size: int = 64,
    graph_engines: bool = True,
    seed: int = 0,
    pretrain_seed: int | None = None,
) -> StageOutput[Evaluation]:
    """Write the model bundle (best weights, vocabulary, labels, preprocessing; a seed ensemble's
    networks, one per fit in `fitted`; with `wide`, the linear model too, blended at the weight
    best on validation; with `refitted`, the weights trained again on train + validation) and
    evaluate it on the test split, beside the `baseline` fitted on the same rows (if any); the
    manifest is the `Evaluation`. `seed` is the first network's (`train.seed`), `pretrain_seed` its
    vectors' or language model's (`pretrain.seed`; None: nothing pretrained)."""
    tensors, vocab = data.tensorize, data.vocab
    params = {
        "tensors": tensors,
        "vocab": vocab,
        "fitted": fitted,
        "baseline": baseline,
        "wide": wide,
        "refitted": refitted,
        "preprocess": preprocess,
        "model": model,
        "max_length": max_length,
        "work_dir": work_dir,
        "graph_engines": graph_engines,
        "seed": seed,
        "pretrain_seed": pretrain_seed,
    }

    def build(out: Path) -> Evaluation:
        with building(out) as scratch:
            lineage = {
                "tensors": tensors.key,
                "vocab": vocab.key,
                **stage_keys("fit", fitted),
                **({"wide": wide.key} if wide else {}),
                **(stage_keys("refit", refitted) if refitted else {}),
            }
            network, blend = chosen_network(fitted, wide, data, model, batch_size)
            refit_summary = None
            if refitted is not None:
                refit_summary = Refit.of(
                    refitted[0].manifest, chosen_test_accuracy=accuracy_on_test(network, tensors.path)
                )
                network = refit_network(refitted, wide, data, model, blend)
            weights = scratch / "weights.pt"
            torch.save(network.state_dict(), weights)
            save_bundle(scratch / BUNDLE, weights, Path(vocab.path), preprocess, model, max_length, lineage)
            weights.unlink()  # its tensors are in the bundle now
            fit = fitted[0].manifest
            evaluation = evaluate_bundle(
                scratch / BUNDLE,
                Path(tensors.path) / "test",
                history=fit.history,
                selection=Selection(monitor=fit.monitor, epoch=fit.best_epoch, value=fit.best_value),
                blend=blend,
                refit=refit_summary,
                members=ensemble_members(seed, pretrain_seed, fitted, refitted) if model.ensemble > 1 else None,
                baseline=baseline.manifest if baseline else None,
                graph_engines=graph_engines,
            )
            (scratch / BUNDLE / CARD).write_text(model_card(scratch / BUNDLE, evaluation), encoding="utf-8")
            evaluation = evaluation.model_copy(update={"bundle": str(out / BUNDLE)})
            write_json(scratch / MANIFEST, evaluation)
        return evaluation

    code = [save_bundle, evaluate_bundle, model_card, choose_blend, chosen_network, refit_network, ensemble_members]
    return run_stage("evaluate", params, build, code=code, manifest=Evaluation)


def stage_keys(stage: str, outputs: list[StageOutput]) -> dict[str, str]:
    """The lineage entries of one network's stage (`fit`), or of an ensemble's (`fit 0`, ...)."""
    if len(outputs) == 1:
        return {stage: outputs[0].key}
    return {f"{stage} {i}": output.key for i, output in enumerate(outputs)}


def network_of(
    weights: list[Path], wide: Path | None, blend: float, data: PreparedData, model: ModelConfig
) -> RNNClassifier | SeedEnsemble:
    """The inference model from each network's weights file (one, or an ensemble's), with the
    linear half's weights `wide` at the recurrent share `blend`."""
    network = classifier(data.vocab_size, len(data.labels), model)
    states = [torch.load(path, map_location="cpu", weights_only=True) for path in weights]
    if len(states) == 1:
        state = states[0]
    else:
        state = {f"members.{i}.{name}": tensor for i, member in enumerate(states) for name, tensor in member.items()}
    if wide is not None:
        state = {**state, **load_wide(wide), "blend": torch.tensor(blend)}
    network.load_state_dict(state)
    return network.eval()


def chosen_network(
    fitted: list[StageOutput[FitManifest]],
    wide: StageOutput[WideFit] | None,
    data: PreparedData,
    model: ModelConfig,
    batch_size: int,
) -> tuple[RNNClassifier | SeedEnsemble, Blend | None]:
    """The fits' kept weights; with `wide`, the linear half beside them, blended at the weight
    best on the validation split."""
    wide_weights = Path(wide.path) / WIDE_FILE if wide else None
    network = network_of([Path(f.path) / BEST for f in fitted], wide_weights, 1.0, data, model)
    if wide is None:
        return network, None
    blend = choose_blend(network, Path(data.tensorize.path) / "val", len(data.labels), batch_size, wide.manifest)
    return network, blend


def refit_network(
    refitted: list[StageOutput[RefitManifest]],
    wide: StageOutput[WideFit] | None,
    data: PreparedData,
    model: ModelConfig,
    blend: Blend | None,
) -> RNNClassifier | SeedEnsemble:
    """The refit weights; with `wide`, its refit linear half beside them at the chosen `blend`."""
    wide_weights = Path(wide.path) / REFIT_WIDE_FILE if wide and blend else None
    weights = [Path(r.path) / BEST for r in refitted]
    return network_of(weights, wide_weights, blend.weight if blend else 1.0, data, model)


def ensemble_members(
    seed: int,
    pretrain_seed: int | None,
    fitted: list[StageOutput[FitManifest]],
    refitted: list[StageOutput[RefitManifest]] | None,
) -> list[Member]:
    """Each network of an ensemble (seeds `seed`, `seed` + 1, ...): its seed and its pretraining's
    (`pretrain_seed` + the same offset, if any), the epoch chosen on validation, its refit's epochs."""
    refits = refitted or [None] * len(fitted)
    return [
        Member(
            seed=seed + i,
            pretrain_seed=None if pretrain_seed is None else pretrain_seed + i,
            selection=Selection(monitor=f.manifest.monitor, epoch=f.manifest.best_epoch, value=f.manifest.best_value),
            refit_epochs=r.manifest.epochs if r else None,
        )
        for i, (f, r) in enumerate(zip(fitted, refits, strict=True))
    ]


class TrainedModel(BaseModel):
    """The prepared data, the training run and the evaluated bundle."""

    data: PreparedData
    vectors_sets: list[StageOutput[VectorsManifest]] = []  # one per network; empty: pretrain.vectors is off
    language_models: list[StageOutput[LanguageModelManifest]] = []  # one per network; empty: pretrain.encoder is off
    fits: list[StageOutput[FitManifest]]  # one per network: more for a seed ensemble
    refits: list[StageOutput[RefitManifest]] = []  # empty: train.refit is off
    wide: StageOutput[WideFit] | None = None  # None: model.wide is off
    baseline: StageOutput[BaselineResult] | None  # None: evaluate.baseline is off
    evaluate: StageOutput[Evaluation]
    tracking_run: str | None = None  # the MLflow run it was logged as, if tracked

    @property
    def stages(self) -> list[StageOutput]:
        return [
            *self.data.stages,
            *self.vectors_sets,
            *self.language_models,
            *self.fits,
            *self.refits,
            *([self.wide] if self.wide else []),
            *([self.baseline] if self.baseline else []),
            self.evaluate,
        ]

    @property
    def vectors(self) -> StageOutput[VectorsManifest] | None:
        """The (first) network's word vectors."""
        return self.vectors_sets[0] if self.vectors_sets else None

    @property
    def language_model(self) -> StageOutput[LanguageModelManifest] | None:
        """The (first) network's language model."""
        return self.language_models[0] if self.language_models else None

    @property
    def fit(self) -> StageOutput[FitManifest]:
        """The (first) network's fit: its history is the one the reports show."""
        return self.fits[0]

    @property
    def refit(self) -> StageOutput[RefitManifest] | None:
        return self.refits[0] if self.refits else None

    @property
    def evaluation(self) -> Evaluation:
        return self.evaluate.manifest

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.fit.manifest.history

    @property
    def best_epoch(self) -> int:
        return self.fit.manifest.best_epoch


@holding_outputs()  # every stage's output stays until the run ends: never pruned meanwhile
def train_model(cfg: TrainFlowConfig, client: Client | None = None) -> TrainedModel:
    """Prepare the data (on `client`, or in this process), train, evaluate and write the bundle;
    every stage is reused from `cfg.work_dir` when its inputs are unchanged."""
    return train_on(prepare(cfg, client), cfg)


def train_on(data: PreparedData, cfg: TrainFlowConfig, runner: InProcess = IN_PROCESS) -> TrainedModel:
    """The modelling stages in order on prepared data. `runner` runs each stage (the flows: as
    Prefect tasks, the baseline and the wide half beside the fit, as they need only the data)."""
    work, seed = cfg.work_dir, cfg.train.seed
    pending_wide = (
        runner.start(wide_stage, data, buckets=cfg.model.ngram_buckets, seed=seed, work_dir=work, refit=cfg.train.refit)
        if cfg.model.wide
        else None
    )
    pending_baseline = (
        runner.start(baseline_stage, data, level=cfg.preprocess.level, work_dir=work, refit=cfg.train.refit)
        if cfg.evaluate.baseline
        else None
    )
    pretrained: list[Pretrained] = []
    fitted, refitted = [], []
    for member in range(cfg.model.ensemble):  # a seed ensemble's networks, one after the other
        pretrained.append(pretrain_stages(data, cfg, runner, seed=cfg.pretrain.seed + member))
        model, train = pretrained[-1].model, cfg.train.model_copy(update={"seed": seed + member})
        fitted.append(runner.run(fit_stage, data.tensorize, model=model, cfg=train, work_dir=work))
        if cfg.train.refit:
            refitted.append(runner.run(refit_stage, data.tensorize, fitted[-1], model=model, cfg=train, work_dir=work))
    wide = pending_wide() if pending_wide else None
    baseline = pending_baseline() if pending_baseline else None
    evaluated = runner.run(
        evaluate_stage,
        data,
        fitted,
        baseline,
        preprocess=cfg.preprocess,
        model=pretrained[0].model,
        max_length=cfg.tensorize.max_length,
        work_dir=work,
        wide=wide,
        refitted=refitted or None,
        batch_size=cfg.train.batch_size,
        graph_engines=cfg.evaluate.graph_engines,
        seed=seed,
        pretrain_seed=cfg.pretrain.seed if cfg.pretrain.vectors or cfg.pretrain.encoder else None,
    )
    return TrainedModel(
        data=data,
        vectors_sets=[p.vectors for p in pretrained if p.vectors],
        language_models=[p.language_model for p in pretrained if p.language_model],
        fits=fitted,
        refits=refitted,
        wide=wide,
        baseline=baseline,
        evaluate=evaluated,
    )
