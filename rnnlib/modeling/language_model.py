"""The classifier's encoder (embedding and recurrent layers) pretrained as a language model on the
training split and the unlabelled text, before the classifier is trained from it (Dai & Le 2015;
ULMFiT). Never validation or test text.

- The forward direction predicts each next token, a bidirectional model's backward direction each
  previous one; with one layer neither direction sees the token it predicts. A stack of
  bidirectional layers would (the second layer reads both directions), so it is refused.
- torch's adaptive softmax keeps the output layer affordable on a CPU: frequent tokens get the
  full width, rare ones a narrower, clustered one (the vocabulary is sorted by frequency).
- About one text in `heldout_every`, drawn at random (seeded), is held out; its perplexity is the
  stage's figure of merit.
- A checkpoint after every epoch: a killed run started again resumes where it was.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from rnnlib.config import ConfigError, ModelConfig, PretrainConfig
from rnnlib.errors import InputError
from rnnlib.modeling.checkpoint import load_checkpoint, save_checkpoint
from rnnlib.modeling.device import pick_device
from rnnlib.modeling.initial import load_embeddings
from rnnlib.modeling.model import RNNClassifier
from rnnlib.modeling.pretrain import TokenLists
from rnnlib.prepare.specials import PAD_ID
from rnnlib.prepare.tensorize import encode_ids
from rnnlib.prepare.vocab import VOCAB_FILE, Vocabulary

ENCODER_FILE = "encoder.safetensors"
ENCODER_PREFIXES = ("embedding.", "layers.")
CHECKPOINT = "last.pt"
log = logging.getLogger(__name__)


def read_texts(corpus: TokenLists, vocab: Vocabulary, max_length: int | None) -> list[np.ndarray]:
    """Every text of at least two tokens as an int32 id array (cut to `max_length`)."""
    texts = []
    for column in corpus.columns():
        ids, _ = encode_ids(column, vocab, max_length)
        offsets = ids.offsets.to_numpy()
        flat = ids.values.to_numpy(zero_copy_only=False).astype(np.int64)  # a writable copy
        texts.extend(flat[a:b] for a, b in zip(offsets[:-1], offsets[1:]) if b - a >= 2)
    return texts


def batches(
    texts: Sequence[np.ndarray], batch_size: int, pool: int, rng: np.random.Generator | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(ids padded with 0, lengths) batches of texts of similar length; shuffled by `rng`
    (pools of `pool` batches sorted by length, then the batches' order), else in order."""
    order = rng.permutation(len(texts)) if rng is not None else np.arange(len(texts))
    chunks = []
    for start in range(0, len(order), batch_size * pool):
        chunk = sorted(order[start : start + batch_size * pool], key=lambda i: len(texts[i]))
        chunks.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    if rng is not None:
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    for chunk in chunks:
        rows = [torch.from_numpy(texts[i]) for i in chunk]
        yield (pad_sequence(rows, batch_first=True, padding_value=PAD_ID), torch.tensor([len(r) for r in rows]))


class LanguageModel(nn.Module):
    """The classifier's encoder with an adaptive-softmax decoder per direction."""

    def __init__(self, vocab_size: int, model: ModelConfig) -> None:
        super().__init__()
        if model.bidirectional and model.num_layers > 1:
            raise ConfigError(
                "pretrain.encoder: a stack of bidirectional layers would let each direction "
                "see the token it predicts; use num_layers: 1 or bidirectional: false"
            )
        self.hidden = model.hidden_size
        self.classifier = RNNClassifier(vocab_size, 1, model.model_copy(update={"ngrams": 0}))
        cutoffs = [c for c in (2_000, 10_000, 40_000) if c < vocab_size - 1] or [vocab_size // 2]
        self.decoders = nn.ModuleList(
            nn.AdaptiveLogSoftmaxWithLoss(model.hidden_size, vocab_size, cutoffs, div_value=4.0)
            for _ in range(2 if model.bidirectional else 1)
        )

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(summed negative log-likelihood, predicted tokens) of every real token from its
        neighbour(s) in each direction."""
        outputs = self.classifier.dropout(self.classifier.encode(ids, lengths))
        real = torch.arange(ids.shape[1] - 1, device=ids.device)[None, :] < (lengths[:, None] - 1)
        total = outputs.new_zeros(())
        for direction, decoder in enumerate(self.decoders):
            side = outputs[..., direction * self.hidden : (direction + 1) * self.hidden]
            # forward: the output at t predicts t + 1; backward: the output at t + 1 predicts t
            states, targets = (side[:, :-1], ids[:, 1:]) if direction == 0 else (side[:, 1:], ids[:, :-1])
            # the decoder's output is each target's log-probability
            total = total - decoder(states[real], targets[real]).output.sum()
        return total, int(real.sum()) * len(self.decoders)


def encoder_weights(network: RNNClassifier) -> dict[str, torch.Tensor]:
    """The weights a classifier starts from: its embedding and recurrent layers."""
    return {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items() if k.startswith(ENCODER_PREFIXES)}


@torch.no_grad()
def heldout_perplexity(lm: LanguageModel, texts: Sequence[np.ndarray], batch_size: int, device: torch.device) -> float:
    lm.eval()
    total, count = 0.0, 0
    for ids, lengths in batches(texts, batch_size, 1, None):
        loss, n = lm(ids.to(device), lengths.to(device))
        total, count = total + float(loss), count + n
    return math.exp(total / max(count, 1))


def _hold_out(texts: list[np.ndarray], cfg: PretrainConfig, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(training, held out): at most `encoder_max_texts` texts, a seeded sample, about one in
    `heldout_every` held out to measure perplexity on."""
    rng = np.random.default_rng(seed)
    if cfg.encoder_max_texts is not None and len(texts) > cfg.encoder_max_texts:
        texts = [texts[i] for i in np.sort(rng.choice(len(texts), cfg.encoder_max_texts, replace=False))]
    held = rng.random(len(texts)) < 1 / cfg.heldout_every
    return [t for t, h in zip(texts, held) if not h], [t for t, h in zip(texts, held) if h]


def _epoch(
    lm: LanguageModel,
    optimizer: torch.optim.Optimizer,
    training: list[np.ndarray],
    heldout: list[np.ndarray],
    epoch: int,
    *,
    batch_size: int,
    seed: int,
    on: torch.device,
) -> dict[str, Any]:
    """One pass over the training texts (in an order seeded by the epoch); its history record."""
    began = time.perf_counter()
    lm.train()
    total, count = 0.0, 0
    for ids, lengths in batches(training, batch_size, 50, np.random.default_rng([seed, epoch])):
        loss, n = lm(ids.to(on), lengths.to(on))
        optimizer.zero_grad(set_to_none=True)
        (loss / n).backward()
        nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        total, count = total + float(loss.detach()), count + n
    seconds = time.perf_counter() - began
    return {
        "epoch": epoch,
        "train_perplexity": math.exp(total / max(count, 1)),
        "heldout_perplexity": heldout_perplexity(lm, heldout, batch_size * 4, on),
        "seconds": round(seconds, 1),
        "tokens_per_s": round(count / seconds),
    }


class LanguageModelManifest(BaseModel):
    """The language model stage's manifest: the text it read and its per-epoch perplexity."""

    texts: int
    heldout_texts: int
    tokens: int
    vocabulary: int
    embeddings: dict[str, Any] | None  # the learnt vectors it started from, if any
    untrained_perplexity: float
    history: list[dict[str, Any]]
    seconds: float


def pretrain_encoder(
    tokens_dir: str | Path,
    split_dir: str | Path,
    vocab_dir: str | Path,
    unlabelled_dirs: Sequence[str | Path],
    *,
    out_dir: str | Path,
    model: ModelConfig,
    cfg: PretrainConfig,
    max_length: int | None,
    batch_size: int,
    seed: int,
    device: str = "auto",
) -> LanguageModelManifest:
    """Train the language model; write `encoder.safetensors` (the classifier's embedding and
    recurrent layers) and return the manifest: texts, tokens, per-epoch history with held-out
    perplexity. Checkpoints go to `out_dir` itself, which the caller renames when done."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    vocab = Vocabulary.load(Path(vocab_dir) / VOCAB_FILE)
    texts = read_texts(TokenLists(tokens_dir, split_dir, unlabelled_dirs), vocab, max_length)
    training, heldout = _hold_out(texts, cfg, seed)
    if not training or not heldout:
        raise InputError("too few training or unlabelled texts to pretrain the encoder on", file=str(tokens_dir))
    torch.manual_seed(seed)
    lm = LanguageModel(len(vocab.tokens), model)
    initial = load_embeddings(lm.classifier.embedding, vocab.tokens, model.embeddings) if model.embeddings else None
    lm = lm.to(on := pick_device(device))
    optimizer = torch.optim.Adam(lm.parameters(), lr=cfg.encoder_lr)
    state = load_checkpoint(out_dir / CHECKPOINT, model=lm, optimizer=optimizer, device=on)
    if state is not None:
        log.info("resuming the language model after epoch %d", state["epoch"])
    else:
        state = {"epoch": 0, "history": [], "untrained_perplexity": heldout_perplexity(lm, heldout, batch_size * 4, on)}
    while state["epoch"] < cfg.encoder_epochs:
        epoch = state["epoch"] + 1
        record = _epoch(lm, optimizer, training, heldout, epoch, batch_size=batch_size, seed=seed, on=on)
        state = {**state, "epoch": epoch, "history": [*state["history"], record]}
        save_checkpoint(out_dir / CHECKPOINT, model=lm, optimizer=optimizer, state=state, device=on)
        log.info("language model epoch %(epoch)d: train perplexity %(train_perplexity).1f, held-out "
                 "%(heldout_perplexity).1f, %(tokens_per_s).0f tokens/s", record)  # fmt: skip
    save_file(encoder_weights(lm.classifier), str(out_dir / ENCODER_FILE))
    (out_dir / CHECKPOINT).unlink()
    return LanguageModelManifest(
        texts=len(training),
        heldout_texts=len(heldout),
        tokens=int(sum(len(t) for t in training)),
        vocabulary=len(vocab.tokens),
        embeddings=initial,
        untrained_perplexity=state["untrained_perplexity"],
        history=state["history"],
        seconds=round(time.perf_counter() - start, 1),
    )


def load_encoder(network: RNNClassifier, path: str) -> dict[str, Any]:
    """Start a classifier's embedding and recurrent layers from an encoder file; the shapes must
    be the model's own (the same vocabulary and encoder configuration)."""
    if not Path(path).is_file():
        raise InputError("encoder weights not found", file=path)
    weights, own = load_file(path), network.state_dict()
    wrong = [k for k, v in weights.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k.startswith(ENCODER_PREFIXES) and k not in weights]
    if wrong or missing:
        raise ConfigError(
            f"{path}: encoder weights do not fit this model (different vocabulary or "
            f"model settings): {', '.join(wrong + missing)}"
        )
    network.load_state_dict(weights, strict=False)
    log.info("encoder (embedding and recurrent layers) from %s", path)
    return {"file": path, "tensors": len(weights)}
