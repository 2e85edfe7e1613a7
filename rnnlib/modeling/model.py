"""The recurrent classifier family of the classic recipes.

Padding never changes a result, and batches are never packed: on CPU a packed batch trains many
times slower than a padded one (see the README), so padded batches with length bucketing are
used instead, made exact like this:
- a forward direction's outputs at real positions never see the pads that follow them;
- a backward direction runs on each sequence reversed within its own length (the pads stay at the
  end), so it starts at the last real token; its outputs are put back in place the same way;
- "last" pooling takes each sequence's output at its own last real token (and the backward
  direction's at its first); mean and max pooling mask the pads; "concat" joins all three.
Each layer and direction is its own single-layer recurrent module, which keeps the fast fused
kernels (cuDNN on GPU) while the directions see only real tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rnnlib.config import ModelConfig
from rnnlib.modeling.wide import HASH_MULTIPLIER, WideLinear
from rnnlib.prepare.specials import PAD_ID, UNK_ID

CELLS = {"rnn_tanh": nn.RNN, "rnn_relu": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
# what each pooling option feeds the head; "concat" is ULMFiT's concat pooling
POOLED = {"last": ("last",), "mean": ("mean",), "max": ("max",), "concat": ("last", "max", "mean")}


def reversal_index(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(batch, steps) positions that reverse each row within its length, pads left in place."""
    positions = torch.arange(steps, device=lengths.device)[None, :]
    reversed_positions = lengths[:, None] - 1 - positions
    return torch.where(positions < lengths[:, None], reversed_positions, positions)


class NgramBag(nn.Module):
    """fastText's bag of n-grams: the mean embedding of a text's tokens and of its word
    2..n-grams, each n-gram hashed from its token ids into `buckets` rows (pads excluded).
    Hashing ids rather than strings keeps it inside the model: scoring, export and prediction
    need nothing new."""

    def __init__(self, vocab_size: int, n: int, buckets: int, dim: int) -> None:
        super().__init__()
        self.vocab_size, self.n, self.buckets = vocab_size, n, buckets
        self.embedding = nn.Embedding(vocab_size + buckets, dim, padding_idx=PAD_ID)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        real = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
        rows, masks, hashed = [ids], [real], ids
        for order in range(2, self.n + 1):  # hashed[:, i] covers tokens i .. i + order - 1
            hashed = (hashed[:, :-1] * HASH_MULTIPLIER + ids[:, order - 1 :] + order) % self.buckets
            rows.append(hashed + self.vocab_size)
            masks.append(real[:, order - 1 :])
        embedded = self.embedding(torch.cat(rows, 1))
        weights = torch.cat(masks, 1).float()
        weights = weights / weights.sum(1, keepdim=True).clamp(min=1)
        # averaged in fp32, returned in the model's own format (bf16 when it scores in bf16)
        return (embedded.float() * weights[..., None]).sum(1).to(embedded.dtype)


def blended_log_probabilities(
    deep: torch.Tensor, wide_logits: torch.Tensor, share: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Wide and deep: the log of `share` x the recurrent probabilities + the rest x the linear
    model's (log, so that softmax, as for logits, turns them back into those probabilities)."""
    share = share.float()
    blended = share * deep + (1 - share) * wide_logits.softmax(-1)
    return blended.clamp(min=1e-30).log().to(dtype)


class RNNClassifier(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(vocab_size, cfg.embedding_dim, padding_idx=PAD_ID)
        extra = {"nonlinearity": cfg.cell.removeprefix("rnn_")} if cfg.cell.startswith("rnn") else {}
        directions = 2 if cfg.bidirectional else 1
        self.layers = nn.ModuleList(
            nn.ModuleList(
                CELLS[cfg.cell](
                    cfg.embedding_dim if layer == 0 else cfg.hidden_size * directions,
                    cfg.hidden_size,
                    batch_first=True,
                    **extra,
                )
                for _ in range(directions)
            )
            for layer in range(cfg.num_layers)
        )
        features = cfg.hidden_size * directions * len(POOLED[cfg.pooling])
        self.ngrams = NgramBag(vocab_size, cfg.ngrams, cfg.ngram_buckets, cfg.ngram_dim) if cfg.ngrams else None
        features += cfg.ngram_dim if cfg.ngrams else 0
        self.dropout = nn.Dropout(cfg.dropout)
        self.embedding_dropout = nn.Dropout(cfg.embedding_dropout)
        self.wide = WideLinear(vocab_size, num_classes, cfg.ngram_buckets) if cfg.wide else None
        if cfg.wide:  # the deep model's share of the blended probabilities, set at evaluation
            self.register_buffer("blend", torch.ones(()))
        if cfg.head_hidden:
            self.head = nn.Sequential(
                nn.Linear(features, cfg.head_hidden),
                nn.ReLU(),
                nn.Dropout(cfg.dropout),
                nn.Linear(cfg.head_hidden, num_classes),
            )
        else:
            self.head = nn.Linear(features, num_classes)

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, steps, directions * hidden) outputs for ids padded to `steps` columns (batches
        are padded to their own longest row; extra pad columns change nothing but the work).
        No Python number is taken from a tensor, so an exported graph keeps batch and length
        dynamic."""
        lengths = lengths.to(ids.device)
        steps = ids.shape[1]
        if self.training and self.cfg.unk_dropout:
            unknown = (torch.rand(ids.shape, device=ids.device) < self.cfg.unk_dropout) & (ids != PAD_ID)
            ids = ids.masked_fill(unknown, UNK_ID)
        x = self.embedding_dropout(self.embedding(ids))
        flip = reversal_index(lengths, steps) if self.cfg.bidirectional else None
        for depth, directions in enumerate(self.layers):
            if depth:
                x = self.dropout(x)  # between layers
            outputs = [directions[0](x)[0]]
            if flip is not None:
                backward = directions[1](x.gather(1, flip[..., None].expand(-1, -1, x.shape[-1])))[0]
                outputs.append(backward.gather(1, flip[..., None].expand(-1, -1, backward.shape[-1])))
            x = torch.cat(outputs, dim=-1)
        return x

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids: (batch, time) padded with 0; lengths: (batch,) real lengths >= 1 -> logits."""
        outputs = self.encode(ids, lengths)
        lengths = lengths.to(outputs.device)
        pooled = [self._pool(kind, outputs, lengths) for kind in POOLED[self.cfg.pooling]]
        if self.ngrams is not None:
            pooled.append(self.ngrams(ids, lengths))
        logits = self.head(self.dropout(torch.cat(pooled, -1)))
        if self.wide is None or self.training:
            return logits
        return blended_log_probabilities(logits.float().softmax(-1), self.wide(ids, lengths), self.blend, logits.dtype)

    def _pool(self, kind: str, outputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """One summary of each sequence's outputs over its real tokens only."""
        if kind == "last":
            hidden = self.cfg.hidden_size
            rows = torch.arange(lengths.shape[0], device=outputs.device)
            features = outputs[rows, lengths - 1, :hidden]
            if self.cfg.bidirectional:  # the backward direction ends at the first token
                features = torch.cat([features, outputs[:, 0, hidden:]], dim=-1)
            return features
        mask = (torch.arange(outputs.shape[1], device=outputs.device)[None, :] < lengths[:, None]).unsqueeze(-1)
        if kind == "mean":
            return (outputs * mask).sum(1) / lengths[:, None]
        return outputs.masked_fill(~mask, float("-inf")).amax(1)


class SeedEnsemble(nn.Module):
    """Networks of one configuration trained from different seeds, their probabilities averaged
    (`model.ensemble`): the spread between seeds is what averaging removes. With `model.wide`
    the linear half is held once and blended with the average, as with one network.
    Inference only: each member is trained on its own."""

    def __init__(
        self, members: Sequence[RNNClassifier], cfg: ModelConfig, wide: WideLinear | None, blend: torch.Tensor | None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.members = nn.ModuleList(members)
        self.wide = wide
        if wide is not None:
            self.register_buffer("blend", torch.ones(()) if blend is None else blend)

    @classmethod
    def new(cls, vocab_size: int, num_classes: int, cfg: ModelConfig) -> SeedEnsemble:
        member = member_config(cfg)
        members = [RNNClassifier(vocab_size, num_classes, member) for _ in range(cfg.ensemble)]
        wide = WideLinear(vocab_size, num_classes, cfg.ngram_buckets) if cfg.wide else None
        return cls(members, cfg, wide, None)

    def alone(self, index: int) -> SeedEnsemble:
        """Member `index` with the same linear half and blend (sharing their tensors): what one
        seed would have given."""
        return SeedEnsemble([self.members[index]], self.cfg, self.wide, self.blend if self.wide is not None else None)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Log of the averaged (and, with the linear half, blended) probabilities."""
        outputs = [member(ids, lengths) for member in self.members]
        deep = torch.stack([logits.float().softmax(-1) for logits in outputs]).mean(0)
        if self.wide is None:
            return deep.clamp(min=1e-30).log().to(outputs[0].dtype)
        return blended_log_probabilities(deep, self.wide(ids, lengths), self.blend, outputs[0].dtype)


def member_config(cfg: ModelConfig) -> ModelConfig:
    """What each network of an ensemble is: the recurrent model alone (the linear half is fitted
    once, apart)."""
    return cfg.model_copy(update={"wide": False, "ensemble": 1})


def classifier(vocab_size: int, num_classes: int, cfg: ModelConfig) -> RNNClassifier | SeedEnsemble:
    """The inference model a configuration describes: one network, or an ensemble of them."""
    if cfg.ensemble > 1:
        return SeedEnsemble.new(vocab_size, num_classes, cfg)
    return RNNClassifier(vocab_size, num_classes, cfg)
