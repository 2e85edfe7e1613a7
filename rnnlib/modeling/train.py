"""Training loop: Adam (with ULMFiT's discriminative rates and gradual unfreezing when asked),
cross-entropy (optionally class-weighted), ReduceLROnPlateau, gradient clipping, early stopping
on validation loss, the best weights kept, and a checkpoint every epoch
from which a killed run resumes exactly where it was (same weights, optimizer, scheduler, RNG).

Runs on CUDA when present (bf16 autocast), else CPU; under `torchrun` it trains with
DistributedDataParallel, each rank reading its own shards.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from rnnlib.common.storage import MANIFEST, durable_replace, read_json
from rnnlib.config import ModelConfig, TrainConfig
from rnnlib.modeling.batches import ShardBatches
from rnnlib.modeling.device import pick_device, training_autocast
from rnnlib.modeling.finetune import layer_groups, optimizer_groups, unfreeze
from rnnlib.modeling.initial import load_embeddings, warm_start
from rnnlib.modeling.language_model import load_encoder
from rnnlib.modeling.model import RNNClassifier
from rnnlib.prepare.vocab import VOCAB_FILE, Vocabulary

log = logging.getLogger(__name__)
LAST, BEST = "last.pt", "best.pt"


def _distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group that torchrun describes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if world > 1 else (0, 1)


def class_weights(train_manifest: dict[str, Any], labels: list[str]) -> torch.Tensor:
    """Inverse class frequency, normalised to mean 1."""
    counts = torch.tensor([train_manifest["class_counts"].get(c, 0) for c in labels], dtype=torch.float)
    weights = counts.sum() / counts.clamp(min=1) / len(labels)
    return weights / weights.mean()


def weights_digest(network: nn.Module) -> str:
    """Digest of a model's parameters and buffers: equal on every rank of a distributed run."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _save(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    durable_replace(tmp, path)  # atomic: a kill never leaves a half-written checkpoint


def _sum_across_ranks(*values: float) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def _autocast(device: torch.device, cfg: TrainConfig):
    dtype = training_autocast(device, cfg.mixed_precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@torch.no_grad()
def validation_loss(model: nn.Module, batches: ShardBatches, loss_fn: nn.Module,
                    device: torch.device, cfg: TrainConfig) -> tuple[float, float]:
    model.eval()
    total = correct = count = 0.0
    for batch in batches:
        batch = batch.to(device)
        with _autocast(device, cfg):
            logits = model(batch.ids, batch.lengths)
        total += float(loss_fn(logits.float(), batch.labels)) * len(batch.labels)
        correct += float((logits.argmax(1) == batch.labels).sum())
        count += len(batch.labels)
    total, correct, count = _sum_across_ranks(total, correct, count)
    return total / max(count, 1), correct / max(count, 1)


def initialise(network: RNNClassifier, tensors_dir: Path, labels: list[str], model: ModelConfig,
               cfg: TrainConfig) -> dict[str, Any]:
    """Pretrained vectors, then a pretrained encoder, then a warm start, as configured; what each
    did (coverage, rows)."""
    if model.embeddings is None and model.encoder is None and cfg.init_from is None:
        return {}
    tokens = Vocabulary.load(tensors_dir / VOCAB_FILE).tokens
    initial = {}
    if model.embeddings is not None:
        initial["embeddings"] = load_embeddings(network.embedding, tokens, model.embeddings)
    if model.encoder is not None:
        initial["encoder"] = load_encoder(network, model.encoder)
    if cfg.init_from is not None:
        initial["init_from"] = warm_start(network, tokens, labels, cfg.init_from)
    return initial


def train(tensors_dir: str | Path, *, out_dir: str | Path, model: ModelConfig,
          cfg: TrainConfig) -> dict[str, Any]:
    """Train on `tensors_dir/train`, validate on `tensors_dir/val`; checkpoints in `out_dir`.
    Returns the history and the best epoch; `out_dir/best.pt` holds the best weights."""
    tensors_dir, out_dir = Path(tensors_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = _distributed()
    device = pick_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    manifest = read_json(tensors_dir / "train" / MANIFEST)
    labels = manifest["labels"]
    torch.manual_seed(cfg.seed)
    network = RNNClassifier(manifest["vocab_size"], len(labels), model)
    initial = initialise(network, tensors_dir, labels, model, cfg)
    network = network.to(device)
    groups = layer_groups(network)
    kept_frozen = {id(p) for p in network.parameters() if not p.requires_grad}
    # a group gradual unfreezing holds back takes no gradient: each rank must know it is unused
    ddp = (DistributedDataParallel(network, find_unused_parameters=cfg.gradual_unfreezing)
           if world > 1 else None)
    # fused: one vectorised kernel for every parameter; the per-tensor loop costs more than the
    # forward and backward passes once a large embedding table (the bag of n-grams) is trained
    optimizer = torch.optim.Adam(optimizer_groups(groups, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 fused=True)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience)
    weight = class_weights(manifest, labels).to(device) if cfg.class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
    state: dict[str, Any] = {"epoch": 0, "history": [], "best_val_loss": float("inf"),
                             "best_epoch": 0, "bad_epochs": 0}
    if (out_dir / LAST).is_file():
        # on the CPU: RNG states must stay CPU byte tensors; weights and optimizer state are
        # copied to the model's device as they are loaded
        checkpoint = torch.load(out_dir / LAST, map_location="cpu", weights_only=True)
        network.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["rng"])
        if device.type == "cuda" and "cuda_rng" in checkpoint:  # dropout on GPU draws from here
            torch.cuda.set_rng_state(checkpoint["cuda_rng"], device)
        state = checkpoint["state"]
        log.info("resuming after epoch %d from %s", state["epoch"], out_dir / LAST)
    train_batches = ShardBatches(tensors_dir / "train", cfg.batch_size, cfg.pool_batches,
                                 shuffle=True, seed=cfg.seed, rank=rank, world_size=world)
    val_batches = ShardBatches(tensors_dir / "val", cfg.batch_size * 4, cfg.pool_batches,
                               shuffle=False, rank=rank, world_size=world)
    runner = ddp or network
    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
        epoch = state["epoch"] + 1
        train_batches.set_epoch(epoch)
        trained_groups = unfreeze(groups, epoch, cfg, kept_frozen)
        network.train()
        start = time.perf_counter()
        total = correct = count = tokens = 0.0
        bar = tqdm(train_batches, desc=f"epoch {epoch}", unit="batch", leave=False,
                   disable=rank != 0 or not sys.stderr.isatty())
        with Join([ddp]) if ddp else nullcontext():
            for batch in bar:
                batch = batch.to(device)
                with _autocast(device, cfg):
                    logits = runner(batch.ids, batch.lengths)
                loss = loss_fn(logits.float(), batch.labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_norm:
                    nn.utils.clip_grad_norm_(network.parameters(), cfg.clip_norm)
                optimizer.step()
                total += loss.item() * len(batch.labels)
                correct += float((logits.argmax(1) == batch.labels).sum())
                count += len(batch.labels)
                tokens += float(batch.lengths.sum())
        total, correct, count, tokens = _sum_across_ranks(total, correct, count, tokens)
        seconds = time.perf_counter() - start
        val_loss, val_acc = validation_loss(network, val_batches, loss_fn, device, cfg)
        scheduler.step(val_loss)
        record = {"epoch": epoch, "rows": int(count),
                  "train_loss": total / max(count, 1), "train_acc": correct / max(count, 1),
                  "val_loss": val_loss, "val_acc": val_acc, "lr": optimizer.param_groups[0]["lr"],
                  "trained_groups": trained_groups,
                  "seconds": seconds, "tokens_per_s": tokens / seconds}
        improved = val_loss < state["best_val_loss"]
        state = {
            "epoch": epoch, "history": [*state["history"], record],
            "best_val_loss": val_loss if improved else state["best_val_loss"],
            "best_epoch": epoch if improved else state["best_epoch"],
            "bad_epochs": 0 if improved else state["bad_epochs"] + 1,
        }
        if rank == 0:
            if improved:
                _save(network.state_dict(), out_dir / BEST)
            checkpoint = {"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                          "state": state}
            if device.type == "cuda":
                checkpoint["cuda_rng"] = torch.cuda.get_rng_state(device)
            _save(checkpoint, out_dir / LAST)
        if dist.is_initialized():
            dist.barrier()
        log.info("epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | lr %.2g | %.0f tokens/s",
                 epoch, record["train_loss"], record["train_acc"], val_loss, val_acc, record["lr"],
                 record["tokens_per_s"])
    return {**state, "initial": initial, "stopped_early": state["bad_epochs"] >= cfg.patience, "device": str(device),
            "world_size": world, "weights_digest": weights_digest(network)}


def main(argv: list[str] | None = None) -> int:
    """`torchrun --nproc_per_node=N -m rnnlib.modeling.train TENSORS OUT --config FILE.yaml`: the training
    stage alone, on several GPUs (each rank reads its own shards)."""
    import argparse

    from rnnlib.config import TrainFlowConfig, load_config

    parser = argparse.ArgumentParser(prog="python -m rnnlib.modeling.train", description=main.__doc__)
    parser.add_argument("tensors", help="a tensorize stage folder (with train/ and val/)")
    parser.add_argument("out", help="checkpoint folder (a run found there is resumed)")
    parser.add_argument("--config", help="YAML file; its model: and train: sections are used")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    config = load_config(TrainFlowConfig, args.config, args.overrides)
    # pretraining is a stage of the train flow: without its output this would silently train from scratch
    if config.pretrain.vectors and config.model.embeddings is None:
        freeze = str(config.pretrain.freeze).lower()  # as the train flow starts from them
        parser.error("pretrain.vectors is a stage of `rnnlib train`: run it there, then pass its vectors with "
                     "--set 'model.embeddings={path: .rnnlib/vectors/<key>/vectors.txt, format: word2vec, "
                     f"freeze: {freeze}}}'")
    if config.pretrain.encoder and config.model.encoder is None:
        parser.error("pretrain.encoder is a stage of `rnnlib train`: run it there, then pass its encoder with "
                     "--set model.encoder=.rnnlib/language_model/<key>/encoder.safetensors")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    summary = train(args.tensors, out_dir=args.out, model=config.model, cfg=config.train)
    if summary["world_size"] == 1 or dist.get_rank() == 0:
        log.info("best epoch %d, validation loss %.4f; weights in %s", summary["best_epoch"],
                 summary["best_val_loss"], Path(args.out) / BEST)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
