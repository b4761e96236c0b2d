"""The command line end to end: train -> sample on a tiny run, --help, run directories, importing starts nothing."""

import sys

import pytest
import torch

import tinyllm
from conftest import REPO, cli_env

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = ["--preset", "tiny", "--quiet", "--sample-tokens", "40"]


def test_train_then_sample_end_to_end(tmp_path, corpus_file, cli):
    out = tmp_path / "run"
    r = cli("train", "--data", corpus_file, "--max-steps", "60", "--out", out, *TINY)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    header = r.stdout.splitlines()[0]
    for word in ("parameters", "tiny preset", "device cpu", "float32", "char tokenizer", "train", "val tokens",
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

    a, b = cli(*args, "--seed", "7"), cli(*args, "--seed", "7", "--no-cache", "--top-k", "1000")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and a.stdout.startswith(prompt) and len(a.stdout) == len(prompt) + 50 + 1
    stopped = cli(*args, "--temperature", "0", "--stop", expected[5:7])
    assert stopped.stdout == prompt + expected[:expected.index(expected[5:7])] + "\n"


def test_help_for_every_command(cli):
    top = cli("--help")
    assert top.returncode == 0 and "train" in top.stdout and "sample" in top.stdout
    train = cli("train", "--help")
    assert train.returncode == 0
    for option in ("--data", "--tokenizer", "--vocab-size", "--preset", "--max-steps", "--max-time", "--out",
                   "--resume", "--device", "--seed", "--ckpt-interval", "--dtype"):
        assert option in train.stdout, option
    sample = cli("sample", "--help")
    assert sample.returncode == 0
    for option in ("--ckpt", "--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed",
                   "--stop"):
        assert option in sample.stdout, option


def test_import_starts_nothing(tmp_path):
    """`import tinyllm` prints nothing, writes nothing, downloads nothing and leaves SIGINT alone."""
    code = ("import signal, sys; sys.path.insert(0, sys.argv[1]); import tinyllm; "
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


def test_each_run_gets_its_own_directory(tmp_path, corpus_file, monkeypatch):
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


def test_usage_errors_are_one_line(cli):
    for args in ([], ["fly"], ["train", "--max-steps", "many"], ["sample"]):
        r = cli(*args)
        assert r.returncode == 2, args
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], r.stderr
        assert "tinyllm.py tinyllm.py" not in lines[0]


def test_bpe_run_and_sample_any_text(tmp_path, corpus_file, cli):
    out = tmp_path / "bpe"
    r = cli("train", "--data", corpus_file, "--tokenizer", "bpe", "--vocab-size", "300", "--max-steps", "5",
            "--out", out, *TINY)
    assert r.returncode == 0, r.stderr
    assert "bpe tokenizer, vocab 300" in r.stdout
    s = cli("sample", "--ckpt", out / "last.pt", "--prompt", "Zebras ☃ dance", "--max-new-tokens", "5", "--seed", "1")
    assert s.returncode == 0, s.stderr  # byte-level BPE encodes characters it never saw
    assert s.stdout.startswith("Zebras ☃ dance")


def test_cli_default_dataset_uses_the_data_dir(tmp_path, shakespeare_path, cli):
    """--data defaults to TinyShakespeare, read from TINYLLM_DATA_DIR (no download when the file is there)."""
    r = cli("train", "--max-steps", "3", "--out", tmp_path / "run", *TINY)
    assert r.returncode == 0, r.stderr
    vocab = len(set(shakespeare_path.read_text(encoding="utf-8")))
    assert f"vocab {vocab}" in r.stdout
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["meta"]["data"] == "shakespeare"
