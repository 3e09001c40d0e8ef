"""The training loop every recipe shares: processes, data order, checkpoints, logs, outputs.

A recipe only says what to train and how one step goes (``Trainee``); this module runs it:
- one process, or several under ``torchrun`` (RANK/WORLD_SIZE from the environment; gloo on CPU,
  nccl on CUDA) without code changes: parameters are broadcast from rank 0 at the start and
  gradients are averaged across ranks before every optimizer step, which is what DDP does (done
  here explicitly so that GAN recipes with two optimizers and frozen feature networks need no
  DDP re-entrancy rules); each rank reads its own slice of every global batch;
- the data order and every random draw are functions of (seed, step, rank), so a run resumed
  from a checkpoint continues exactly as an uninterrupted one would;
- checkpoints ``OUTPUT/checkpoints/step-NNNNNN/`` are written atomically: trainable weights as
  safetensors, optimizer states in a file read back with ``torch.load(weights_only=True)``;
  Ctrl-C saves one at the last finished step;
- rank 0 logs ``metrics.csv`` and TensorBoard (``tb/``) and shows a progress bar;
- the final model is written atomically to ``OUTPUT/pipeline/`` with ``edgegen_training.json``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgegen.errors import EdgegenError
from edgegen.trainers.config import CONFIG_FILENAME, TrainConfig, config_dict, config_sha256, write_config

CHECKPOINTS_DIR = "checkpoints"
OUTPUT_PIPELINE_DIR = "pipeline"
WEIGHTS_FILENAME = "weights.safetensors"
STATE_FILENAME = "state.pt"
METRICS_FILENAME = "metrics.csv"


@dataclass
class Context:
    """Where this process stands: its rank, the device, and the run's output folder."""

    config: TrainConfig
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def generator(self, step: int, stream: int = 0) -> Any:
        """A torch Generator for this (step, rank, stream): resumable, different on each rank."""
        import torch

        return torch.Generator(device="cpu").manual_seed(hash((self.config.seed, step, self.rank, stream)) & 0x7FFFFFFF)


@dataclass
class Trainee:
    """What a recipe hands the loop."""

    modules: dict[str, Any]  # trainable torch modules: checkpointed, synchronised across ranks
    optimizers: dict[str, Any]
    step: Callable[[dict[str, Any], int, Context], dict[str, float]]  # one step; returns losses
    save: Callable[[Path, dict[str, Any]], None]  # writes the trained model into a folder
    summary: dict[str, Any] = field(default_factory=dict)  # e.g. trainable-parameter fraction
    schedulers: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    """A registered recipe; the CLI reaches the trainers only through these methods."""

    name: str
    config_type: type[TrainConfig]
    prepare: Callable[[TrainConfig, Context], Trainee]  # loads and checks everything before step 1
    description: str = ""

    def resolve(self, path: Path | None, overrides: list[str]) -> TrainConfig:
        from edgegen.trainers.config import resolve_config

        return resolve_config(self.config_type, path, overrides)

    def yaml(self, config: TrainConfig) -> str:
        import yaml

        return yaml.safe_dump(config_dict(config), sort_keys=False)

    def run(self, config: TrainConfig, resume: bool = False, command: str = "") -> Path:
        return run_recipe(self, config, resume=resume, command=command)


# ---------------------------------------------------------------------------------------------
# processes


def init_distributed() -> tuple[int, int, str]:
    import torch

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, "cpu"
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    device = "cpu"
    if cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    return dist.get_rank(), dist.get_world_size(), device


def _barrier(context: Context) -> None:
    if context.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def broadcast_parameters(modules: dict[str, Any], context: Context) -> None:
    if context.world_size == 1:
        return
    import torch.distributed as dist

    for module in modules.values():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def weights_fingerprint(modules: dict[str, Any]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, module in sorted(modules.items()):
        for key, value in sorted(module.state_dict().items()):
            digest.update(f"{name}.{key}".encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def ranks_in_sync(modules: dict[str, Any], context: Context) -> bool:
    """Whether every rank ends with bit-identical weights (always true for one process)."""
    if context.world_size == 1:
        return True
    import torch.distributed as dist

    fingerprints: list[str | None] = [None] * context.world_size
    dist.all_gather_object(fingerprints, weights_fingerprint(modules))
    if len(set(fingerprints)) != 1:
        raise EdgegenError(f"ranks ended with different weights ({len(set(fingerprints))} distinct); nothing was written")
    return True


def optimise(optimizer: Any, loss: Any, modules: list[Any], context: Context, max_grad_norm: float | None = 1.0) -> None:
    """Backward, average gradients over ranks, clip, step: one optimizer update."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    parameters = [p for module in modules for p in module.parameters() if p.requires_grad]
    if context.world_size > 1:
        import torch.distributed as dist

        for parameter in parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad /= context.world_size
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()


def make_optimizer(parameters: list[Any], config: TrainConfig, learning_rate: float | None = None, betas=(0.9, 0.999)) -> Any:
    import torch

    return torch.optim.AdamW(parameters, lr=learning_rate or config.learning_rate, weight_decay=config.weight_decay, betas=betas)


def warmup_cosine(optimizer: Any, config: TrainConfig) -> Any:
    import torch

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------------
# data


def load_data(config: TrainConfig, context: Context) -> Any:
    from edgegen.data.records import load_training_set

    dataset, report = load_training_set(config.data, image_size=config.image_size)
    if context.is_main and report.dropped:
        print(f"data: kept {report.kept}, dropped {sum(report.dropped.values())} ({report.summary()})", flush=True)
    return dataset, report


def global_batches(dataset: Any, config: TrainConfig, context: Context, start_step: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(step, this rank's part of the global batch); the order depends only on (seed, step)."""
    import torch

    global_size = config.batch_size * context.world_size
    per_epoch = max(1, len(dataset) // global_size)
    for step in range(start_step + 1, config.steps + 1):
        epoch, position = divmod(step - 1, per_epoch)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(config.seed * 100003 + epoch))
        indices = order[position * global_size:(position + 1) * global_size]
        if len(indices) < global_size:  # a dataset smaller than one global batch repeats
            indices = order[torch.arange(position * global_size, (position + 1) * global_size) % len(dataset)]
        mine = indices[context.rank::context.world_size].tolist()
        yield step, collate([dataset[i] for i in mine])


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        batch[key] = torch.stack(values) if hasattr(values[0], "shape") else values
    return batch


# ---------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_dirs(output: Path) -> list[Path]:
    folder = Path(output) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILENAME).is_file())


def save_checkpoint(trainee: Trainee, config: TrainConfig, step: int, command: str) -> Path:
    import torch
    from safetensors.torch import save_file

    from edgegen.artifact import atomic_folder

    folder = Path(config.output) / CHECKPOINTS_DIR / f"step-{step:06d}"
    with atomic_folder(folder, force=True) as staging:
        weights = {f"{name}.{key}": value.detach().cpu().clone() for name, module in trainee.modules.items() for key, value in module.state_dict().items()}
        save_file(weights, str(staging / WEIGHTS_FILENAME))
        state = {
            "step": step,
            "config_sha256": config_sha256(_resumable(config)),
            "config_json": json.dumps(config_dict(_resumable(config)), sort_keys=True),
            "optimizers": {name: opt.state_dict() for name, opt in trainee.optimizers.items()},
            "schedulers": {name: s.state_dict() for name, s in trainee.schedulers.items()},
        }
        torch.save(state, staging / STATE_FILENAME)
        write_config(config, staging / CONFIG_FILENAME, command)
    for old in checkpoint_dirs(config.output)[: -config.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def _resumable(config: TrainConfig) -> TrainConfig:
    # Extending a run (more steps) or moving its folder keeps its checkpoints usable.
    return config.model_copy(update={"steps": 1, "output": Path("."), "checkpoint_every": 1, "log_every": 1, "keep_checkpoints": 1})


def load_checkpoint(trainee: Trainee, config: TrainConfig, folder: Path, previous: Path | None = None) -> int:
    import torch
    from safetensors.torch import load_file

    try:
        state = torch.load(folder / STATE_FILENAME, weights_only=True)
        weights = load_file(str(folder / WEIGHTS_FILENAME))
    except Exception as error:  # a truncated or foreign file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        offer = (
            f"; the previous checkpoint {previous.name} is there: move {folder.name} aside and --resume continues from it"
            if previous is not None
            else "; there is no earlier checkpoint to fall back on"
        )
        raise EdgegenError(f"cannot resume from {folder}: it is corrupt ({reason}){offer}") from None
    if state.get("config_sha256") != config_sha256(_resumable(config)):
        saved = json.loads(state.get("config_json", "{}"))
        now = config_dict(_resumable(config))
        changed = sorted(key for key in set(saved) | set(now) if saved.get(key) != now.get(key)) or ["(unknown)"]
        raise EdgegenError(f"cannot resume from {folder}: it was trained with other {', '.join(changed)} (only steps and output may change)")
    for name, module in trainee.modules.items():
        part = {key[len(name) + 1:]: value for key, value in weights.items() if key.startswith(name + ".")}
        module.load_state_dict(part, strict=True)
    for name, optimizer in trainee.optimizers.items():
        optimizer.load_state_dict(state["optimizers"][name])
    for name, scheduler in trainee.schedulers.items():
        scheduler.load_state_dict(state["schedulers"][name])
    return int(state["step"])


# ---------------------------------------------------------------------------------------------
# logs


class MetricsLog:
    """metrics.csv (append-only, cut back to the resumed step) and TensorBoard, on rank 0."""

    def __init__(self, output: Path, start_step: int, enabled: bool):
        self.enabled = enabled
        self.path = Path(output) / METRICS_FILENAME
        self.writer = None
        self.columns: list[str] | None = None
        if not enabled:
            return
        if self.path.exists():
            with self.path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
            kept = [row for row in rows if int(row["step"]) <= start_step]
            self.columns = list(rows[0].keys()) if rows else None
            with self.path.open("w", newline="") as handle:
                if self.columns:
                    writer = csv.DictWriter(handle, fieldnames=self.columns)
                    writer.writeheader()
                    writer.writerows(kept)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(output) / "tb"), purge_step=start_step + 1)
        except ImportError:  # tensorboard is in the train extra; the CSV is always written
            self.writer = None

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: f"{v:.6g}" for k, v in values.items()}}
        if self.columns is None:
            self.columns = list(row)
            with self.path.open("w", newline="") as handle:
                csv.DictWriter(handle, fieldnames=self.columns).writeheader()
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore").writerow(row)
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(output: Path) -> list[dict[str, float]]:
    with (Path(output) / METRICS_FILENAME).open(newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


# ---------------------------------------------------------------------------------------------
# the run


def _progress(enabled: bool, total: int, completed: int):
    from contextlib import nullcontext

    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from edgegen.terminal import console

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)


def _train_mode(module: Any) -> None:
    try:
        module.train()
    except NotImplementedError:  # exported (PT2E) graphs have no train/eval switch
        pass


def run_recipe(recipe: Recipe, config: TrainConfig, resume: bool = False, command: str = "", show_progress: bool = True) -> Path:
    """Train ``recipe`` with ``config``; returns the output pipeline folder."""
    import torch

    from edgegen.families.loading import quiet_toolchains

    quiet_toolchains()
    rank, world_size, device = init_distributed()
    context = Context(config=config, rank=rank, world_size=world_size, device=device)
    if config.threads:
        torch.set_num_threads(config.threads)
    output = Path(config.output)
    checkpoints = checkpoint_dirs(output)
    if not resume and checkpoints:
        raise EdgegenError(f"{output} already holds checkpoints; pass --resume to continue, or choose another output")
    if resume and not checkpoints:
        raise EdgegenError(f"nothing to resume in {output}: no checkpoints")
    dataset, report = load_data(config, context)
    torch.manual_seed(config.seed)
    trainee = recipe.prepare(config, context)
    start_step = 0
    if resume:
        start_step = load_checkpoint(trainee, config, checkpoints[-1], checkpoints[-2] if len(checkpoints) > 1 else None)
    broadcast_parameters(trainee.modules, context)
    if context.is_main:
        output.mkdir(parents=True, exist_ok=True)
        write_config(config, output / CONFIG_FILENAME, command or f"edgegen train {recipe.name}")
    log = MetricsLog(output, start_step, context.is_main)
    losses: dict[str, float] = {}
    started = time.perf_counter()
    step = start_step
    try:
        with _progress(show_progress and context.is_main, config.steps, start_step) as progress:
            task = progress.add_task(f"{recipe.name}", total=config.steps, completed=start_step) if progress else None
            for step, batch in global_batches(dataset, config, context, start_step):
                step_started = time.perf_counter()
                for module in trainee.modules.values():
                    _train_mode(module)
                losses = trainee.step(batch, step, context)
                for scheduler in trainee.schedulers.values():
                    scheduler.step()
                if step % config.log_every == 0 or step == config.steps:
                    lr = next(iter(trainee.optimizers.values())).param_groups[0]["lr"]
                    log.log(step, {**losses, "lr": lr, "step_seconds": time.perf_counter() - step_started})
                if progress is not None:
                    shown = ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
                    progress.update(task, advance=1, description=f"{recipe.name}: {shown}")
                if step % config.checkpoint_every == 0 and step < config.steps:
                    if context.is_main:
                        save_checkpoint(trainee, config, step, command)
                    _barrier(context)
    except KeyboardInterrupt:
        # The step in flight may have half-updated the weights, so nothing is saved from them:
        # the run loses only the steps since the last checkpoint.
        log.close()
        raise EdgegenError(
            f"interrupted at step {step}; the last checkpoint is kept in {output / CHECKPOINTS_DIR}: rerun with --resume"
        ) from None
    log.close()
    in_sync = ranks_in_sync(trainee.modules, context)
    if context.is_main:
        save_checkpoint(trainee, config, config.steps, command)
    summary = {
        "recipe": recipe.name,
        "config": config_dict(config),
        "config_sha256": config_sha256(config),
        "data": {"source": config.data, "kept": report.kept, "dropped": dict(report.dropped)},
        "steps": config.steps,
        "resumed_from_step": start_step,
        "world_size": world_size,
        "ranks_in_sync": in_sync,
        "final_losses": losses,
        "seconds": time.perf_counter() - started,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **trainee.summary,
    }
    pipeline_dir = output / OUTPUT_PIPELINE_DIR
    if context.is_main:
        from edgegen.artifact import atomic_folder

        with atomic_folder(pipeline_dir, force=True) as staging:
            trainee.save(staging, summary)
    _barrier(context)
    return pipeline_dir
