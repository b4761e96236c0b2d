"""The command line end to end: train -> sample on a tiny run, --help, run directories, importing starts nothing."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

import tinyllm
import tinyllm_toolkit.cli
from conftest import REPO, call_main, cli_env

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = ["--preset", "tiny", "--quiet", "--sample-tokens", "40", "--device", "cpu"]  # the same on a GPU machine



def test_train_then_sample_end_to_end(tmp_path, corpus_file, cli, capsys):
    """A real `python tinyllm.py train`, then `sample`, as a user runs them."""
    out = tmp_path / "run"
    r = cli("train", "--data", corpus_file, "--max-steps", "60", "--out", out, *TINY)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    header = r.stdout.splitlines()[0]
    precision = "bfloat16" if tinyllm.cpu_has_bf16() else "float32"  # dtype auto on this CPU
    for word in ("parameters", "tiny preset", "device cpu", precision, "char tokenizer", "train", "val tokens",
                 "60 steps", str(out)):
        assert word in header, (word, header)
    assert "done: step 60, val loss" in r.stdout and "bits/char" in r.stdout
    assert "--- sample" in r.stdout
    assert f"python tinyllm.py sample --ckpt {out}" in r.stdout
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    last = tinyllm.load_checkpoint(out / "last.pt")
    assert last["step"] == 60 and last["done"] and last["meta"]["data"] == str(corpus_file)
    assert last["history"][-1]["val_loss"] < 3.0  # it learned something in 60 steps

    prompt = "The king "
    args = ["sample", "--ckpt", out, "--prompt", prompt, "--max-new-tokens", "50"]
    greedy = cli(*args, "--temperature", "0")
    assert greedy.returncode == 0, greedy.stderr
    best = tinyllm.load_checkpoint(out)  # a run directory means its best.pt
    expected = tinyllm.complete(best["model"], best["tokenizer"], prompt, 50, temperature=0)
    assert greedy.stdout == prompt + expected + "\n"  # the prompt, then exactly the model's continuation

    # the other sampling options, in this process (quicker)
    (ca, a, _), (cb, b, _) = call_main(args + ["--seed", "7"], capsys), call_main(
        args + ["--seed", "7", "--no-cache", "--top-k", "1000"], capsys)
    assert ca == cb == 0
    assert a == b and a.startswith(prompt) and len(a) == len(prompt) + 50 + 1
    code, stopped, _ = call_main(args + ["--temperature", "0", "--stop", expected[5:7]], capsys)
    assert code == 0 and stopped == prompt + expected[:expected.index(expected[5:7])] + "\n"
    code, nucleus, _ = call_main(args + ["--top-p", "0.9", "--seed", "1", "--temperature", "1.2"], capsys)
    assert code == 0 and nucleus.startswith(prompt)


def test_help_for_every_command(capsys):
    code, top, _ = call_main(["--help"], capsys)
    assert code == 0 and "train" in top and "sample" in top
    code, train, _ = call_main(["train", "--help"], capsys)
    assert code == 0
    for option in ("--data", "--tokenizer", "--vocab-size", "--preset", "--max-steps", "--max-time", "--out",
                   "--resume", "--device", "--seed", "--ckpt-interval", "--dtype"):
        assert option in train, option
    code, sample, _ = call_main(["sample", "--help"], capsys)
    assert code == 0
    for option in ("--ckpt", "--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed",
                   "--stop"):
        assert option in sample, option


def test_import_starts_nothing(tmp_path):
    """`import tinyllm` prints nothing, writes nothing, downloads nothing and leaves SIGINT alone."""
    code = ("import signal, sys; import tinyllm; "
            "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler; "
            "assert 'torch.distributed' not in sys.modules or not tinyllm.torch.distributed.is_initialized()")
    import subprocess
    env = cli_env()
    env["TINYLLM_DATA_DIR"] = str(tmp_path / "data")
    r = subprocess.run([sys.executable, "-c", code, str(REPO)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    assert list(tmp_path.iterdir()) == []  # no runs/, no data/


def test_each_run_gets_its_own_directory(tmp_path, corpus_file, monkeypatch, capsys):
    """Without --out, runs go to runs/<date-time>, a fresh one each time (run twice within a second)."""
    argv = ["train", "--data", str(corpus_file), "--max-steps", "2", *TINY]
    monkeypatch.chdir(tmp_path)
    assert tinyllm.main(argv) == 0
    assert tinyllm.main(argv) == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2
    for run in runs:
        assert (run / "last.pt").is_file() and (run / "best.pt").is_file()
        assert tinyllm.load_checkpoint(run / "last.pt")["step"] == 2
    assert tinyllm.main(["train", "--resume"]) == 0  # without --out, --resume takes the newest run
    assert f"the run in {Path('runs') / runs[-1].name} already finished" in capsys.readouterr().out


def test_default_cpu_run_is_time_boxed(tmp_path, corpus_file, monkeypatch, capsys):
    """With no --preset on a CPU: the cpu preset, about two minutes, and a hint on how to train longer."""
    seen = []

    def quick_train(model, train_ids, val_ids, config, **kwargs):
        seen.append(dataclasses.replace(config))
        config.max_steps = 2  # the real loop, cut short: this test checks the settings, not the learning
        return real_train(model, train_ids, val_ids, config, **kwargs)

    real_train = tinyllm.fit
    monkeypatch.setattr(tinyllm_toolkit.cli, "fit", quick_train)
    monkeypatch.setattr(tinyllm.torch.cuda, "is_available", lambda: False)  # a CPU machine, also where a GPU is
    monkeypatch.setattr(tinyllm.torch.backends.mps, "is_available", lambda: False)
    code, stdout, err = call_main(["train", "--data", corpus_file, "--out", tmp_path / "run", "--quiet",
                                   "--sample-tokens", "5"], capsys)
    assert code == 0, err
    config = seen[0]
    assert 60 <= config.max_time <= 150 and config.max_steps >= 10**5  # the clock decides
    assert config.max_time == tinyllm.PRESETS["cpu"]["train"]["max_time"]
    header = stdout.splitlines()[0]
    assert "(cpu preset)" in header and f"or {config.max_time:.0f} s, whichever comes first | out" in header
    assert "train longer for better text: python tinyllm.py train --max-time" in stdout


def test_bpe_run_and_sample_any_text(tmp_path, corpus_file, capsys):
    out = tmp_path / "bpe"
    code, stdout, err = call_main(["train", "--data", corpus_file, "--tokenizer", "bpe", "--vocab-size", "300",
                                   "--max-steps", "5", "--out", out, *TINY], capsys)
    assert code == 0, err
    assert "bpe tokenizer, vocab 300" in stdout
    code, stdout, err = call_main(["sample", "--ckpt", out / "last.pt", "--prompt", "Zebras \u2603 dance",
                                   "--max-new-tokens", "5", "--seed", "1"], capsys)
    assert code == 0, err  # byte-level BPE encodes characters it never saw
    assert stdout.startswith("Zebras \u2603 dance")


def test_cli_default_dataset_uses_the_data_dir(tmp_path, shakespeare_path, capsys):
    """--data defaults to TinyShakespeare, read from TINYLLM_DATA_DIR (no download when the file is there)."""
    code, stdout, err = call_main(["train", "--max-steps", "3", "--out", tmp_path / "run", *TINY], capsys)
    assert code == 0, err
    vocab = len(set(shakespeare_path.read_text(encoding="utf-8")))
    assert f"vocab {vocab}" in stdout
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["meta"]["data"] == "shakespeare"
