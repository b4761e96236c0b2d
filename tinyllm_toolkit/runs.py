"""Training runs: checkpoints, exact resume, Ctrl-C and several processes (DDP).

`fit` is the chapter's `train` (tinyllm.py, section 9) for real runs: the same step functions,
plus what a long run needs around them.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from tinyllm import (
    TinyLLM, Tokenizer, TrainConfig, TrainState, choose_precision, evaluate, forward_backward, get_batch,
    log_line, lr_at, make_optimizer, optimizer_step, pick_device, record_evaluation)
from tinyllm_toolkit.files import remove_stale_temp_files, save_checkpoint


Loaded = TypeVar("Loaded")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def is_distributed() -> bool:
    """True inside a torch.distributed process group (a torchrun run)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a torch.distributed run (only rank 0 logs and saves)."""
    return not is_distributed() or torch.distributed.get_rank() == 0


class StopOnSigint:
    """Ctrl-C asks to stop at the end of the current step (a second Ctrl-C stops at once).

    Signal handlers can only be set in the main thread; elsewhere Ctrl-C simply raises as usual.
    """

    def __init__(self):
        self.requested = False
        self.active = threading.current_thread() is threading.main_thread()

    def __enter__(self) -> "StopOnSigint":
        if self.active:
            self.old_handler = signal.signal(signal.SIGINT, self.handle)
        return self

    def handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self.active:
            signal.signal(signal.SIGINT, self.old_handler)


def rng_states(generator: torch.Generator, device: torch.device) -> dict:
    """Every random state a run depends on, one per process: batches, and dropout on the CPU and on CUDA."""
    local = {"data": generator.get_state(), "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    states = [local]
    if is_distributed():  # every rank resumes its own
        states = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(states, local)
    return {key: [s[key] for s in states] for key in ("data", "torch", "cuda")}


def restore_rng_states(rng: dict, generator: torch.Generator, device: torch.device, config: TrainConfig,
                       step: int, rank: int, world: int) -> None:
    """Put back what rng_states saved; on another number of processes, start new random streams instead."""
    if len(rng["data"]) != world:  # resumed on another number of processes: not a replay of the first batches
        generator.manual_seed(config.seed + 1000 * step + rank)
        torch.manual_seed(config.seed + 1000 * step + rank)
        return
    generator.set_state(rng["data"][rank].cpu())
    saved = rng["torch"]  # a checkpoint from before per-rank states holds one tensor (rank 0's)
    torch.set_rng_state((saved[rank] if isinstance(saved, (list, tuple)) else saved).cpu())
    cuda = rng.get("cuda") or [None] * world
    if device.type == "cuda" and cuda[rank] is not None:
        torch.cuda.set_rng_state(cuda[rank].cpu(), device)


class MicroBatchScaler:
    """A GradScaler that also divides each loss by the number of micro-batches.

    forward_backward over one micro-batch at a time with it adds up exactly the gradients that
    forward_backward over all of them at once would (it divides by 1, then by n).
    """

    def __init__(self, scaler: torch.amp.GradScaler, n: int):
        self.scaler, self.n = scaler, n

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss / self.n)


@dataclass
class Run:
    """What fit's pieces share: the model (net: wrapped for DDP or compiled), its optimizer, and where it stands."""

    model: TinyLLM
    net: nn.Module
    ddp: Optional[nn.parallel.DistributedDataParallel]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    generator: torch.Generator
    state: TrainState
    config: TrainConfig
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    rank: int = 0
    world: int = 1
    out_dir: Optional[Path] = None  # rank 0's run directory; None: nothing is saved
    saved: list[int] = field(default_factory=list)  # the steps at which last.pt was saved
    t0: float = 0.0  # the clock's reading at step 0

    def from_rank0(self, value: float) -> float:
        """Rank 0's value on every rank: its clock, its validation loss and its Ctrl-C decide for all."""
        if self.ddp is None:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(t, 0)
        return t.item()


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """The saved state; a Muon group saved before TrainConfig.muon_steps existed gets the 5 steps it took."""
    optimizer.load_state_dict(saved)  # the saved groups, hyperparameters included, replace the new ones
    for group in optimizer.param_groups:
        if group.get("muon"):
            group.setdefault("ns_steps", 5)


def start_run(model: TinyLLM, config: TrainConfig, resume: Optional[dict]) -> Run:
    """Put the model on its device with a fresh optimizer, or with the state a checkpoint saved."""
    device = pick_device(config.device)
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if is_distributed() else (0, 1)
    amp_dtype = choose_precision(device, config.dtype)
    model.to(device).train()
    run = Run(model, model, None, make_optimizer(model, config),
              torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
              torch.Generator().manual_seed(config.seed + rank), TrainState(), config, device, amp_dtype, rank, world)
    if world > 1:  # after the model is built (DDP copies rank 0's weights): each rank its own dropout masks
        torch.manual_seed(config.seed + 7919 * rank)
    if resume is not None:
        load_optimizer_state(run.optimizer, resume["optimizer"])
        if resume.get("scaler"):
            run.scaler.load_state_dict(resume["scaler"])
        run.state = resume["train_state"]
        restore_rng_states(resume["rng"], run.generator, device, config, run.state.step, rank, world)
    if config.out_dir and rank == 0:
        run.out_dir = Path(config.out_dir)
        run.out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(run.out_dir)
        run.saved = [run.state.step] if resume is not None else []
    if world > 1:
        run.net = run.ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        run.net = torch.compile(run.net)  # compile the DDP-wrapped model, the order PyTorch recommends
    return run


def data_sources(run: Run, train_ids, val_ids, batch_source, val_loss) -> tuple[Callable, Callable]:
    """fit's batch_source and val_loss: the given ones, or get_batch and evaluate over the token streams."""
    config, block = run.config, run.model.config.block_size
    if batch_source is None:
        train_data = torch.as_tensor(train_ids, dtype=torch.long)
        if len(train_data) <= block + 1:
            raise ValueError(f"the training text has {len(train_data)} tokens, too few for one window of "
                             f"{block}: use more text or a smaller block size")

        def batch_source(generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
            return get_batch(train_data, config.batch_size, block, generator, device)
    if val_loss is None:
        val_data = torch.as_tensor(val_ids, dtype=torch.long)
        if len(val_data) < 2:
            raise ValueError("the validation split has fewer than 2 tokens: use more text")

        def val_loss(model: TinyLLM, whole: bool) -> float:
            return evaluate(model, val_data, block, 64, None if whole else config.eval_windows, run.amp_dtype)
    return batch_source, val_loss


def diverged(run: Run, what: str, at_step: int, lr: float) -> TrainingDiverged:
    """The error for a NaN or infinity: where, at which learning rate, and what is left to resume from."""
    kept = (f"{run.out_dir / 'last.pt'} (step {run.saved[-1]}) is kept, the last good checkpoint" if run.saved
            else "no checkpoint had been saved yet")
    return TrainingDiverged(f"{what} at step {at_step} (learning rate {lr:.2e}): lower --lr, or train in fp32; {kept}")


def accumulate(run: Run, batches: list) -> torch.Tensor:
    """forward_backward (section 9); under DDP the gradients are averaged once, after the last micro-batch.

    DDP all-reduces in every backward; inside no_sync() it only accumulates, so all but the last
    micro-batch of a step run there (one all-reduce per step instead of one per micro-batch).
    """
    if run.ddp is None or len(batches) == 1:
        return forward_backward(run.net, run.scaler, batches, run.amp_dtype)
    per_batch, losses = MicroBatchScaler(run.scaler, len(batches)), []
    for i, batch in enumerate(batches):
        with run.ddp.no_sync() if i < len(batches) - 1 else contextlib.nullcontext():
            losses.append(forward_backward(run.net, per_batch, [batch], run.amp_dtype))
    return torch.stack(losses).mean()


def step(run: Run, batch_source: Callable, lr: float) -> float:
    """One optimizer step, as train_step (section 9) takes it; the loss is the mean over all ranks."""
    batches = [batch_source(run.generator, run.device) for _ in range(run.config.grad_accum)]
    loss = accumulate(run, batches)
    if run.ddp is not None:  # so that every rank logs the same loss and stops on a NaN alike
        torch.distributed.all_reduce(loss)
        loss /= run.world
    value = loss.item()
    if not math.isfinite(value):
        raise diverged(run, f"the loss became {value}", run.state.step + 1, lr)
    optimizer_step(run.model, run.optimizer, run.scaler, lr, run.config.grad_clip)
    run.state.step, run.state.elapsed = run.state.step + 1, time.perf_counter() - run.t0
    run.state.recent_losses.append(value)
    return value


def agree_on_stopping(run: Run, sigint: "StopOnSigint") -> Optional[str]:
    """"done" when the budget is spent, "interrupted" after a Ctrl-C, or None; rank 0 decides for every rank.

    A Ctrl-C in the very last step just lets the run end normally.
    """
    verdict = 2 if run.state.finished(run.config) else 1 if sigint.requested else 0
    return {0: None, 1: "interrupted", 2: "done"}[int(run.from_rank0(verdict))]


def save(run: Run, name: str, done: bool, lr: float, tokenizer: Optional[Tokenizer], meta: Optional[dict]) -> None:
    """Write out_dir/name; every rank takes part (the RNG states are gathered), rank 0 writes."""
    # An update that broke the weights shows only in the next step's loss: check them before
    # saving, or "the last good checkpoint" could hold NaNs.
    if not all(bool(torch.isfinite(p).all()) for p in run.model.parameters()):
        raise diverged(run, "the weights became NaN or infinite", run.state.step, lr)
    rng = rng_states(run.generator, run.device)
    if run.out_dir is not None:
        save_checkpoint(run.out_dir / name, run.model, tokenizer, optimizer=run.optimizer, scaler=run.scaler,
                        train_config=run.config, train_state=run.state, done=done, rng=rng, meta=meta)
        if name == "last.pt":
            run.saved.append(run.state.step)


def after_step(run: Run, stop: Optional[str], val_loss: Callable, lr: float, loss: float, log: Callable,
               tokenizer: Optional[Tokenizer], meta: Optional[dict]) -> None:
    """The checkpoint decision: evaluate every eval_interval steps and at the end; save best.pt when the
    validation loss improves, and last.pt at evaluations, every ckpt_interval steps and when stopping."""
    config, state, done = run.config, run.state, stop == "done"
    evaluating = state.step % config.eval_interval == 0 or done
    if evaluating:  # rank 0 measures, every rank records the same row
        loss_now = run.from_rank0(val_loss(run.model, stop is not None) if run.rank == 0 else 0.0)
        improved = loss_now < state.best_val
        log(record_evaluation(state, config, loss_now, lr, run.model.config.block_size, run.world))
        if improved:
            save(run, "best.pt", done, lr, tokenizer, meta)
    elif state.step % config.log_interval == 0:
        log({"step": state.step, "train_loss": loss, "lr": lr, "seconds": state.elapsed})
    if stop or evaluating or (config.ckpt_interval and state.step % config.ckpt_interval == 0):
        save(run, "last.pt", done, lr, tokenizer, meta)


def progress_bar(run: Run) -> tqdm:
    """A bar over seconds or steps, drawn only on a terminal (in a log or a notebook the loss lines say it all)."""
    config, state, timed = run.config, run.state, bool(run.config.max_time)
    return tqdm(total=int(config.max_time) if timed else config.max_steps,
                initial=int(state.elapsed) if timed else state.step, unit="s" if timed else "step",
                disable=not (config.progress and run.rank == 0 and sys.stderr.isatty()), desc="training",
                dynamic_ncols=True, leave=False,
                bar_format="{l_bar}{bar}| {n}/{total} s [{elapsed}<{remaining}{postfix}]" if timed else None)


def fit(model: TinyLLM, train_ids: Optional[Sequence[int] | torch.Tensor],
        val_ids: Optional[Sequence[int] | torch.Tensor], config: TrainConfig, tokenizer: Optional[Tokenizer] = None,
        resume: Optional[dict] = None, meta: Optional[dict] = None,
        batch_source: Optional[Callable[[torch.Generator, torch.device], tuple[torch.Tensor, torch.Tensor]]] = None,
        val_loss: Optional[Callable[[TinyLLM, bool], float]] = None) -> list[dict]:
    """`train` (section 9) for real runs: the same steps, plus checkpoints, exact resume, Ctrl-C and DDP.

    With config.out_dir set, writes out_dir/last.pt (at evaluations, every ckpt_interval steps and
    at the end, for resuming) and out_dir/best.pt (best validation loss), atomically. Pass `resume`,
    a checkpoint from `load_checkpoint`, to continue a run exactly where it stopped: step, LR
    schedule, optimizer moments and RNGs. Ctrl-C stops at the end of the current step, saves last.pt
    and raises KeyboardInterrupt. Under torchrun each process trains on its own batches and DDP
    averages the gradients. For the same settings it trains exactly as `train` does (a test checks).

    Other data than a token stream (section 14's conversations) comes in through two functions:
    `batch_source(generator, device)` gives one micro-batch (x, y) in place of get_batch over
    train_ids, and `val_loss(model, whole)` the validation loss in place of evaluate over val_ids
    (whole: the final evaluation).
    """
    run = start_run(model, config, resume)
    batch_source, val_loss = data_sources(run, train_ids, val_ids, batch_source, val_loss)
    bar = progress_bar(run)
    show = config.progress and run.rank == 0

    def log(row: dict) -> None:
        if show:
            (tqdm.write if not bar.disable else print)(log_line(row))

    run.t0 = time.perf_counter() - run.state.elapsed
    stop = "done" if run.from_rank0(float(run.state.finished(config))) else None  # a finished run: nothing to do
    with StopOnSigint() as sigint, bar:
        while stop is None:
            lr = lr_at(run.state.step, run.state.progress(config), config)
            loss = step(run, batch_source, lr)
            bar.update(int(run.state.elapsed) - bar.n if config.max_time else 1)
            bar.set_postfix(step=run.state.step, loss=f"{loss:.3f}", refresh=False)  # drawn by update()
            stop = agree_on_stopping(run, sigint)
            after_step(run, stop, val_loss, lr, loss, log, tokenizer, meta)
            # Evaluating and saving count against max_time too; rank 0's clock sets every rank's LR.
            run.state.elapsed = run.from_rank0(time.perf_counter() - run.t0)
    if stop == "interrupted":
        raise KeyboardInterrupt(f"stopped at step {run.state.step}" + ("; last.pt saved" if run.out_dir else ""))
    return run.state.history


def start_distributed(device_name: str) -> torch.device:
    """Under torchrun, join the other processes and return this one's device; otherwise just pick_device.

    torchrun starts one process per GPU (or several on a CPU) and gives each its RANK (0 .. WORLD_SIZE - 1
    over all machines) and LOCAL_RANK (its number on this machine). Process LOCAL_RANK uses GPU
    cuda:(LOCAL_RANK mod the GPUs it can see) and the processes talk over NCCL; on CPUs over gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return pick_device(device_name)
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name.startswith("cuda:"):
        raise ValueError("under torchrun each process uses the GPU cuda:LOCAL_RANK: use --device cuda (or auto)")
    if device_name == "mps":
        raise ValueError("distributed training runs on CUDA GPUs or CPUs, not MPS: use --device cpu")
    if device_name == "cuda":
        device = pick_device(f"cuda:{local_gpu()}")
    else:
        device = pick_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives work on "the current GPU": make it ours
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def local_gpu() -> int:
    """This process's GPU under torchrun: cuda:LOCAL_RANK, one process per GPU, never two on one by accident."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError("--device cuda under torchrun, but this machine has no CUDA GPU that PyTorch can use: "
                         "use --device cpu (the processes then talk over gloo)")
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_world > count and not (count == 1 and os.environ.get("CUDA_VISIBLE_DEVICES")):
        raise ValueError(f"torchrun started {local_world} processes on this machine, which has {count} GPU"
                         f"{'s' if count > 1 else ''}: use --nproc_per_node={count} (one process per GPU)")
    return local_rank % count  # on clusters that show each process its own one GPU (CUDA_VISIBLE_DEVICES), cuda:0


def load_once_per_machine(load: Callable[[], Loaded]) -> Loaded:
    """`load()` on every process, but under torchrun the first process of each machine goes first.

    A first run downloads the dataset into the cache: if every process did so at once, one could
    read a file that another is still writing. The others wait at a barrier, then read the cache.
    """
    if not is_distributed():
        return load()
    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    result, error = None, None
    if first:
        try:
            result = load()
        except Exception as e:  # still reach the barrier, so that the other processes do not wait forever
            error = e
    torch.distributed.barrier()
    if error is not None:
        raise error
    return result if first else load()


def finish_together() -> None:
    """Under torchrun, wait until every process is done (rank 0 reports and samples last), then leave.

    A process that left the group while rank 0 still worked could close gloo's connections under it.
    """
    if is_distributed():
        torch.distributed.barrier()


def same_on_all_ranks(value):
    """Rank 0's `value` (any picklable object) on every process, e.g. the run directory named by its clock."""
    if is_distributed():
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        value = box[0]
    return value
