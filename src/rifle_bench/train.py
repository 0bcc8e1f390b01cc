"""One fine-tuning run, top to bottom: data, model, method, regularizer, the epoch loop, the run's files."""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from rifle_bench import data, loggers, methods, models, regularizers
from rifle_bench.checkpoint import CheckpointWriter, load_checkpoint
from rifle_bench.data.loader import ImageBatches
from rifle_bench.methods.base import cosine
from rifle_bench.resources import image_threads, peak_rss_mb
from rifle_bench.results import (experiment_id, mark_completed, training_fingerprint, versions, write_metrics,
                                 write_result)

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    pass


def run(cfg: DictConfig, run_dir: Path, started: float | None = None) -> dict:
    """Train and evaluate one configuration; write metrics.csv and checkpoints as it goes, return the result."""
    timings: dict[str, float] = {"startup_s": time.perf_counter() - started if started else 0.0}
    clock = time.perf_counter()
    trainer = cfg.trainer
    device = _device(trainer.device)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":  # the numerics: trainer=paper is the authors' fp32 without TF32
        torch.backends.cudnn.benchmark = trainer.cudnn_benchmark and not trainer.deterministic
        torch.backends.cudnn.deterministic = trainer.deterministic
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = trainer.tf32

    splits = data.prepare(cfg.dataset, trainer.resize, cfg.paths.cache, trainer.workers)
    timings["data_s"] = time.perf_counter() - clock
    clock = time.perf_counter()

    model = models.build(cfg.model.name, splits.num_classes, cfg.model.weights)
    method = methods.build(cfg.method)
    # Resolved before a method wraps the backbone: wrapping moves module paths, not parameters.
    probed = ({stage: model.backbone.get_submodule(path).weight for stage, path in model.stage_convs.items()}
              if trainer.grad_norms else {})
    method.wrap_model(model)
    regularizer = regularizers.build(cfg.regularizer)
    channels_last = trainer.channels_last
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    # Param groups named "backbone" and "head": a method gives each its learning rate.
    optimizer = torch.optim.SGD(regularizer.param_groups(model), lr=trainer.lr, momentum=trainer.momentum)
    compiled = trainer.compile and device.type == "cuda"  # CPU compile costs minutes of start-up for little gain
    if trainer.compile and not compiled:
        log.warning("trainer.compile=true is ignored on %s: the model runs eagerly", device)
    forward = torch.compile(model) if compiled else model
    autocast = _autocast(trainer.precision, device)
    # On CPU one thread assembles batches (the cores are busy training); a GPU needs several to keep up.
    batch_threads = 1 if device.type == "cpu" else image_threads(trainer.workers)
    batches = {split: ImageBatches(getattr(splits, split), crop=trainer.crop, batch_size=trainer.batch_size,
                                   train=split == "train", device=device, seed=cfg.seed,
                                   channels_last=channels_last, threads=batch_threads)
               for split in ("train", "test", "val") if getattr(splits, split) is not None}
    timings["model_s"] = time.perf_counter() - clock

    epochs = trainer.epochs
    state = load_checkpoint(run_dir, model, optimizer, _fingerprint(cfg))
    rows = state["rows"] if state else []
    train_s = sum(row["epoch_s"] for row in rows)
    eval_s = state["eval_s"] if state else 0.0
    write_s = 0.0
    bar = tqdm(total=epochs * len(batches["train"]), initial=len(rows) * len(batches["train"]), unit="step",
               desc=f"{cfg.dataset.name}/{cfg.method.name}/s{cfg.seed}", dynamic_ncols=True, disable=None)
    with CheckpointWriter(run_dir, enabled=trainer.checkpoint) as checkpoints, \
            loggers.build(cfg.logger, run_dir) as logger:
        for epoch in range(len(rows), epochs):
            epoch_clock = time.perf_counter()
            model.train()  # before start_epoch: a method may put parts of the model back in eval mode
            reinit = method.start_epoch(epoch, epochs, model, optimizer)
            scheduled = cosine(epoch, epochs, trainer.lr) if trainer.schedule == "cosine" else trainer.lr
            lrs = dict(zip(("backbone", "head"), method.learning_rates(epoch, epochs, trainer.lr, scheduled)))
            for group in optimizer.param_groups:
                group["lr"] = lrs[group["name"]]
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            grad_norms = {}
            for step, (images, labels) in enumerate(batches["train"].epoch(epoch)):
                targets = method.targets(labels, splits.num_classes)
                with autocast:
                    logits = forward(images)
                    loss = F.cross_entropy(logits, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if step == 0 and probed:  # the loss's gradient at the epoch's starting weights (paper, Fig. 2)
                    grad_norms = _grad_norms(probed)
                regularizer.add_gradients()
                optimizer.step()
                loss_sum += loss.detach() * len(labels)
                correct += (logits.argmax(1) == labels).sum()
                seen += len(labels)
                bar.update()
            method.end_epoch(model, batches["train"])
            train_loss = loss_sum.item() / seen  # the epoch's one host sync
            if not math.isfinite(train_loss):
                raise TrainingDiverged(f"training loss became {train_loss} in epoch {epoch + 1}; lower trainer.lr "
                                       f"or check the data")
            # The rates the optimizer's groups held during the epoch, read back from it.
            row = {"epoch": epoch + 1, **{f"lr_{group['name']}": group["lr"] for group in optimizer.param_groups},
                   "head_reinit": int(reinit),
                   "train_loss": round(train_loss, 6), "train_acc": round(100.0 * correct.item() / seen, 4),
                   "test_acc": None, "penalty": round(regularizer.penalty(), 6),
                   **method.epoch_metrics(), **regularizer.epoch_metrics(), **grad_norms}
            if splits.val is not None:
                row["val_acc"] = None
            row["epoch_s"] = round(time.perf_counter() - epoch_clock, 4)
            train_s += row["epoch_s"]
            if _evaluate_now(epoch, epochs, trainer.eval_every):
                eval_clock = time.perf_counter()
                row["test_acc"] = round(evaluate(model, batches["test"], autocast), 4)
                if splits.val is not None:
                    row["val_acc"] = round(evaluate(model, batches["val"], autocast), 4)
                eval_s += time.perf_counter() - eval_clock
            rows.append(row)
            write_clock = time.perf_counter()
            write_metrics(run_dir, rows)
            logger.log(row)
            checkpoints.save(model, optimizer, rows, eval_s, _fingerprint(cfg))  # written while the next epoch trains
            write_s += time.perf_counter() - write_clock
            bar.set_postfix(loss=f"{train_loss:.3f}", acc=row["test_acc"] if row["test_acc"] is not None else "-")
        write_clock = time.perf_counter()
        checkpoints.wait()
        write_s += time.perf_counter() - write_clock
    bar.close()

    final = rows[-1]
    config = {key: OmegaConf.to_container(cfg[key], resolve=True, enum_to_str=True)
              if OmegaConf.is_config(cfg[key]) else cfg[key] for key in cfg if key != "hydra"}
    timings.update(train_s=train_s, eval_s=eval_s, write_s=write_s)
    return {
        "status": "done", "error": None,
        "dataset": cfg.dataset.name, "model": cfg.model.name, "weights": cfg.model.weights,
        "regularizer": cfg.regularizer.name, "method": cfg.method.name, "variant": methods.variant(cfg.method),
        "seed": cfg.seed, "epochs": epochs, "test_acc": final["test_acc"], "train_acc": final["train_acc"],
        "train_loss": final["train_loss"], "n_train": len(splits.train), "n_test": len(splits.test),
        "val_acc": final.get("val_acc"), "val_split": splits.val_split,
        "num_classes": splits.num_classes, "skipped_images": splits.skipped,
        "train_s": round(train_s, 3), "eval_s": round(eval_s, 3), "timings": {k: round(v, 3) for k, v in timings.items()},
        "peak_rss_mb": round(peak_rss_mb(), 1), "peak_gpu_mb": _peak_gpu_mb(device), "device": str(device),
        "precision": _precision_name(autocast), "tf32": device.type == "cuda" and trainer.tf32,
        "cudnn_benchmark": device.type == "cuda" and torch.backends.cudnn.benchmark,
        "channels_last": channels_last, "compiled": compiled,
        "config": config, "fingerprint": experiment_id(config), "versions": versions(),
    }


@torch.no_grad()
def _grad_norms(weights: dict[str, torch.Tensor]) -> dict[str, float]:
    """`grad_norm_<stage>`: the Frobenius norm of each weight's gradient, to 6 significant digits; empty for a
    weight frozen in this epoch (random_freeze, keep_imagenet_fc), which has no gradient."""
    grads = {stage: weight.grad for stage, weight in weights.items() if weight.grad is not None}
    norms = torch.stack([torch.linalg.vector_norm(grad.float()) for grad in grads.values()]).tolist() if grads else []
    return {f"grad_norm_{stage}": None for stage in weights} | {
        f"grad_norm_{stage}": float(f"{norm:.6g}") for stage, norm in zip(grads, norms)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: ImageBatches, autocast) -> float:
    """Top-1 accuracy in percent over the whole split."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=batches.device)
    total = 0
    for images, labels in batches.epoch(0):
        with autocast:
            correct += (model(images).argmax(1) == labels).sum()
        total += len(labels)
    return 100.0 * correct.item() / total


def finish(run_dir: Path, result: dict, keep_checkpoint: bool) -> None:
    """Write result.json, then the completion marker; the checkpoint goes unless asked to keep it."""
    write_result(run_dir, result)
    mark_completed(run_dir)
    if not keep_checkpoint:
        (Path(run_dir) / "checkpoint.pt").unlink(missing_ok=True)


def _evaluate_now(epoch: int, epochs: int, every: int) -> bool:
    return epoch + 1 == epochs or (every > 0 and (epoch + 1) % every == 0)


def _device(choice) -> torch.device:
    """`choice`: trainer.device (auto, cpu or cuda); config.validate has refused cuda on a machine without it."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(getattr(choice, "value", choice))


def _autocast(precision: str, device: torch.device):
    """bf16 autocast on a GPU ('bf16', or 'auto' where the GPU supports it); fp32 otherwise (CPU autocast is slower
    here). config.validate has refused bf16 on a GPU without it."""
    if precision == "fp32" or device.type != "cuda" or not torch.cuda.is_bf16_supported():
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


def _peak_gpu_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def _precision_name(autocast) -> str:
    return "bf16" if isinstance(autocast, torch.autocast) else "fp32"


def _fingerprint(cfg: DictConfig) -> dict:
    """What a checkpoint must match to be resumed: everything that shapes the training trajectory."""
    sections = {key: OmegaConf.to_container(cfg[key], resolve=True, enum_to_str=True)
                for key in ("dataset", "model", "regularizer", "method", "trainer")}
    return training_fingerprint(sections | {"seed": cfg.seed})
