"""The recurrent classifier family of the classic recipes.

Padding never changes a result: batches whose sequences differ in length are packed, so the
"last" state is each sequence's last real token and a bidirectional encoder's backward pass
starts there, not at a pad; pooling over time (mean, max) masks the pads. A batch whose
sequences all have the same length (common with length bucketing) skips packing, which costs
time and changes nothing there.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnlib.config import ModelConfig

CELLS = {"rnn_tanh": nn.RNN, "rnn_relu": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RNNClassifier(nn.Module):
    def __init__(self, vocab_size: int, num_classes: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(vocab_size, cfg.embedding_dim, padding_idx=0)
        extra = {"nonlinearity": cfg.cell.removeprefix("rnn_")} if cfg.cell.startswith("rnn") else {}
        self.encoder = CELLS[cfg.cell](
            cfg.embedding_dim, cfg.hidden_size, num_layers=cfg.num_layers, batch_first=True,
            bidirectional=cfg.bidirectional, dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
            **extra,
        )
        features = cfg.hidden_size * (2 if cfg.bidirectional else 1)
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.head_hidden:
            self.head = nn.Sequential(
                nn.Linear(features, cfg.head_hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                nn.Linear(cfg.head_hidden, num_classes),
            )
        else:
            self.head = nn.Linear(features, num_classes)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids: (batch, time) padded with 0; lengths: (batch,) real lengths >= 1 -> logits."""
        embedded = self.embedding(ids)
        equal = bool((lengths == lengths[0]).all())
        if equal:
            embedded = embedded[:, : int(lengths[0])]
            outputs, state = self.encoder(embedded)
        else:
            packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True,
                                          enforce_sorted=False)
            packed_out, state = self.encoder(packed)
            outputs = None
        if self.cfg.pooling == "last":
            hidden = state[0] if isinstance(state, tuple) else state  # LSTM: (h, c)
            directions = 2 if self.cfg.bidirectional else 1
            features = hidden[-directions:].transpose(0, 1).reshape(ids.shape[0], -1)
        else:
            if outputs is None:
                outputs, _ = pad_packed_sequence(packed_out, batch_first=True)
            mask = (torch.arange(outputs.shape[1], device=ids.device)[None, :]
                    < lengths.to(ids.device)[:, None]).unsqueeze(-1)
            if self.cfg.pooling == "mean":
                features = (outputs * mask).sum(1) / lengths.to(outputs.device)[:, None]
            else:
                features = outputs.masked_fill(~mask, float("-inf")).amax(1)
        return self.head(self.dropout(features))
