"""Typed configuration of the pipeline: one object per flow, loadable from YAML, so a run is
reproducible from one file. The defaults are the surnames-by-language recipe."""

from __future__ import annotations

import codecs
import os
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Format = Literal["auto", "csv", "tsv", "jsonl", "parquet", "text", "folder_per_class", "file_per_class"]
SplitName = Literal["train", "val", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "val", "test")
Placeholder = Literal["url", "mention", "hashtag", "digit"]
# what runs a bundle's model when scoring (see rnnlib.modeling.engines); auto: chosen by measurement
EngineName = Literal["auto", "fp32", "bf16", "int8", "onnx", "onnx-int8", "openvino", "openvino-bf16"]
DEFAULT_DATASET = "names"
PARTITION_BYTES = 64 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Strict):
    """One input: a file, a directory, a glob or an fsspec URL, and how to read it."""

    path: str = Field(description="file, directory, glob or fsspec URL (gz/bz2/xz/zip read as they are)")
    format: Format = Field("auto", description="auto: from the file suffix")
    split: SplitName | None = Field(None, description="predefined split of every row of this input")
    header: bool = Field(True, description="CSV/TSV: first line holds column names")
    delimiter: str | None = Field(None, description="CSV/TSV: field separator (default , or tab)")
    text_columns: list[str | int] = Field(
        default_factory=lambda: ["text"],
        description="columns (names, or positions without header) joined by a space into the text",
    )
    label_column: str | int | None = Field("label", description="column holding the label; null: unlabelled")
    id_column: str | int | None = Field(None, description="default: a stable id from file and row")
    pattern: str = Field("*.txt", description="file glob inside folder/file-per-class layouts")
    glob: bool = Field(
        True,
        description="expand *, ? and [...] in `path`; false: the path is literal (a file named report[2024].jsonl)",
    )
    max_record_bytes: int = Field(
        16 << 20,
        gt=0,
        description="longest record (a JSON or text line, a CSV record) or one-document "
        "file: a longer one is rejected, its bytes skipped as they stream past, never held",
    )
    encoding: str = Field(
        "utf-8",
        description="text encoding of the files: any Python codec name (cp1252, latin-1, "
        "utf-16, ...); auto: UTF-8 if the file's start decodes as UTF-8, else what charset-normalizer "
        "detects there (recorded in the manifest). Bytes that still cannot be decoded reject their row",
    )

    @field_validator("encoding")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        if value == "auto":
            return value
        try:
            return codecs.lookup(value).name
        except LookupError:
            raise ValueError(f"unknown encoding {value!r} (a Python codec name, or auto)") from None


class SourceConfig(_Strict):
    """Where the labelled text comes from: a registered public dataset or explicit inputs."""

    dataset: str | None = Field(None, description=f"registered dataset ({DEFAULT_DATASET!r} when no inputs are given)")
    inputs: list[InputSpec] = Field(default_factory=list, description="explicit inputs, instead of a dataset")
    label_names: dict[str, str] = Field(default_factory=dict, description="rename raw labels, e.g. {'0': 'neutral'}")
    mirror: str | None = Field(
        default_factory=lambda: os.environ.get("RNNLIB_DATASETS_MIRROR"),
        description="local directory mirroring the public datasets (env RNNLIB_DATASETS_MIRROR)",
    )
    cache_dir: str = Field(
        default_factory=lambda: os.environ.get("RNNLIB_CACHE_DIR", str(Path("~/.cache/rnnlib/datasets").expanduser())),
        description="where downloaded datasets are kept",
    )
    keep_labels: list[str] = Field(
        default_factory=list,
        description="only these labels (after renaming); others are counted as rejected. Empty: all",
    )
    partition_rows: int = Field(5_000, gt=0, description="most rows per canonical Parquet partition")
    partition_bytes: int = Field(
        PARTITION_BYTES,
        gt=0,
        description="most text bytes per partition: long documents close a partition before partition_rows",
    )
    unlabelled: list[InputSpec] = Field(
        default_factory=list,
        description="unlabelled text to pretrain on (any format; labels, if "
        "any, ignored): ingested and preprocessed like the rest, never split, counted into the "
        "vocabulary or evaluated. Relative paths of a registered dataset are under the mirror",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_dataset(cls, data: Any) -> Any:
        """No dataset and no inputs given: the built-in default, surnames by language."""
        if isinstance(data, dict) and data.get("dataset") is None and not data.get("inputs"):
            return {**data, "dataset": DEFAULT_DATASET}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> SourceConfig:
        if (self.dataset is None) == (not self.inputs):
            raise ValueError("give exactly one of source.dataset or source.inputs")
        return self


class PreprocessConfig(_Strict):
    """Text normalisation and tokenisation, in the order the fields are listed."""

    level: Literal["word", "char"] = Field("char", description="tokens are words or characters")
    unicode_form: Literal["NFC", "NFKC", "NFD", "NFKD"] | None = Field(
        "NFC", description="Unicode normalisation (null: none)"
    )
    strip_accents: bool = Field(False, description="drop combining marks (é -> e)")
    strip_html: bool = Field(False, description="drop HTML tags, decode entities")
    lowercase: bool = Field(False, description="lower-case the text")
    placeholders: list[Placeholder] = Field(
        default_factory=list, description="replace URLs/@mentions/#hashtags/digits by <url>, ..."
    )
    remove_parentheses: bool = Field(False, description="drop '(...)' and its content")
    keep_emoticons: bool = Field(False, description="keep :) ;-( <3 ... as tokens")
    punctuation: Literal["keep", "split", "remove"] = Field(
        "split", description="word level: keep attached, split into own tokens, or remove"
    )
    stopwords: bool = Field(False, description="drop NLTK stop words (needs NLTK's corpus)")
    stopwords_language: str = Field("english", description="NLTK stop-word list to use")
    stopword_list: list[str] | None = Field(
        None,
        description="the stop words dropped (with stopwords): null means NLTK's list for "
        "stopwords_language, written in here when the text is prepared, so the cache key holds the words "
        "themselves and a model bundle scores without NLTK; or a list of your own",
    )
    stem: bool = Field(False, description="Porter stemming (word level)")

    @model_validator(mode="after")
    def _stopword_list_needs_stopwords(self) -> PreprocessConfig:
        if self.stopword_list is not None and not self.stopwords:
            raise ValueError("stopword_list is given but stopwords is false: set stopwords: true to drop them")
        return self


class SplitConfig(_Strict):
    """Stratified train/validation/test fractions; deterministic for a seed."""

    train: float = Field(0.70, ge=0, le=1, description="share of rows without a predefined split")
    val: float = Field(0.15, ge=0, le=1, description="share for validation (carved from a predefined train)")
    test: float = Field(0.15, ge=0, le=1, description="share held out for the test")
    seed: int = Field(0, description="same seed, same split")
    sample: int | None = Field(
        None,
        gt=0,
        description="use only this many of the rows that would go to training and "
        "validation (a stratified sample, fixed by the seed; test rows untouched), to see how a recipe "
        "does with little labelled data; the others are kept under split `unused`",
    )

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        if abs(self.train + self.val + self.test - 1.0) > 1e-9:
            raise ValueError("split fractions train + val + test must sum to 1")
        return self


class VocabConfig(_Strict):
    min_freq: int = Field(1, ge=1, description="rarer training tokens become <UNK>")
    max_size: int | None = Field(None, ge=2, description="including <PAD> and <UNK>")
    unlabelled_min_freq: int | None = Field(
        None,
        ge=1,
        description="also keep the words of `source.unlabelled` seen there at least this often, after "
        "the training split's: with learnt vectors, a word of new text that the training split never "
        "had starts from its vector instead of reading as <UNK> (null: training words only)",
    )
    max_labels: int = Field(
        1000,
        ge=2,
        description="refuse more distinct labels than this (a wrong "
        "label column, e.g. an id, would make one class per row)",
    )


class TensorizeConfig(_Strict):
    max_length: int | None = Field(None, gt=0, description="truncate longer sequences")
    shard_rows: int = Field(50_000, gt=0, description="maximum rows per Parquet shard")


class DaskConfig(_Strict):
    address: str | None = Field(
        default_factory=lambda: os.environ.get("RNNLIB_DASK_ADDRESS"),
        description="existing scheduler (env RNNLIB_DASK_ADDRESS); default: a LocalCluster",
    )
    n_workers: int | None = Field(None, gt=0, description="LocalCluster workers (default: cores)")
    processes: bool = Field(True, description="LocalCluster: worker processes, not threads")


class PrepareConfig(_Strict):
    """Everything the `prepare` flow needs."""

    source: SourceConfig = Field(default_factory=SourceConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    vocab: VocabConfig = Field(default_factory=VocabConfig)
    tensorize: TensorizeConfig = Field(default_factory=TensorizeConfig)
    dask: DaskConfig = Field(default_factory=DaskConfig)
    work_dir: str = Field(".rnnlib", description="where stage outputs are written")


class EmbeddingsConfig(_Strict):
    """Pretrained word vectors for the embedding layer, from a standard text file."""

    path: str = Field(description="GloVe .txt, fastText .vec or word2vec text file (.gz too; local or URL)")
    format: Literal["auto", "word2vec", "glove", "fasttext"] = Field(
        "auto",
        description="word2vec and fastText files start with a 'count dimensions' line, GloVe's "
        "do not; auto: from the first line",
    )
    freeze: bool = Field(False, description="keep the loaded vectors fixed while training")


class ModelConfig(_Strict):
    """Embedding -> recurrent encoder -> pooling -> dropout -> 1 or 2 linear layers."""

    cell: Literal["rnn_tanh", "rnn_relu", "lstm", "gru"] = Field("gru", description="recurrent cell")
    embedding_dim: int = Field(64, gt=0, description="size of a token's embedding")
    hidden_size: int = Field(256, gt=0, description="recurrent state size (per direction)")
    num_layers: int = Field(1, ge=1, description="stacked recurrent layers")
    bidirectional: bool = Field(True, description="also read each text backwards")
    dropout: float = Field(0.5, ge=0, lt=1, description="between layers and before the head")
    embedding_dropout: float = Field(0.2, ge=0, lt=1, description="on the embedded tokens")
    unk_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="in training, replace this fraction of tokens by <UNK>, so "
        "its embedding is learnt: with min_freq 1 no training token is <UNK>, yet ~10% of new "
        "text's tokens can be",
    )
    pooling: Literal["last", "mean", "max", "concat"] = Field(
        "max", description="concat: last, max and mean side by side (ULMFiT's concat pooling)"
    )
    head_hidden: int | None = Field(None, gt=0, description="a hidden layer in the head")
    ngrams: int = Field(
        0,
        ge=0,
        le=4,
        description="also feed the head fastText's bag of n-grams: the mean "
        "embedding of a text's tokens and hashed 2..N-grams (0: off). Linear models win on short "
        "texts and small data with exactly these features",
    )
    ngram_buckets: int = Field(2**18, gt=0, description="hash buckets of the n-grams (2..N)")
    ngram_dim: int = Field(32, gt=0, description="embedding size of the bag of n-grams")
    wide: bool = Field(
        False,
        description="wide and deep: blend the recurrent model's probabilities with a linear "
        "TF-IDF model's over the words and hashed word bigrams (fitted apart, its regularisation "
        "and the blend's weight: even, unless the validation split clearly prefers another)",
    )
    ensemble: int = Field(
        1,
        ge=1,
        description="train this many networks, from seeds train.seed, train.seed + 1, ..., and "
        "average their probabilities (each trained, and refit, on its own, with its own pretraining "
        "from pretrain.seed + the same offset: that many times the training and the pretraining; the "
        "bundle holds them all)",
    )
    embeddings: EmbeddingsConfig | None = Field(
        None,
        description="start the embedding rows of the tokens found in a vectors file from "
        "those vectors (the rest keep their random start); coverage goes to the fit manifest",
    )
    encoder: str | None = Field(
        None,
        description="start the embedding and recurrent layers from this weights file (what "
        "pretrain.encoder writes: the same vocabulary and encoder settings)",
    )


class TrainConfig(_Strict):
    epochs: int = Field(30, ge=1, description="most epochs (early stopping may end sooner)")
    batch_size: int = Field(64, ge=1, description="texts per training batch")
    pool_batches: int = Field(50, ge=1, description="batches per length-sorted shuffling pool")
    lr: float = Field(1e-3, gt=0, description="Adam's learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Adam's L2 penalty")
    clip_norm: float | None = Field(5.0, gt=0, description="clip the gradient norm to this (null: never)")
    class_weights: bool = Field(False, description="weight the loss by inverse class frequency")
    label_smoothing: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="spread this much of each target over all classes: keeps the "
        "model from growing overconfident, so validation loss follows accuracy for longer",
    )
    lr_patience: int = Field(1, ge=0, description="ReduceLROnPlateau patience (epochs)")
    lr_factor: float = Field(0.5, gt=0, lt=1, description="ReduceLROnPlateau: multiply the rate by this")
    patience: int = Field(5, ge=1, description="early stopping patience (epochs)")
    monitor: Literal["loss", "accuracy", "macro_f1"] = Field(
        "accuracy",
        description="the validation figure that picks the best epoch, stops early and "
        "lowers the rate: accuracy, macro_f1 (every class counts alike) or loss. Loss often bottoms "
        "out epochs before accuracy peaks",
    )
    min_steps: int = Field(
        0,
        ge=0,
        description="train at least this many optimizer steps, however many epochs that "
        "takes (early stopping waits for them too): a small set otherwise ends after few updates",
    )
    refit: bool = Field(
        False,
        description="once the best epoch is chosen on validation, train afresh on train + validation "
        "for that many epochs at the same rates, and ship that model (a small set gains its "
        "validation rows; the card keeps the chosen fit's figures beside it)",
    )
    seed: int = Field(0, description="weights, dropout and batch order")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: the GPU when there is one")
    mixed_precision: bool = Field(True, description="bf16 autocast on GPU (ignored on CPU)")
    init_from: str | None = Field(
        None,
        description="start from this bundle's weights (or a registry's current model): "
        "embedding rows mapped by token, other weights copied where they fit (a warm start)",
    )
    layer_lr_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="discriminative learning rates (ULMFiT): the head trains at "
        "`lr`, each layer below it at this times the rate of the one above (ULMFiT: 1/2.6)",
    )
    gradual_unfreezing: bool = Field(
        False,
        description="epoch 1 trains the head only; each later epoch unfreezes the next "
        "layer down, the embedding last: pretrained layers are not overwritten by a fresh head's "
        "first, random gradients",
    )


class EvaluateConfig(_Strict):
    baseline: bool = Field(
        True,
        description="also fit TF-IDF n-grams + logistic regression on the same training rows "
        "and score the same test rows, reported beside the model",
    )
    graph_engines: bool = Field(
        True,
        description="measure ONNX Runtime's and OpenVINO's scoring engines (where installed) on the test rows "
        "beside PyTorch's, for the model card: the model is exported for it (seconds); scoring measures its own",
    )


class TrackingConfig(_Strict):
    uri: str | None = Field(
        default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI"),
        description="MLflow tracking URI (env MLFLOW_TRACKING_URI), e.g. sqlite:///mlflow.db; "
        "unset: nothing is logged (needs `pip install rnnlib[tracking]`)",
    )
    experiment: str = Field("rnnlib", description="MLflow experiment the runs go to")
    artifacts: str | None = Field(
        None, description="artifact location of a new experiment (default: beside a SQLite database)"
    )
    model_name: str = Field("rnnlib", description="MLflow registered model that promoted bundles become versions of")


class PretrainConfig(_Strict):
    """What is learnt before training from the training split and `source.unlabelled` (never
    validation or test text): word vectors (gensim's FastText: subword vectors, so a word never
    seen still gets one), loaded as `model.embeddings`, and the encoder itself as a language
    model (Dai & Le; ULMFiT), loaded as `model.encoder`."""

    vectors: bool = Field(False, description="learn word vectors first and start the embedding from them")
    epochs: int = Field(5, ge=1, description="passes over the text, at least")
    min_words: int = Field(
        3_000_000,
        ge=0,
        description="more passes, until this many words are read in all: a few thousand short texts are too "
        "little for a few passes to place their words",
    )
    window: int = Field(5, ge=1, description="context words on each side")
    min_count: int = Field(3, ge=1, description="words rarer than this get only subword vectors")
    min_n: int = Field(3, ge=1, description="shortest character n-gram of a word")
    max_n: int = Field(6, ge=1, description="longest character n-gram of a word")
    workers: int = Field(
        1,
        ge=1,
        description="threads learning the vectors: one learns the same vectors from the same text and seed; "
        "more are faster on a large text, but their updates interleave differently on each run, and so do the vectors",
    )
    freeze: bool = Field(False, description="keep the learnt vectors fixed while training")
    encoder: bool = Field(
        False,
        description="pretrain the embedding and recurrent layers as a language model (each "
        "direction predicts the next token in its reading order), then train the classifier from them",
    )
    encoder_epochs: int = Field(1, ge=1, description="language-model passes over the text")
    encoder_lr: float = Field(1e-3, gt=0, description="the language model's Adam learning rate")
    encoder_max_texts: int | None = Field(
        None,
        gt=1,
        description="pretrain on a random sample (seeded) of at most this many texts: bounds the stage's time on a CPU",
    )
    heldout_every: int = Field(
        100,
        ge=2,
        description="about one text in N (drawn at random) is held out to measure the language model's perplexity",
    )
    seed: int = Field(
        0,
        description="the vectors' and the language model's seed, apart from `train.seed`: the seeds "
        "of a recipe share what was learnt before training instead of learning it again each (a seed "
        "ensemble's networks take this seed, + 1, ...)",
    )


class SearchRange(_Strict):
    """The values one setting may take in a search: `choices`, or numbers from `low` to `high`
    (on a log scale with `log`); integers when both bounds are integers."""

    choices: list[Any] | None = Field(None, min_length=1, description="the values to choose from")
    low: int | float | None = Field(None, description="smallest value")
    high: int | float | None = Field(None, description="largest value")
    log: bool = Field(False, description="sample on a log scale (rates, sizes)")

    @model_validator(mode="after")
    def _one_kind(self) -> SearchRange:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("a search range has either choices or both low and high")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        return self


def _default_space() -> dict[str, SearchRange]:
    ranges = {
        "model.embedding_dim": {"low": 32, "high": 256, "log": True},
        "model.hidden_size": {"low": 32, "high": 256, "log": True},
        "model.bidirectional": {"choices": [False, True]},
        "model.pooling": {"choices": ["last", "max", "mean", "concat"]},
        "model.dropout": {"low": 0.0, "high": 0.6},
        "model.embedding_dropout": {"low": 0.0, "high": 0.5},
        "model.ngrams": {"choices": [0, 2]},
        "train.lr": {"low": 3e-4, "high": 5e-3, "log": True},
        "train.batch_size": {"choices": [16, 32, 64]},
        "train.weight_decay": {"choices": [0.0, 1e-6, 1e-5]},
    }
    return {key: SearchRange.model_validate(value) for key, value in ranges.items()}


class TuneConfig(_Strict):
    """`rnnlib tune`: a hyperparameter search (Optuna's TPE sampler) on the validation split,
    over the prepared data built once; each trial is a fit stage, cached by content."""

    trials: int = Field(20, ge=1, description="trials to run (a resumed study counts the ones it has)")
    minutes: float | None = Field(None, gt=0, description="stop starting trials after this many minutes")
    space: dict[str, SearchRange] = Field(
        default_factory=_default_space,
        description="dotted setting -> the values it may take; the settings not named keep the config's values",
    )
    storage: str | None = Field(
        None,
        description="Optuna storage (any SQLAlchemy URL); default: SQLite in work_dir/tune.db, "
        "so a killed search resumes where it was",
    )
    study: str | None = Field(None, description="study name; default: from the data and the search's settings")
    prune: bool = Field(True, description="stop trials whose per-epoch validation figure falls behind (median rule)")
    parallel: int = Field(1, ge=1, description="trials at once, each a task on the Dask cluster")
    seed: int = Field(0, description="the sampler's seed")


class TrainFlowConfig(PrepareConfig):
    """The `train` flow: prepare, then fit and evaluate a model."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)


class ScoreConfig(_Strict):
    """The `score` flow: a model bundle applied to new text, written as partitioned Parquet."""

    bundle: str = Field(description="model bundle directory (written by the train flow)")
    inputs: list[InputSpec] = Field(
        min_length=1, description="files, directories (every file under them) or globs; labels are not read"
    )
    output: str = Field(description="output directory: scores/, rejects/ and _manifest.json")
    top_k: int = Field(3, ge=1, description="labels (with probabilities) kept per document")
    batch_size: int | None = Field(
        None,
        ge=1,
        description="documents per model batch, length-sorted; default 64 on CPU "
        "(the fastest there in bench_kernel.py), 1024 on GPU",
    )
    max_length: int | None = Field(
        None,
        gt=0,
        description="truncate (and flag) longer documents; default: the bundle's training max_length, else 1000",
    )
    partition_rows: int = Field(5_000, gt=0, description="rows per scoring partition")
    partition_bytes: int = Field(
        PARTITION_BYTES,
        gt=0,
        description="most text bytes per scoring partition: long documents close a partition before partition_rows",
    )
    overwrite: bool = Field(False, description="redo a finished run instead of skipping it")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: the GPU when there is one")
    engine: EngineName = Field(
        "auto",
        description="what runs the model: PyTorch in fp32, bf16 or int8 (recurrent and linear weights "
        "quantised to 8 bits; CPU only), ONNX Runtime (onnx: fp32; onnx-int8: LSTM and linear "
        "weights in 8 bits, a GRU's stay fp32; CPU only; both need the export extra), or OpenVINO "
        "on the same graph (openvino: fp32; openvino-bf16: bf16 where OpenVINO supports it on the "
        "CPU, fp32 elsewhere; CPU only; the openvino extra). auto: every "
        "engine measured on rows of the dump on first use on a machine, the fastest that labels at "
        "least 99.5% of them as fp32 does is run; the choice is cached in engine_cache and named "
        "in the run's manifest; on a GPU the same between fp32 and bf16. With device auto the "
        "CPU-only engines run on the CPU",
    )
    engine_cache: str = Field(
        default_factory=lambda: os.environ.get("RNNLIB_ENGINE_CACHE", ".rnnlib/engines"),
        description="where auto's measured choices and exported ONNX graphs are kept (env RNNLIB_ENGINE_CACHE)",
    )
    dask: DaskConfig = Field(default_factory=DaskConfig)
    roots: list[str] = Field(
        default_factory=list,
        description="folders (or URL prefixes) that every input, the bundle "
        "and the output must lie in, links resolved; empty: anywhere. What confines the ad-hoc "
        "scoring deployment",
    )


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def field_docs(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, description, default) for every setting of a config class, nested sections
    flattened and the fields of list items as `key[*].field`."""
    docs: list[tuple[str, str, str]] = []
    for name, field in cls.model_fields.items():
        kind = field.annotation
        item = typing.get_args(kind)[0] if typing.get_origin(kind) is list else None
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            docs += field_docs(kind, f"{prefix}{name}.")
            continue
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        docs.append((f"{prefix}{name}", field.description or "", default))
        if isinstance(item, type) and issubclass(item, BaseModel):
            docs += field_docs(item, f"{prefix}{name}[*].")
    return docs


def commented_yaml(config: BaseModel) -> str:
    """The config as YAML, each setting followed by its description: a file to start from."""
    notes = {key: description for key, description, _ in field_docs(type(config))}

    def render(node: dict[str, Any], prefix: str, indent: str) -> list[str]:
        lines = []
        for key, value in node.items():
            note = notes.get(prefix + key)
            comment = f"  # {note}" if note else ""
            if isinstance(value, dict) and value:
                lines += [f"{indent}{key}:{comment}", *render(value, f"{prefix}{key}.", indent + "  ")]
            else:
                flow = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
                flow = flow.removesuffix("\n...").removesuffix("...").strip()
                lines.append(f"{indent}{key}: {flow}{comment}")
        return lines

    return "\n".join(render(config.model_dump(mode="json"), "", "")) + "\n"


class ConfigError(ValueError):
    """A configuration file or override that cannot be read: its one-line reason."""


def _yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `section.sub.field` in a config's nested mapping, in place (sections made as needed)."""
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"setting {key!r}: {part!r} is not a section")
    node[leaf] = value


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `dotted.key=value` override in place; the value is parsed as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r} is not of the form key=value")
    set_dotted(data, key, _yaml(raw, f"override {assignment!r}"))


def load_config(
    cls: type[ConfigT],
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    values: dict[str, Any] | None = None,
) -> ConfigT:
    """Build a config from an optional YAML file, then `values` (dotted keys to values, as a
    program holds them: the command line's flags), then `key=value` overrides (a YAML value each,
    as a user types them)."""
    data: dict[str, Any] = {}
    if path is not None:
        with open(path, encoding="utf-8") as fh:
            data = _yaml(fh.read(), str(path)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config file must hold a mapping")
    for key, value in (values or {}).items():
        set_dotted(data, key, value)
    for assignment in overrides:
        apply_override(data, assignment)
    return cls.model_validate(data)
