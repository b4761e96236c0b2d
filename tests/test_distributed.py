"""The multi-process path's pieces, each checked in two CPU processes over gloo (no torchrun needed).

Each test starts a process group of two with torch.multiprocessing, runs one piece of
tinyllm_toolkit.runs in both processes, and checks what the processes report back: dropout masks
differ by rank, gradient accumulation all-reduces once per step, and the dataset is loaded first by
one process per machine. The errors a wrong device choice gives are checked without processes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import tinyllm
import tinyllm_toolkit.runs as runs
from conftest import call_main, make_corpus


def in_two_processes(tmp_path: Path, work, *args) -> list:
    """Run work(rank, *args) in a gloo group of two processes; return what each rank returned, by rank."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    results = mp.get_context("spawn").Manager().dict()
    processes = mp.spawn(join_and_work, args=(str(tmp_path / "rendezvous"), results, work, args), nprocs=2,
                         join=False)
    deadline = time.monotonic() + 120
    while not processes.join(timeout=1):  # raises if a process failed
        if time.monotonic() > deadline:
            for process in processes.processes:
                process.kill()
            pytest.fail("the two processes did not finish within 120 s")
    return [results[rank] for rank in range(2)]


def join_and_work(rank: int, rendezvous: str, results, work, args) -> None:
    torch.set_num_threads(1)
    os.environ["LOCAL_RANK"] = str(rank)  # as torchrun would set it: both processes on one machine
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        results[rank] = work(rank, *args)
    finally:
        dist.destroy_process_group()


def tiny_setup(grad_accum: int = 1, seed: int = 0, **train) -> tuple[tinyllm.TinyLLM, tinyllm.TrainConfig, torch.Tensor]:
    tok = tinyllm.CharTokenizer.from_text(make_corpus())
    ids = torch.tensor(tok.encode(make_corpus()))
    tinyllm.seed_everything(seed)
    model = tinyllm.TinyLLM(tinyllm.ModelConfig.from_preset("tiny", tok.vocab_size, dropout=0.5))
    config = tinyllm.TrainConfig.from_preset("tiny", device="cpu", grad_accum=grad_accum, progress=False, **train)
    return model, config, ids


def dropout_mask(rank: int) -> torch.Tensor:
    """What a dropout layer draws after start_run, when every process was seeded alike (as the CLI does)."""
    model, config, _ = tiny_setup(seed=0)
    runs.start_run(model, config, None)
    return nn.functional.dropout(torch.ones(64), 0.5)


def weights_after_start(rank: int) -> torch.Tensor:
    """The weights each process trains from, when each built its model from its own seed."""
    model, config, _ = tiny_setup(seed=rank)
    run = runs.start_run(model, config, None)
    return torch.cat([p.detach().flatten() for p in run.model.parameters()])


@pytest.mark.slow
def test_every_rank_draws_its_own_dropout_masks_from_the_same_weights(tmp_path):
    mask0, mask1 = in_two_processes(tmp_path / "masks", dropout_mask)
    assert not torch.equal(mask0, mask1)  # each rank drops its own units
    weights0, weights1 = in_two_processes(tmp_path / "weights", weights_after_start)
    assert torch.equal(weights0, weights1)  # DDP starts every rank from rank 0's weights


def count_all_reduces(rank: int, grad_accum: int, steps: int) -> int:
    """Train `steps` steps with DDP; return how many gradient buckets were all-reduced."""
    calls = []

    def counting_hook(state, bucket):
        calls.append(1)
        return dist.all_reduce(bucket.buffer().div_(2), async_op=True).get_future().then(lambda f: f.value()[0])

    real_ddp = nn.parallel.DistributedDataParallel

    class CountingDDP(real_ddp):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_comm_hook(None, counting_hook)

    nn.parallel.DistributedDataParallel = CountingDDP
    try:
        model, config, ids = tiny_setup(grad_accum, max_steps=steps, eval_interval=1000)
        runs.fit(model, ids[:4000], ids[4000:], config)
    finally:
        nn.parallel.DistributedDataParallel = real_ddp
    return len(calls)


@pytest.mark.slow
def test_gradient_accumulation_all_reduces_once_per_step(tmp_path):
    one = in_two_processes(tmp_path / "one", count_all_reduces, 1, 3)
    four = in_two_processes(tmp_path / "four", count_all_reduces, 4, 3)
    assert one[0] >= 3 and one == four  # the same buckets per step, with 4 micro-batches as with 1


def load_like_a_first_download(rank: int, path: str) -> tuple[str, list[str]]:
    """A loader that, like a first download, writes the cache slowly and unatomically, then reads it."""
    cache, events = Path(path), []

    def load() -> str:
        if not cache.exists():
            events.append("download")
            with open(cache, "w", encoding="utf-8") as f:
                for part in ("First half. ", "Second half."):
                    f.write(part)
                    f.flush()
                    time.sleep(0.5)
        return cache.read_text(encoding="utf-8")

    if rank == 1:
        time.sleep(0.2)  # arrive while rank 0 is in the middle of writing
    return runs.load_once_per_machine(load), events


@pytest.mark.slow
def test_the_dataset_is_downloaded_by_one_process_and_read_whole_by_the_other(tmp_path):
    (text0, events0), (text1, events1) = in_two_processes(tmp_path, load_like_a_first_download,
                                                          str(tmp_path / "data.txt"))
    assert text0 == text1 == "First half. Second half."
    assert events0 == ["download"] and events1 == []


def test_no_cuda_under_torchrun_is_one_clear_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_corpus(), encoding="utf-8")
    code, _, err = call_main(["train", "--data", corpus, "--device", "cuda", "--preset", "tiny"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "no CUDA GPU" in err and "--device cpu" in err


@pytest.mark.parametrize("gpus, local_world, visible, expected", [
    (2, 2, None, None), (1, 2, None, "--nproc_per_node=1"), (4, 8, None, "--nproc_per_node=4"),
    (1, 4, "3", None)])  # a cluster that shows each process its own one GPU
def test_more_processes_than_gpus_is_refused(monkeypatch, gpus, local_world, visible, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    if expected is None:
        assert runs.local_gpu() == 1 % gpus
    else:
        with pytest.raises(ValueError, match=expected):
            runs.local_gpu()


def test_chat_train_under_torchrun_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = call_main(["chat-train", "--preset", "tiny", "--max-steps", "1"], capsys)
    assert code == 1 and "not torchrun" in err and err.count("\n") == 1
