"""The prepare stages, each cached by content, and `prepare()`, which runs them in order.

    ingest -> preprocess -> split -> vocab -> tensorize

Each `*_stage` function is one stage with its cache: the output folder it reuses or builds and
the decisions that belong to the stage (the vocabulary is fitted on `train`, or on `all` for an
unlabelled corpus). The Prefect tasks wrap these one each; `prepare()` chains them for callers
without orchestration (tests, benchmarks, notebooks).

A stage is given `connect`, which returns the Dask client to use (None: in this process), rather
than a client: it is called only when the stage is built, so a run served from cache starts no
cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import BaseModel, model_validator

from rnnlib.common.accounting import AccountingError
from rnnlib.config import (
    PrepareConfig,
    PreprocessConfig,
    SourceConfig,
    SplitConfig,
    TensorizeConfig,
    VocabConfig,
)
from rnnlib.prepare.ingest import IngestManifest, ingest
from rnnlib.prepare.preprocess import PreprocessManifest, preprocess
from rnnlib.prepare.split import UNLABELLED_SPLIT, SplitManifest, split
from rnnlib.prepare.tensorize import TensorizeManifest, tensorize
from rnnlib.prepare.text import with_stopword_list
from rnnlib.prepare.vocab import VocabManifest, build_vocabulary
from rnnlib.sources.datasets import materialize
from rnnlib.stages import IN_PROCESS, InProcess, StageOutput, holding_outputs, run_stage

if TYPE_CHECKING:
    from distributed import Client

Connect = Callable[[], "Client | None"]


def in_process() -> None:
    """`connect` for stages run in this process, without a cluster."""
    return None


def ingest_stage(source: SourceConfig, *, work_dir: str, connect: Connect = in_process) -> StageOutput[IngestManifest]:
    return run_stage(
        "ingest",
        {"source": source, "work_dir": work_dir},
        lambda out: ingest(source, out_dir=out, client=connect()),
        code=[ingest],
        manifest=IngestManifest,
    )


def preprocess_stage(
    ingested: StageOutput[IngestManifest], *, cfg: PreprocessConfig, work_dir: str, connect: Connect = in_process
) -> StageOutput[PreprocessManifest]:
    # NLTK's data is read, not imported: the stop words themselves go into the key (and to the workers)
    cfg = with_stopword_list(cfg)
    return run_stage(
        "preprocess",
        {"ingested": ingested, "cfg": cfg, "work_dir": work_dir},
        lambda out: preprocess(ingested.path, out_dir=out, cfg=cfg, client=connect()),
        code=[preprocess],
        manifest=PreprocessManifest,
    )


def split_stage(
    tokens: StageOutput[PreprocessManifest],
    *,
    labelled: bool,
    cfg: SplitConfig,
    work_dir: str,
    connect: Connect = in_process,
) -> StageOutput[SplitManifest]:
    return run_stage(
        "split",
        {"tokens": tokens, "labelled": labelled, "cfg": cfg, "work_dir": work_dir},
        lambda out: split(tokens.path, out_dir=out, cfg=cfg, labelled=labelled, client=connect()),
        code=[split],
        manifest=SplitManifest,
    )


def vocab_stage(
    tokens: StageOutput[PreprocessManifest],
    splits: StageOutput[SplitManifest],
    *,
    labelled: bool,
    cfg: VocabConfig,
    work_dir: str,
    unlabelled: StageOutput[PreprocessManifest] | None = None,
    connect: Connect = in_process,
) -> StageOutput[VocabManifest]:
    """Fitted on the training split only; an unlabelled corpus (all of it in split `all`) on
    all of it. With `cfg.unlabelled_min_freq`, the words of the `unlabelled` text follow."""
    counted_split = "train" if labelled else UNLABELLED_SPLIT
    extra = [unlabelled] if unlabelled is not None and cfg.unlabelled_min_freq is not None else []
    params = {
        "tokens": tokens,
        "splits": splits,
        "counted_split": counted_split,
        "cfg": cfg,
        "unlabelled": extra,
        "work_dir": work_dir,
    }
    return run_stage(
        "vocab",
        params,
        lambda out: build_vocabulary(
            tokens.path,
            splits.path,
            out_dir=out,
            cfg=cfg,
            counted_split=counted_split,
            unlabelled_dirs=[u.path for u in extra],
            client=connect(),
        ),
        code=[build_vocabulary],
        manifest=VocabManifest,
    )


def tensorize_stage(
    tokens: StageOutput[PreprocessManifest],
    splits: StageOutput[SplitManifest],
    vocab: StageOutput[VocabManifest],
    *,
    labelled: bool,
    cfg: TensorizeConfig,
    work_dir: str,
    connect: Connect = in_process,
) -> StageOutput[TensorizeManifest]:
    params = {
        "tokens": tokens,
        "splits": splits,
        "vocab": vocab,
        "labelled": labelled,
        "cfg": cfg,
        "work_dir": work_dir,
    }
    return run_stage(
        "tensorize",
        params,
        lambda out: tensorize(
            tokens.path, splits.path, vocab.path, out_dir=out, cfg=cfg, labelled=labelled, client=connect()
        ),
        code=[tensorize],
        manifest=TensorizeManifest,
    )


def unlabelled_source(source: SourceConfig) -> SourceConfig | None:
    """The unlabelled inputs of a (materialized) source as a source of their own, labels ignored."""
    if not source.unlabelled:
        return None
    specs = [spec.model_copy(update={"label_column": None}) for spec in source.unlabelled]
    return SourceConfig(inputs=specs, partition_rows=source.partition_rows)


class UnlabelledText(BaseModel):
    """Unlabelled text ingested and preprocessed like the labelled rows, for pretraining only."""

    ingest: StageOutput[IngestManifest]
    preprocess: StageOutput[PreprocessManifest]


class PreparedData(BaseModel):
    """The prepare stages' outputs, checked to account for every input row."""

    ingest: StageOutput[IngestManifest]
    preprocess: StageOutput[PreprocessManifest]
    split: StageOutput[SplitManifest]
    vocab: StageOutput[VocabManifest]
    tensorize: StageOutput[TensorizeManifest]
    unlabelled: UnlabelledText | None = None

    @model_validator(mode="after")
    def _every_row_accounted(self) -> PreparedData:
        if self.tensorize.manifest.rows != self.ingest.manifest.rows:
            raise AccountingError(
                f"{self.ingest.manifest.rows} rows ingested, {self.tensorize.manifest.rows} accounted"
            )
        return self

    @property
    def stages(self) -> list[StageOutput]:
        extra = [self.unlabelled.ingest, self.unlabelled.preprocess] if self.unlabelled else []
        return [self.ingest, self.preprocess, self.split, self.vocab, self.tensorize, *extra]

    @property
    def labelled(self) -> bool:
        return self.ingest.manifest.labelled

    @property
    def rows(self) -> int:
        return self.tensorize.manifest.rows

    @property
    def kept(self) -> int:
        return self.tensorize.manifest.kept

    @property
    def rejected(self) -> dict[str, int]:
        return self.tensorize.manifest.rejected

    @property
    def splits(self) -> dict[str, int]:
        return self.tensorize.manifest.splits

    @property
    def labels(self) -> list[str]:
        return self.tensorize.manifest.labels

    @property
    def vocab_size(self) -> int:
        return self.tensorize.manifest.vocab_size


@holding_outputs()  # evaluation reads them after a long fit: never pruned meanwhile
def prepare(
    cfg: PrepareConfig,
    client: Client | None = None,
    *,
    connect: Connect | None = None,
    runner: InProcess = IN_PROCESS,
) -> PreparedData:
    """Run the prepare stages in order on `client` (None: in this process; `connect`: a client
    made only when a stage has work for it), each reused from `cfg.work_dir` when a complete
    output with the same key is there. `runner` runs each stage (the flows: as Prefect tasks)."""
    work = cfg.work_dir
    connect = connect or (lambda: client)
    source = runner.run(materialize, cfg.source)
    ingested = runner.run(ingest_stage, source, work_dir=work, connect=connect)
    labelled = ingested.manifest.labelled
    tokens = runner.run(preprocess_stage, ingested, cfg=cfg.preprocess, work_dir=work, connect=connect)
    splits = runner.run(split_stage, tokens, labelled=labelled, cfg=cfg.split, work_dir=work, connect=connect)
    extra = unlabelled_source(source)
    unlabelled = None
    if extra is not None:  # for pretraining (and words for the vocabulary) only
        raw = runner.run(ingest_stage, extra, work_dir=work, connect=connect)
        unlabelled = UnlabelledText(
            ingest=raw, preprocess=runner.run(preprocess_stage, raw, cfg=cfg.preprocess, work_dir=work, connect=connect)
        )
    vocab = runner.run(
        vocab_stage,
        tokens,
        splits,
        labelled=labelled,
        cfg=cfg.vocab,
        work_dir=work,
        unlabelled=unlabelled.preprocess if unlabelled else None,
        connect=connect,
    )
    tensors = runner.run(
        tensorize_stage, tokens, splits, vocab, labelled=labelled, cfg=cfg.tensorize, work_dir=work, connect=connect
    )
    return PreparedData(
        ingest=ingested, preprocess=tokens, split=splits, vocab=vocab, tensorize=tensors, unlabelled=unlabelled
    )
