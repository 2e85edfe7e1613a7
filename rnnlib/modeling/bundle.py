"""The model bundle: one self-describing directory per trained model.

weights.safetensors (tensors only: nothing is unpickled, no code runs from the file),
vocab.json, labels.json, config.json (preprocessing, model, data hashes, the weights' digest,
version), metrics.json and README.md (the model card). A bundle whose parts do not match each
other, or whose weights are not those it was written with, is refused with a clear error.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rnnlib.common.fingerprint import code_version, digest_json, file_digest
from rnnlib.common.storage import read_json, write_json
from rnnlib.config import ModelConfig, PreprocessConfig
from rnnlib.errors import InputError
from rnnlib.modeling.model import RNNClassifier, SeedEnsemble, classifier
from rnnlib.prepare.text import with_stopword_list
from rnnlib.prepare.vocab import LABELS_FILE, VOCAB_FILE, LabelEncoder, Vocabulary

WEIGHTS, CONFIG, METRICS = "weights.safetensors", "config.json", "metrics.json"
CURRENT = "current.json"  # in a model registry: which of its bundles is current


class BundleError(InputError):
    """A bundle whose weights, vocabulary, labels or configuration disagree."""


@dataclass(frozen=True)
class Bundle:
    model: RNNClassifier | SeedEnsemble
    vocab: Vocabulary
    labels: LabelEncoder
    preprocess: PreprocessConfig
    max_length: int | None
    version: str


def save_bundle(
    out_dir: Path,
    weights: Path,
    vocab_dir: Path,
    preprocess: PreprocessConfig,
    model: ModelConfig,
    max_length: int | None,
    data: dict[str, Any],
    metrics: dict[str, Any] | None = None,
) -> str:
    """Write a bundle; returns its version (a digest of its weights and configuration).
    `metrics.json` may also be written later, by the evaluation of the saved bundle."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = torch.load(weights, map_location="cpu", weights_only=True)  # a training checkpoint
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, out_dir / WEIGHTS)
    for name in (VOCAB_FILE, LABELS_FILE):
        shutil.copyfile(vocab_dir / name, out_dir / name)
    config = {
        "preprocess": with_stopword_list(preprocess).model_dump(mode="json"),  # scores without NLTK
        "model": model.model_dump(mode="json"),
        "max_length": max_length,
        "vocab_hash": Vocabulary.load(vocab_dir / VOCAB_FILE).hash,
        "labels_hash": LabelEncoder.load(vocab_dir / LABELS_FILE).hash,
        "data": data,
        "rnnlib_code": code_version(),
        "weights_digest": file_digest(out_dir / WEIGHTS),
    }
    config["version"] = digest_json(config)
    write_json(out_dir / CONFIG, config)
    if metrics is not None:
        write_json(out_dir / METRICS, metrics)
    return config["version"]


def current_bundle(registry: str | Path) -> Path | None:
    """A model registry's current bundle, or None for an empty registry."""
    pointer = Path(registry) / CURRENT
    return Path(registry) / read_json(pointer)["bundle"] if pointer.is_file() else None


def locate_bundle(path: str | Path) -> Path:
    """A bundle directory as given, or a model registry's current bundle."""
    path = Path(path)
    if (path / CURRENT).is_file():
        return current_bundle(path)
    return path


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    path = Path(path)
    for name in (WEIGHTS, CONFIG, VOCAB_FILE, LABELS_FILE):
        if not (path / name).is_file():
            raise BundleError(f"not a model bundle: {name} is missing", file=str(path))
    config = read_json(path / CONFIG)
    vocab, labels = Vocabulary.load(path / VOCAB_FILE), LabelEncoder.load(path / LABELS_FILE)
    if vocab.hash != config["vocab_hash"] or labels.hash != config["labels_hash"]:
        raise BundleError("vocabulary or labels do not match the bundle's configuration", file=str(path))
    if file_digest(path / WEIGHTS) != config["weights_digest"]:
        raise BundleError(
            "weights are not the ones this bundle was written with (digest differs)", file=str(path / WEIGHTS)
        )
    model = classifier(len(vocab.tokens), len(labels.labels), ModelConfig(**config["model"]))
    state = load_file(path / WEIGHTS, device=str(torch.device(device)))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BundleError(
            f"weights do not match the vocabulary/labels/model config: {exc}", file=str(path / WEIGHTS)
        ) from exc
    return Bundle(
        model.to(device).eval(),
        vocab,
        labels,
        PreprocessConfig(**config["preprocess"]),
        config["max_length"],
        config["version"],
    )
