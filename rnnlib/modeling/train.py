"""Training loop: Adam (with ULMFiT's discriminative rates and gradual unfreezing when asked),
cross-entropy (optionally class-weighted), ReduceLROnPlateau, gradient clipping, early stopping
and the best weights kept by the monitored validation figure (`train.monitor`), at least
`train.min_steps` optimizer steps whatever the epochs, and a checkpoint every epoch
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
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pydantic import BaseModel
from torch import nn
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from rnnlib.config import ModelConfig, TrainConfig
from rnnlib.modeling.batches import ShardBatches
from rnnlib.modeling.checkpoint import load_checkpoint, save_atomically, save_checkpoint
from rnnlib.modeling.device import pick_device, training_autocast
from rnnlib.modeling.finetune import layer_groups, optimizer_groups, unfreeze
from rnnlib.modeling.initial import load_embeddings, warm_start
from rnnlib.modeling.language_model import load_encoder
from rnnlib.modeling.model import RNNClassifier
from rnnlib.prepare.tensorize import SplitTensors
from rnnlib.prepare.vocab import VOCAB_FILE, Vocabulary

log = logging.getLogger(__name__)
LAST, BEST = "last.pt", "best.pt"


def rank_device(choice: str) -> torch.device:
    """This process's device. Under torchrun on GPUs each process takes the GPU of its local
    rank: one GPU per process, as NCCL requires."""
    device = pick_device(choice)
    if device.type != "cuda" or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return device
    local_rank, gpus = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))), torch.cuda.device_count()
    if local_rank >= gpus:
        raise ValueError(
            f"local rank {local_rank} has no GPU of its own ({gpus} on this machine): start one process per GPU "
            f"(torchrun --nproc-per-node {gpus}), or train on the CPU (train.device: cpu)"
        )
    return torch.device("cuda", local_rank)


def _distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); joins the process group that torchrun describes, over NCCL between
    GPUs and gloo between CPU processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if world > 1 else (0, 1)


class FitManifest(BaseModel):
    """The fit stage's manifest: every epoch's record and the one kept, by the monitored figure."""

    epoch: int  # epochs run
    steps: int  # optimizer steps taken
    history: list[dict[str, Any]]  # a record per epoch: training and validation figures
    best: float  # the kept epoch's figure, signed so that higher is better
    best_epoch: int
    bad_epochs: int  # epochs since the kept one
    monitor: str
    best_value: float  # the kept epoch's figure as reported
    initial: dict[str, Any]  # what the weights started from (vectors, encoder, warm start)
    stopped_early: bool
    device: str
    world_size: int
    weights_digest: str


def class_weights(splits: Sequence[SplitTensors], labels: list[str]) -> torch.Tensor:
    """Inverse class frequency over the splits trained on, normalised to mean 1."""
    counts = torch.tensor([sum(s.class_counts.get(c, 0) for s in splits) for c in labels], dtype=torch.float)
    weights = counts.sum() / counts.clamp(min=1) / len(labels)
    return weights / weights.mean()


def weights_digest(network: nn.Module) -> str:
    """Digest of a model's parameters and buffers: equal on every rank of a distributed run."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _sum_across_ranks(*values: float) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def _autocast(device: torch.device, cfg: TrainConfig):
    dtype = training_autocast(device, cfg.mixed_precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


# what `train.monitor` selects and stops on: the history's column, and whether higher is better
MONITORED = {"loss": ("val_loss", False), "accuracy": ("val_acc", True), "macro_f1": ("val_macro_f1", True)}


def macro_f1(confusion: torch.Tensor) -> float:
    """Macro-averaged F1 from a (truth, predicted) confusion matrix, 0 for a class never seen
    nor predicted (scikit-learn's zero_division=0)."""
    hits = confusion.diag()
    denominator = confusion.sum(0) + confusion.sum(1)
    return float(torch.where(denominator > 0, 2 * hits / denominator.clamp(min=1), 0.0).mean())


@torch.no_grad()
def validate(
    model: nn.Module,
    batches: ShardBatches,
    loss_fn: nn.Module,
    num_classes: int,
    device: torch.device,
    cfg: TrainConfig,
) -> dict[str, float]:
    """Validation loss, accuracy and macro F1, over every rank's shards."""
    model.eval()
    total = count = 0.0
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.float64)
    for batch in batches:
        batch = batch.to(device)
        with _autocast(device, cfg):
            logits = model(batch.ids, batch.lengths)
        total += float(loss_fn(logits.float(), batch.labels)) * len(batch.labels)
        count += len(batch.labels)
        pairs = (batch.labels * num_classes + logits.argmax(1)).cpu()
        confusion += torch.bincount(pairs, minlength=num_classes * num_classes).double()
    sums = torch.cat([torch.tensor([total, count], dtype=torch.float64), confusion])
    if dist.is_initialized():  # one reduction of the whole matrix, never a Python list of its cells
        dist.all_reduce(sums)
    total, count = sums[:2].tolist()
    confusion = sums[2:].view(num_classes, num_classes)
    return {
        "val_loss": total / max(count, 1),
        "val_acc": float(confusion.diag().sum()) / max(count, 1),
        "val_macro_f1": macro_f1(confusion),
    }


def initialise(
    network: RNNClassifier, tensors_dir: Path, labels: list[str], model: ModelConfig, cfg: TrainConfig
) -> dict[str, Any]:
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


class Run:
    """What one training run works with: the model (wrapped by DDP under torchrun), its optimizer,
    scheduler and loss, the batches, and `state` (epochs done, history, the best so far), which
    with the weights, optimizer, scheduler and RNG is all a checkpoint holds. It trains on the
    `splits` named and validates on `validation`; without one (a refit) it does not validate."""

    def __init__(
        self,
        tensors_dir: Path,
        out_dir: Path,
        model: ModelConfig,
        cfg: TrainConfig,
        *,
        splits: Sequence[str] = ("train",),
        validation: str | None = "val",
    ) -> None:
        self.out_dir, self.cfg = out_dir, cfg
        self.device = device = rank_device(cfg.device)
        self.rank, self.world = _distributed(device)
        trained_on = [SplitTensors.read(tensors_dir / split) for split in splits]
        self.labels = trained_on[0].labels
        torch.manual_seed(cfg.seed)
        network = RNNClassifier(trained_on[0].vocab_size, len(self.labels), model)
        self.initial = initialise(network, tensors_dir, self.labels, model, cfg)
        self.network = network.to(device)
        self.groups = layer_groups(network)
        self.kept_frozen = {id(p) for p in network.parameters() if not p.requires_grad}
        # a group gradual unfreezing holds back takes no gradient: each rank must know it is unused
        self.ddp = (
            DistributedDataParallel(network, find_unused_parameters=cfg.gradual_unfreezing) if self.world > 1 else None
        )
        # fused: one vectorised kernel for every parameter; the per-tensor loop costs more than the
        # forward and backward passes once a large embedding table (the bag of n-grams) is trained
        self.optimizer = torch.optim.Adam(
            optimizer_groups(self.groups, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True
        )
        self.base_rates = [group["lr"] for group in self.optimizer.param_groups]
        self.column, higher = MONITORED[cfg.monitor]
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="max" if higher else "min", factor=cfg.lr_factor, patience=cfg.lr_patience
        )
        self.sign = 1.0 if higher else -1.0  # compare as "higher is better"
        weight = class_weights(trained_on, self.labels).to(device) if cfg.class_weights else None
        self.loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
        self.train_batches = ShardBatches(
            [tensors_dir / split for split in splits],
            cfg.batch_size,
            cfg.pool_batches,
            shuffle=True,
            seed=cfg.seed,
            rank=self.rank,
            world_size=self.world,
        )
        self.val_batches = None
        if validation is not None:
            self.val_batches = ShardBatches(
                tensors_dir / validation,
                cfg.batch_size * 4,
                cfg.pool_batches,
                shuffle=False,
                rank=self.rank,
                world_size=self.world,
            )
        self.state: dict[str, Any] = {
            "epoch": 0,
            "steps": 0,
            "history": [],
            "best": -float("inf"),
            "best_epoch": 0,
            "bad_epochs": 0,
        }

    def resume(self) -> None:
        """Carry on from the last checkpoint in `out_dir`, if there is one."""
        state = load_checkpoint(
            self.out_dir / LAST,
            model=self.network,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            device=self.device,
        )
        if state is not None:
            self.state = state
            log.info("resuming after epoch %d from %s", state["epoch"], self.out_dir / LAST)

    def going_on(self) -> bool:
        """Fewer optimizer steps than `min_steps` so far, or else epochs left and no early stop."""
        state, cfg = self.state, self.cfg
        if state["steps"] < cfg.min_steps:
            return True
        return state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training split: the epoch's record, validation figures included."""
        cfg, device = self.cfg, self.device
        self.train_batches.set_epoch(epoch)
        trained_groups = unfreeze(self.groups, epoch, cfg, self.kept_frozen)
        self.network.train()
        runner = self.ddp or self.network
        start = time.perf_counter()
        total = correct = count = tokens = steps = 0.0
        bar = tqdm(
            self.train_batches,
            desc=f"epoch {epoch}",
            unit="batch",
            leave=False,
            disable=self.rank != 0 or not sys.stderr.isatty(),
        )
        with Join([self.ddp]) if self.ddp else nullcontext():
            for batch in bar:
                batch = batch.to(device)
                with _autocast(device, cfg):
                    logits = runner(batch.ids, batch.lengths)
                loss = self.loss_fn(logits.float(), batch.labels)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_norm:
                    nn.utils.clip_grad_norm_(self.network.parameters(), cfg.clip_norm)
                self.optimizer.step()
                total += loss.item() * len(batch.labels)
                correct += float((logits.argmax(1) == batch.labels).sum())
                count += len(batch.labels)
                tokens += float(batch.lengths.sum())
                steps += 1
        # every rank steps together (Join), so rank 0's steps are the run's
        total, correct, count, tokens = _sum_across_ranks(total, correct, count, tokens)
        seconds = time.perf_counter() - start
        validation = {}
        if self.val_batches is not None:
            validation = validate(self.network, self.val_batches, self.loss_fn, len(self.labels), device, cfg)
            self.scheduler.step(validation[self.column])
        return {
            "epoch": epoch,
            "rows": int(count),
            "steps": int(steps),
            "train_loss": total / max(count, 1),
            "train_acc": correct / max(count, 1),
            **validation,
            "lr": self.optimizer.param_groups[0]["lr"],
            "trained_groups": trained_groups,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds,
        }

    def set_rate(self, scale: float) -> None:
        """Every parameter group at `scale` times its starting rate."""
        for group, base in zip(self.optimizer.param_groups, self.base_rates):
            group["lr"] = base * scale

    def record(self, record: dict[str, Any]) -> bool:
        """Add an epoch to the state; whether it is the best so far by the monitored figure."""
        state, value = self.state, self.sign * record[self.column]
        improved = value > state["best"]
        self.state = {
            "epoch": record["epoch"],
            "steps": state["steps"] + record["steps"],
            "history": [*state["history"], record],
            "best": value if improved else state["best"],
            "best_epoch": record["epoch"] if improved else state["best_epoch"],
            "bad_epochs": 0 if improved else state["bad_epochs"] + 1,
        }
        return improved

    def checkpoint(self, improved: bool) -> None:
        """The best weights (when `improved`) and everything a resume needs, each atomically."""
        if self.rank == 0:
            if improved:
                save_atomically(self.network.state_dict(), self.out_dir / BEST)
            save_checkpoint(
                self.out_dir / LAST,
                model=self.network,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                state=self.state,
                device=self.device,
            )
        if dist.is_initialized():
            dist.barrier()

    def summary(self) -> FitManifest:
        state = self.state
        return FitManifest(
            **state,
            monitor=self.cfg.monitor,
            best_value=self.sign * state["best"],
            initial=self.initial,
            stopped_early=state["bad_epochs"] >= self.cfg.patience,
            device=str(self.device),
            world_size=self.world,
            weights_digest=weights_digest(self.network),
        )


def train(
    tensors_dir: str | Path,
    *,
    out_dir: str | Path,
    model: ModelConfig,
    cfg: TrainConfig,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> FitManifest:
    """Train on `tensors_dir/train`, validate on `tensors_dir/val`; checkpoints in `out_dir`.
    Returns the history and the best epoch by `cfg.monitor`; `out_dir/best.pt` holds its weights.
    `on_epoch` sees each epoch's record once it is checkpointed (a search prunes a trial there)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = Run(Path(tensors_dir), out_dir, model, cfg)
    run.resume()
    while run.going_on():
        record = run.run_epoch(run.state["epoch"] + 1)
        run.checkpoint(run.record(record))
        log.info(
            "epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f macro F1 %.4f | lr %.2g | "
            "%d steps | %.0f tokens/s",
            record["epoch"],
            record["train_loss"],
            record["train_acc"],
            record["val_loss"],
            record["val_acc"],
            record["val_macro_f1"],
            record["lr"],
            run.state["steps"],
            record["tokens_per_s"],
        )
        if on_epoch is not None:
            on_epoch(record)
    return run.summary()


class RefitManifest(BaseModel):
    """The refit stage's manifest: the chosen fit's epochs replayed on train + validation."""

    epochs: int  # the chosen fit's best epoch
    steps: int  # optimizer steps taken
    rows: int  # rows an epoch (train + validation)
    history: list[dict[str, Any]]  # a record per epoch: training figures and the rate
    device: str
    world_size: int
    weights_digest: str


def replayed_rates(chosen: FitManifest, start: float) -> list[float]:
    """Each of the chosen fit's kept epochs' rate as a share of its `start`ing one: the history
    records the rate after each epoch's plateau step, so epoch e trained at epoch e - 1's."""
    after = [record["lr"] / start for record in chosen.history]
    return [1.0, *after][: chosen.best_epoch]


def refit(
    tensors_dir: str | Path, *, out_dir: str | Path, model: ModelConfig, cfg: TrainConfig, chosen: FitManifest
) -> RefitManifest:
    """Train afresh on train + validation for as many epochs as the `chosen` fit kept, at the
    rates it trained at epoch by epoch (with validation in the training rows there is nothing
    left to lower them on, or to stop on). `out_dir/best.pt` holds the last epoch's weights;
    like `train`, it checkpoints every epoch and resumes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = Run(Path(tensors_dir), out_dir, model, cfg, splits=("train", "val"), validation=None)
    run.resume()
    rates = replayed_rates(chosen, run.base_rates[0])
    while run.state["epoch"] < chosen.best_epoch:
        epoch = run.state["epoch"] + 1
        run.set_rate(rates[epoch - 1])
        record = run.run_epoch(epoch)
        state = run.state
        run.state = {
            **state,
            "epoch": epoch,
            "steps": state["steps"] + record["steps"],
            "history": [*state["history"], record],
        }
        run.checkpoint(improved=epoch == chosen.best_epoch)
        log.info(
            "refit epoch %d of %d: train loss %.4f acc %.4f | lr %.2g | %d steps",
            epoch,
            chosen.best_epoch,
            record["train_loss"],
            record["train_acc"],
            record["lr"],
            run.state["steps"],
        )
    history = run.state["history"]
    return RefitManifest(
        epochs=chosen.best_epoch,
        steps=run.state["steps"],
        rows=history[-1]["rows"],
        history=history,
        device=str(run.device),
        world_size=run.world,
        weights_digest=weights_digest(run.network),
    )


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
        parser.error(
            "pretrain.vectors is a stage of `rnnlib train`: run it there, then pass its vectors with "
            "--set 'model.embeddings={path: .rnnlib/vectors/<key>/vectors.txt, format: word2vec, "
            f"freeze: {freeze}}}'"
        )
    if config.pretrain.encoder and config.model.encoder is None:
        parser.error(
            "pretrain.encoder is a stage of `rnnlib train`: run it there, then pass its encoder with "
            "--set model.encoder=.rnnlib/language_model/<key>/encoder.safetensors"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    summary = train(args.tensors, out_dir=args.out, model=config.model, cfg=config.train)
    if summary.world_size == 1 or dist.get_rank() == 0:
        log.info(
            "best epoch %d, validation %s %.4f; weights in %s",
            summary.best_epoch,
            summary.monitor,
            summary.best_value,
            Path(args.out) / BEST,
        )
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
