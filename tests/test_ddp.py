"""Distributed training: `torchrun --nproc_per_node=2 tinyllm.py train` on the CPU, over gloo.

Three short runs of two processes each: a whole run, a run that is stopped with Ctrl-C part way, and
the resumption of that one, which must end with exactly the weights of the whole run.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tinyllm
from conftest import REPO, cli_env

pytestmark = pytest.mark.slow  # torchrun starts processes: minutes, not seconds

STEPS, STOP_AT = 30, 17
# On CPUs over gloo, pinned: on a GPU machine auto would pick NCCL, and two processes need two GPUs.
TRAIN_ARGS = ["--preset", "tiny", "--max-steps", str(STEPS), "--eval-interval", "10", "--sample-tokens", "20",
              "--device", "cpu"]

# Runs tinyllm's CLI, but on rank 0 the process sends itself SIGINT (Ctrl-C) while drawing the batch of
# step STOP_AT, so training must stop cleanly on both ranks after that step, with last.pt saved.
INTERRUPTING_MAIN = """
import os, signal, sys
import tinyllm
import tinyllm_toolkit.runs

real_get_batch, calls = tinyllm.get_batch, []

def get_batch(*args, **kwargs):
    calls.append(1)
    if len(calls) == {stop_at} and os.environ["RANK"] == "0":
        os.kill(os.getpid(), signal.SIGINT)
    return real_get_batch(*args, **kwargs)

tinyllm_toolkit.runs.get_batch = get_batch  # what fit draws its batches with
sys.exit(tinyllm.main(sys.argv[1:]))
"""


def torchrun(script: Path | str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 script args...`, with the test's own Python."""
    env = cli_env()
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=240)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, corpus_text) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "corpus.txt"
    path.write_text(corpus_text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def whole_run(corpus: Path) -> tuple[Path, subprocess.CompletedProcess]:
    out = corpus.parent / "whole"
    result = torchrun(REPO / "tinyllm.py", "train", "--data", corpus, "--out", out, *TRAIN_ARGS, cwd=corpus.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result


def test_ddp_run_trains_and_its_checkpoint_loads_in_one_process(whole_run):
    out, result = whole_run
    assert "DDP: 2 processes (gloo)" in result.stdout
    assert result.stdout.count("done: step") == 1  # only rank 0 reports
    assert result.stdout.count("--- sample") == 1
    ckpt = tinyllm.load_checkpoint(out)  # a plain, single-process load
    assert ckpt["step"] == STEPS and ckpt["done"]
    history = ckpt["history"]
    assert [row["step"] for row in history] == [10, 20, 30]
    vocab = ckpt["tokenizer"].vocab_size
    assert history[-1]["val_loss"] < history[0]["val_loss"] < math.log(vocab)  # the loss falls
    assert history[-1]["tokens"] == STEPS * 8 * 32 * 2  # both ranks' batches count
    rng = torch.load(out / "last.pt", weights_only=True)["rng"]
    assert len(rng["data"]) == 2 and not torch.equal(*rng["data"])  # each rank draws its own batches
    assert len(rng["torch"]) == 2 and not torch.equal(*rng["torch"])  # and its own dropout masks
    text = tinyllm.complete(ckpt["model"], ckpt["tokenizer"], "The", 30, temperature=0.8, seed=0)
    assert len(text) == 30


def test_ddp_resume_after_ctrl_c_ends_where_the_whole_run_did(whole_run, corpus: Path):
    script = corpus.parent / "interrupting_main.py"
    script.write_text(INTERRUPTING_MAIN.format(repo=str(REPO), stop_at=STOP_AT), encoding="utf-8")
    out = corpus.parent / "stopped"
    stopped = torchrun(script, "train", "--data", corpus, "--out", out, *TRAIN_ARGS, cwd=corpus.parent)
    assert stopped.returncode != 0
    assert "Resume with: python tinyllm.py train --resume" in stopped.stderr
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == STOP_AT and not state["done"]

    resumed = torchrun(REPO / "tinyllm.py", "train", "--resume", "--out", out, "--device", "cpu", cwd=corpus.parent)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming {out} at step {STOP_AT}" in resumed.stdout
    a = torch.load(whole_run[0] / "last.pt", weights_only=True)
    b = torch.load(out / "last.pt", weights_only=True)
    assert b["step"] == STEPS and b["done"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name  # exactly the same training
