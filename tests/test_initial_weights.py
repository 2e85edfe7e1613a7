"""A model's first weights from a vectors file or an earlier bundle, rows mapped by token."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from rnnlib.config import ConfigError, EmbeddingsConfig, ModelConfig, TrainConfig
from rnnlib.modeling.bundle import load_bundle
from rnnlib.modeling.initial import read_vectors, warm_start
from rnnlib.modeling.model import RNNClassifier
from rnnlib.modeling.pipeline import fit_stage
from rnnlib.modeling.train import BEST, train
from rnnlib.prepare.specials import SPECIALS
from rnnlib.prepare.vocab import VOCAB_FILE, Vocabulary

ONE_EPOCH = TrainConfig(epochs=1, batch_size=256, lr=3e-3)


def _vectors(words: list[str], dim: int) -> dict[str, list[float]]:
    return {w: [round(0.01 * (i + 1) * (d + 1), 4) for d in range(dim)] for i, w in enumerate(words)}


def _write(path: Path, vectors: dict[str, list[float]], header: bool) -> Path:
    dim = len(next(iter(vectors.values())))
    lines = ([f"{len(vectors)} {dim}"] if header else []) + [f"{w} {' '.join(map(str, v))}" for w, v in vectors.items()]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.mark.parametrize("name,header", [("glove.txt", False), ("wiki.vec.gz", True)])
def test_vectors_file_formats_read_only_the_wanted_words(tmp_path, name, header):
    vectors = _vectors(["the", "cat", "Sat", "x"], 3)
    path = _write(tmp_path / name, vectors, header)
    found, dim = read_vectors(str(path), {"cat", "Sat", "dog"})
    assert dim == 3 and sorted(found) == ["Sat", "cat"]
    assert found["cat"].tolist() == pytest.approx(vectors["cat"])


def test_training_starts_from_the_vectors_and_reports_coverage(names_data, tmp_path):
    tokens = Vocabulary.load(Path(names_data.tensorize.path) / VOCAB_FILE).tokens
    words = list(tokens[len(SPECIALS) :])
    chosen = [w for w in words[::3] if w == w.lower() and not w.isspace()]  # (a text vectors file cannot hold " ")
    vectors = _vectors([*chosen, "not-a-token"], 8)
    path = _write(tmp_path / "chars.txt", vectors, header=False)
    model = ModelConfig(embedding_dim=8, hidden_size=8, embeddings=EmbeddingsConfig(path=str(path), freeze=True))
    summary = train(names_data.tensorize.path, out_dir=tmp_path / "fit", model=model, cfg=ONE_EPOCH)
    found = [w for w in words if w in vectors or w.lower() in vectors]  # exactly, else lower-cased
    assert len(found) > len(chosen)  # upper-case characters found by their lower case
    assert summary.initial["embeddings"] == {
        "file": str(path),
        "found": len(found),
        "vocabulary": len(words),
        "coverage": round(len(found) / len(words), 4),
        "frozen": True,
    }
    weights = torch.load(tmp_path / "fit" / BEST, weights_only=True)["embedding.weight"]
    for word in chosen:  # frozen: still exactly the file's vectors after training
        assert weights[tokens.index(word)].tolist() == pytest.approx(vectors[word])

    wrong = model.model_copy(update={"embedding_dim": 4})
    with pytest.raises(ConfigError, match="vectors of 8 dimensions, but model.embedding_dim is 4"):
        train(names_data.tensorize.path, out_dir=tmp_path / "wrong", model=wrong, cfg=ONE_EPOCH)


def test_fit_is_rebuilt_when_the_vectors_file_changes(names_data, tmp_path):
    tokens = Vocabulary.load(Path(names_data.tensorize.path) / VOCAB_FILE).tokens
    path = _write(tmp_path / "v.txt", _vectors(list(tokens[len(SPECIALS) :]), 8), header=False)
    model = ModelConfig(embedding_dim=8, hidden_size=8, embeddings=EmbeddingsConfig(path=str(path)))
    first = fit_stage(names_data.tensorize, model=model, cfg=ONE_EPOCH, work_dir=str(tmp_path / "w"))
    again = fit_stage(names_data.tensorize, model=model, cfg=ONE_EPOCH, work_dir=str(tmp_path / "w"))
    assert again.cached and again.key == first.key
    _write(path, _vectors(list(tokens[len(SPECIALS) :])[::-1], 8), header=False)  # same path, new content
    changed = fit_stage(names_data.tensorize, model=model, cfg=ONE_EPOCH, work_dir=str(tmp_path / "w"))
    assert not changed.cached and changed.key != first.key


def test_warm_start_maps_rows_by_token(names_bundle):
    bundle = load_bundle(names_bundle)
    old = bundle.vocab.tokens
    words = list(old[len(SPECIALS) :])
    tokens = [*SPECIALS, "new-token", *reversed(words[1:])]  # reordered, one new, one dropped
    network = RNNClassifier(len(tokens), len(bundle.labels.labels), bundle.model.cfg)
    fresh = network.embedding.weight.detach().clone()
    report = warm_start(network, tokens, bundle.labels.labels, str(names_bundle))
    assert report["rows_by_token"] == len(SPECIALS) + len(words) - 1
    for i, token in enumerate(tokens):
        expected = bundle.model.embedding.weight[old.index(token)] if token in old else fresh[i]
        assert torch.equal(network.embedding.weight[i], expected), token
    assert torch.equal(network.head.weight, bundle.model.head.weight)  # same labels: the head too
    assert report["kept_initial"] == []

    other = RNNClassifier(len(tokens), len(bundle.labels.labels), bundle.model.cfg)
    head = other.head.weight.detach().clone()
    relabelled = warm_start(other, tokens, list(reversed(bundle.labels.labels)), str(names_bundle))
    assert torch.equal(other.head.weight, head) and "head.weight" in relabelled["kept_initial"]
