"""Training runs: checkpoints, exact resume, Ctrl-C and several processes (DDP).

`fit` is the chapter's `train` (tinyllm.py, section 9) for real runs: the same step functions,
plus what a long run needs around them.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from tinyllm import (
    TinyLLM, Tokenizer, TrainConfig, TrainState, choose_precision, evaluate, forward_backward, get_batch,
    log_line, lr_at, make_optimizer, optimizer_step, pick_device, record_evaluation)
from tinyllm_toolkit.files import remove_stale_temp_files, save_checkpoint


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a torch.distributed run (only rank 0 logs and saves)."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0


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
    """Every random state a run depends on, gathered from all processes: batches, dropout (CPU and CUDA)."""
    local = {"data": generator.get_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    states = [local]
    if torch.distributed.is_available() and torch.distributed.is_initialized():  # every rank resumes its own
        states = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(states, local)
    return {"data": [s["data"] for s in states], "cuda": [s["cuda"] for s in states], "torch": torch.get_rng_state()}


def restore_rng_states(rng: dict, generator: torch.Generator, device: torch.device, config: TrainConfig,
                       step: int, rank: int, world: int) -> None:
    """Put back what rng_states saved; on another number of processes, start new batch streams instead."""
    torch.set_rng_state(rng["torch"].cpu())
    if len(rng["data"]) != world:  # resumed on another number of processes: not a replay of the first batches
        generator.manual_seed(config.seed + 1000 * step + rank)
        return
    generator.set_state(rng["data"][rank].cpu())
    cuda = rng.get("cuda") or [None] * world
    if device.type == "cuda" and cuda[rank] is not None:
        torch.cuda.set_rng_state(cuda[rank].cpu(), device)


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
    cfg, device = model.config, pick_device(config.device)
    if batch_source is None:
        train_data = torch.as_tensor(train_ids, dtype=torch.long)
        if len(train_data) <= cfg.block_size + 1:
            raise ValueError(f"the training text has {len(train_data)} tokens, too few for one window of "
                             f"{cfg.block_size}: use more text or a smaller block size")

        def batch_source(generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
            return get_batch(train_data, config.batch_size, cfg.block_size, generator, device)
    if val_loss is None:
        val_data = torch.as_tensor(val_ids, dtype=torch.long)
        if len(val_data) < 2:
            raise ValueError("the validation split has fewer than 2 tokens: use more text")

        def val_loss(model: TinyLLM, whole: bool) -> float:
            return evaluate(model, val_data, cfg.block_size, 64, None if whole else config.eval_windows, amp_dtype)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    amp_dtype = choose_precision(device, config.dtype)
    model.to(device).train()
    optimizer = make_optimizer(model, config)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    generator = torch.Generator().manual_seed(config.seed + rank)
    state = TrainState()
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        state = resume["train_state"]
        restore_rng_states(resume["rng"], generator, device, config, state.step, rank, world)
    out_dir = Path(config.out_dir) if config.out_dir and rank == 0 else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(out_dir)
    net: nn.Module = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)  # compile the DDP-wrapped model, the order PyTorch recommends

    def from_rank0(value: float) -> float:
        """Rank 0's value on every rank (its clock and its validation loss decide for all)."""
        if not distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.broadcast(t, 0)
        return t.item()

    saved = [state.step] if resume is not None and out_dir is not None else []  # steps of last.pt saves

    def diverged(what: str, at_step: int, lr: float) -> TrainingDiverged:
        """The error for a NaN or infinity: where, at which learning rate, and what is left to resume from."""
        kept = (f"{out_dir / 'last.pt'} (step {saved[-1]}) is kept, the last good checkpoint" if saved
                else "no checkpoint had been saved yet")
        return TrainingDiverged(f"{what} at step {at_step} (learning rate {lr:.2e}): lower --lr, or train in "
                                f"fp32; {kept}")

    def save(name: str, done: bool, lr: float) -> None:
        # An update that broke the weights shows only in the next step's loss: check them before
        # saving, or "the last good checkpoint" could hold NaNs.
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise diverged("the weights became NaN or infinite", state.step, lr)
        rng = rng_states(generator, device)  # every rank takes part in the gathering
        if out_dir is not None:
            save_checkpoint(out_dir / name, model, tokenizer, optimizer=optimizer, scaler=scaler, train_config=config,
                            train_state=state, done=done, rng=rng, meta=meta)
            if name == "last.pt":
                saved.append(state.step)

    def is_finished() -> bool:
        return bool(from_rank0(float(state.finished(config))))

    timed = bool(config.max_time)
    show = config.progress and rank == 0
    bar = tqdm(total=int(config.max_time) if timed else config.max_steps,
               initial=int(state.elapsed) if timed else state.step, unit="s" if timed else "step",
               disable=not (show and sys.stderr.isatty()), desc="training", dynamic_ncols=True, leave=False,
               bar_format="{l_bar}{bar}| {n}/{total} s [{elapsed}<{remaining}{postfix}]" if timed else None)
    write = tqdm.write if not bar.disable else print
    t0 = time.perf_counter() - state.elapsed
    last, stopping = is_finished(), False  # stopping: rank 0 saw Ctrl-C, so every rank stops
    with StopOnSigint() as sigint:
        try:
            while not last:
                lr = lr_at(state.step, state.progress(config), config)
                batches = [batch_source(generator, device) for _ in range(config.grad_accum)]
                loss = forward_backward(net, scaler, batches, amp_dtype)
                if distributed:  # the mean over all ranks, so that every rank logs it and stops on a NaN alike
                    torch.distributed.all_reduce(loss)
                    loss /= world
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise diverged(f"the loss became {loss_value}", state.step + 1, lr)
                optimizer_step(model, optimizer, scaler, lr, config.grad_clip)
                state.step, state.elapsed = state.step + 1, time.perf_counter() - t0
                state.recent_losses.append(loss_value)
                bar.update(int(state.elapsed) - bar.n if timed else 1)
                bar.set_postfix(step=state.step, loss=f"{loss_value:.3f}", refresh=False)  # drawn by update()
                finished = is_finished()  # a Ctrl-C in the very last step just lets the run end normally
                stopping = not finished and bool(from_rank0(float(sigint.requested)))
                last = finished or stopping
                evaluating = state.step % config.eval_interval == 0 or (last and not stopping)
                if evaluating:  # rank 0 measures, every rank records the same row
                    loss_now = from_rank0(val_loss(model, last) if rank == 0 else 0.0)
                    improved = loss_now < state.best_val
                    row = record_evaluation(state, config, loss_now, lr, cfg.block_size, world)
                    if show:
                        write(log_line(row))
                    if improved:
                        save("best.pt", done=last and not stopping, lr=lr)
                elif show and state.step % config.log_interval == 0:
                    write(log_line({"step": state.step, "train_loss": loss_value, "lr": lr, "seconds": state.elapsed}))
                if last or evaluating or (config.ckpt_interval and state.step % config.ckpt_interval == 0):
                    save("last.pt", done=last and not stopping, lr=lr)
                # Evaluating and saving count against max_time too; rank 0's clock sets every rank's LR.
                state.elapsed = from_rank0(time.perf_counter() - t0)
        finally:
            bar.close()
    if stopping:
        raise KeyboardInterrupt(f"stopped at step {state.step}; last.pt saved" if out_dir else
                                f"stopped at step {state.step}")
    return state.history


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
    if device_name == "cuda":  # one process per GPU; on clusters that show each process one GPU, cuda:0
        device = pick_device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}")
    else:
        device = pick_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives work on "the current GPU": make it ours
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def same_on_all_ranks(value):
    """Rank 0's `value` (any picklable object) on every process, e.g. the run directory named by its clock."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        value = box[0]
    return value
