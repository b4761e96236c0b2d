"""Robustness: bad input gives one clear line, interrupted training loses nothing, and resuming is exact.

The table of bad inputs runs `tinyllm.main(argv)` in this process (what `python tinyllm.py` calls,
without paying for a Python start per case); a sample of it also runs as real subprocesses, and the
kill/Ctrl-C tests always do.
"""

import errno
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tinyllm
from conftest import REPO, assert_same_weights, call_main, cli_env, run_cli, without_seconds

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = ["--preset", "tiny", "--quiet", "--sample-tokens", "5"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, corpus_text) -> dict:
    """A finished tiny run and a zoo of broken files, shared by the table below."""
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("bad")
    (d / "corpus.txt").write_text(corpus_text, encoding="utf-8")
    run = d / "run"
    assert tinyllm.main(["train", "--data", str(d / "corpus.txt"), "--max-steps", "10", "--out", str(run), *TINY]) == 0
    (d / "empty.txt").write_bytes(b"")
    (d / "latin1.txt").write_bytes("Fran\u00e7ois et \u00c9lodie, caf\u00e9 cr\u00e8me. ".encode("latin-1") * 50)
    (d / "short.txt").write_text("Too short for a window.\n", encoding="utf-8")
    (d / "folder").mkdir()
    data = (run / "last.pt").read_bytes()
    (d / "truncated.pt").write_bytes(data[:len(data) // 2])
    (d / "notckpt.pt").write_text("just some text\n", encoding="utf-8")
    raw = torch.load(run / "last.pt", weights_only=True)
    raw["version"] = 99
    torch.save(raw, d / "v99.pt")
    (d / "empty-run").mkdir()
    return {"dir": d, "corpus": d / "corpus.txt", "run": run}



def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    assert code not in (0, None), f"exit code {code}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"


# (id, argv with {dir}, {corpus} and {run} filled in, a regex the error line must match)
BAD_INPUT = [
    ("data-missing", "train --data {dir}/nope.txt", r"no such file: .*nope\.txt"),
    ("data-directory", "train --data {dir}/folder", r"is a directory"),
    ("data-empty", "train --data {dir}/empty.txt", r"is empty"),
    ("data-not-utf8", "train --data {dir}/latin1.txt", r"not UTF-8"),
    ("data-too-short", "train --data {dir}/short.txt", r"too few for one window"),
    ("bpe-vocab-below-256", "train --data {corpus} --tokenizer bpe --vocab-size 100", r"at least 256"),
    ("bpe-vocab-too-big", "train --data {corpus} --tokenizer bpe --vocab-size 50000", r"supports only \d+ tokens"),
    ("unknown-tokenizer", "train --data {corpus} --tokenizer words", r"unknown tokenizer 'words'"),
    ("unknown-preset", "train --data {corpus} --preset huge", r"unknown preset 'huge'"),
    ("unknown-device-train", "train --data {corpus} --device tpu", r"unknown device 'tpu'"),
    ("unknown-dtype", "train --data {corpus} --dtype fp8", r"unknown dtype 'fp8'"),
    ("max-steps-zero", "train --data {corpus} --max-steps 0", r"max_steps must be at least 1"),
    ("max-time-negative", "train --data {corpus} --max-time -5", r"max_time must be a positive"),
    ("batch-size-zero", "train --data {corpus} --batch-size 0", r"batch_size must be at least 1"),
    ("lr-negative", "train --data {corpus} --lr -0.1", r"learning rate must be a positive"),
    ("eval-interval-zero", "train --data {corpus} --eval-interval 0", r"eval_interval must be at least 1"),
    ("sample-tokens-negative", "train --data {corpus} --sample-tokens -1", r"sample-tokens must be >= 0"),
    ("max-steps-not-a-number", "train --max-steps many", r"invalid int value: 'many'.*tinyllm\.py train --help"),
    ("resume-nothing-in-out", "train --resume --out {dir}/empty-run", r"nothing to resume"),
    ("resume-missing-out", "train --resume --out {dir}/no-such-run", r"nothing to resume"),
    ("out-holds-a-run", "train --data {corpus} --out {run}", r"already holds a run.*--resume"),
    ("prompt-unseen-chars", "sample --ckpt {run} --prompt Zebra\u2603", r"character\(s\) 'Z\u2603' not in"),
    ("temperature-negative", "sample --ckpt {run} --temperature -1", r"temperature must be >= 0"),
    ("top-k-zero", "sample --ckpt {run} --top-k 0", r"top_k must be at least 1"),
    ("top-p-zero", "sample --ckpt {run} --top-p 0", r"top_p must be in \(0, 1\]"),
    ("top-p-above-one", "sample --ckpt {run} --top-p 1.5", r"top_p must be in \(0, 1\]"),
    ("max-new-tokens-negative", "sample --ckpt {run} --max-new-tokens -1", r"max_new_tokens must be >= 0"),
    ("unknown-device-sample", "sample --ckpt {run} --device gpu", r"unknown device 'gpu'"),
    ("ckpt-missing", "sample --ckpt {dir}/nope.pt", r"no checkpoint at"),
    ("ckpt-empty-dir", "sample --ckpt {dir}/empty-run", r"no checkpoint at"),
    ("ckpt-truncated", "sample --ckpt {dir}/truncated.pt", r"cannot load checkpoint"),
    ("ckpt-not-a-checkpoint", "sample --ckpt {dir}/notckpt.pt", r"cannot load checkpoint"),
    ("ckpt-wrong-version", "sample --ckpt {dir}/v99.pt", r"format version 99.*reads version 1"),
    ("no-command", "", r"required.*\(see: python tinyllm\.py --help\)"),
    ("unknown-command", "fly", r"invalid choice: 'fly'.*\(see: python tinyllm\.py --help\)"),
    ("sample-without-ckpt", "sample", r"required: --ckpt.*\(see: python tinyllm\.py sample --help\)"),
]


# Put first, so that a case's own options override them: if a case wrongly went ahead, it would stay quick.
QUICK = {"train": ["--preset", "tiny", "--max-steps", "3", "--quiet", "--sample-tokens", "5"],
         "sample": ["--max-new-tokens", "5"]}


def argv_of(template: str, files: dict) -> list[str]:
    argv = [part.format(dir=files["dir"], corpus=files["corpus"], run=files["run"]) for part in template.split()]
    return argv[:1] + QUICK.get(argv[0] if argv else "", []) + argv[1:]


@pytest.mark.parametrize("template, pattern", [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_one_clear_line(files, capsys, monkeypatch, tmp_path, template, pattern):
    monkeypatch.chdir(tmp_path)  # a run without --out would go to ./runs: keep it in the test's folder
    code, _, err = call_main(argv_of(template, files), capsys)
    assert_one_line_error(code, err, pattern)


@pytest.mark.parametrize("case", ["data-not-utf8", "prompt-unseen-chars"])
def test_bad_input_in_a_real_process(files, tmp_path, case):
    """The same, as a user sees it: a real `python tinyllm.py` process."""
    _, template, pattern = next(c for c in BAD_INPUT if c[0] == case)
    r = run_cli(*argv_of(template, files), cwd=tmp_path)
    assert_one_line_error(r.returncode, r.stderr, pattern)


def test_resume_with_nothing_anywhere(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here
    code, _, err = call_main(["train", "--resume"], capsys)
    assert_one_line_error(code, err, r"nothing to resume: no runs/\*/last\.pt here")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["train", "sample"])
def test_cuda_where_there_is_none(files, capsys, command):
    argv = (["train", "--data", files["corpus"], "--out", files["dir"] / "cuda-run"] if command == "train"
            else ["sample", "--ckpt", files["run"]])
    code, _, err = call_main(argv + ["--device", "cuda"], capsys)
    assert_one_line_error(code, err, r"CUDA is not available.*--device cpu")


def test_refused_run_leaves_the_old_one_untouched(files, capsys):
    before = (files["run"] / "last.pt").read_bytes()
    code, _, err = call_main(["train", "--data", files["corpus"], "--out", files["run"], *TINY], capsys)
    assert_one_line_error(code, err, r"already holds a run: continue it with --resume, or choose another --out")
    assert (files["run"] / "last.pt").read_bytes() == before


def test_resume_a_finished_run_says_so(files, capsys):
    stray = files["run"] / ".last.pt.x1y2z3.tmp"
    stray.write_bytes(b"left by a crash")
    code, out, err = call_main(["train", "--resume", "--out", files["run"], "--quiet"], capsys)
    assert code == 0, err
    assert "already finished at step 10" in out and "nothing to resume" in out
    assert not stray.exists()  # cleaned up as the next run started


def test_nan_loss_stops_with_step_and_lr(tmp_path, corpus_file, capsys):
    out = tmp_path / "run"
    code, _, err = call_main(["train", "--data", corpus_file, "--out", out, "--lr", "1e6", "--max-steps", "50",
                              "--ckpt-interval", "1", *TINY], capsys)
    assert_one_line_error(code, err, r"(NaN|nan|inf).* at step \d+ \(learning rate \d\.\d\de\+\d\d\).*lower --lr")
    failed_at = int(re.search(r"at step (\d+)", err).group(1))
    kept = tinyllm.load_checkpoint(out / "last.pt")
    assert 1 <= kept["step"] <= failed_at
    assert f"(step {kept['step']}) is kept" in err
    assert all(torch.isfinite(p).all() for p in kept["model"].parameters())
    assert not list(out.glob(".*.tmp"))


# --- nothing lost: kill -9, Ctrl-C, stray temp files ------------------------------------------------

def start(args: list, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "tinyllm.py"), *map(str, args)], cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Wait until `path` exists; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.01)
    return True




@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path, corpus_file, capsys):
    # On the CPU, pinned: exact resume is checked bit for bit, and CUDA kernels need not be deterministic.
    args = ["train", "--data", corpus_file, "--max-steps", "120", "--eval-interval", "30", "--device", "cpu", *TINY]
    code, _, err = call_main(args + ["--out", tmp_path / "whole"], capsys)  # the uninterrupted run, for reference
    assert code == 0, err
    args += ["--ckpt-interval", "1"]  # saving often changes nothing in the numbers, only what a kill can lose
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    out = tmp_path / "killed"
    proc, kills, log = start(args + ["--out", out], tmp_path), 0, []
    while kills < 2:
        if not wait_for(out / "last.pt", proc) or proc.poll() is not None:
            break
        time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()  # SIGKILL: no handler, no cleanup, possibly in the middle of writing a checkpoint
        proc.communicate()
        kills += 1
        state = torch.load(out / "last.pt", weights_only=True)  # the rename is atomic: always a whole file
        log.append(state["step"])
        proc = start(["train", "--resume", "--out", out, "--quiet", "--device", "cpu"], tmp_path)
        if state["done"]:
            break
    stdout, stderr = proc.communicate(timeout=300)
    context = f"(random seed {seed}, killed at checkpoint steps {log})"
    assert proc.returncode == 0, f"{stderr} {context}"
    assert "Traceback" not in stderr
    assert kills >= 1, f"training ended before the first kill {context}"
    resumed = log[-1]
    assert f"resuming {out} at step {resumed}" in stdout or "already finished" in stdout, f"{stdout} {context}"
    whole, killed = tinyllm.load_checkpoint(tmp_path / "whole" / "last.pt"), tinyllm.load_checkpoint(out / "last.pt")
    assert killed["step"] == 120 and killed["done"], context
    assert_same_weights(killed["model"], whole["model"])
    assert without_seconds(killed["history"]) == without_seconds(whole["history"]), context
    assert not list(out.glob(".*.tmp")), context


def test_ctrl_c_saves_and_says_how_to_resume(tmp_path, corpus_file, capsys):
    out = tmp_path / "run"
    proc = start(["train", "--data", corpus_file, "--max-steps", "80", "--ckpt-interval", "5", "--out", out, *TINY],
                 tmp_path)
    assert wait_for(out / "last.pt", proc), proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"interrupted: last.pt saved in {out}" in stderr
    assert f"python tinyllm.py train --resume --out {out}" in stderr
    state = tinyllm.load_checkpoint(out / "last.pt")
    assert 1 <= state["step"] < 80 and not state["done"]
    stray = out / ".best.pt.crash1.tmp"
    stray.write_bytes(b"half a file")
    code, stdout, err = call_main(["train", "--resume", "--out", out, "--quiet", "--sample-tokens", "5"], capsys)
    assert code == 0, err
    assert f"resuming {out} at step {state['step']}" in stdout and "done: step 80" in stdout
    assert not stray.exists()
    history = tinyllm.load_checkpoint(out / "last.pt")["history"]
    assert history[-1]["step"] == 80 and [r["step"] for r in history] == sorted({r["step"] for r in history})


def test_stray_temp_file_is_removed_by_a_fresh_run(tmp_path, corpus_file, capsys):
    out = tmp_path / "run"
    out.mkdir()
    stray = out / ".last.pt.abcdef.tmp"
    stray.write_bytes(b"half a checkpoint")
    code, _, err = call_main(["train", "--data", corpus_file, "--max-steps", "2", "--out", out, *TINY], capsys)
    assert code == 0, err
    assert not stray.exists() and (out / "last.pt").is_file()


# --- files that are not checkpoints, or are cut short: say which, and what to do --------------------------

def test_a_file_that_is_not_a_checkpoint_is_called_that(files, capsys, tmp_path):
    """A text file (or a plain pickle) given as --ckpt: "not a PyTorch checkpoint", not the wording for a hostile pickle."""
    readme = tmp_path / "README.md"
    readme.write_bytes((REPO / "README.md").read_bytes())
    tokenizer = tmp_path / "tokenizer.json"
    tinyllm.load_checkpoint(files["run"])["tokenizer"].save(tokenizer)
    for path in [files["dir"] / "notckpt.pt", readme, tokenizer]:
        before = path.read_bytes()
        code, out, err = call_main(["sample", "--ckpt", path, "--max-new-tokens", "5"], capsys)
        assert_one_line_error(code, err, rf"cannot load checkpoint {re.escape(str(path))}: it is not a PyTorch "
                                         r"checkpoint .*give a \.pt file or a run directory")
        assert "unpickles" not in err and out == "" and path.read_bytes() == before


def test_a_plain_pickle_is_not_a_checkpoint_and_gives_one_line(tmp_path):
    """torch warns about a pickle it will not load; in a real process that warning must not reach the user."""
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))  # protocol 4+: torch warns before refusing it
    r = run_cli("sample", "--ckpt", path, cwd=tmp_path)
    assert_one_line_error(r.returncode, r.stderr, r"data\.pkl: it is not a PyTorch checkpoint")


def test_a_truncated_checkpoint_is_called_that(files, capsys):
    """Cut anywhere (torch says "[Errno 22] Invalid argument" for some cuts, "central directory" for others)."""
    data = (files["run"] / "last.pt").read_bytes()
    path = files["dir"] / "cut.pt"
    for size in [*range(0, len(data), len(data) // 64), len(data) - 1]:
        path.write_bytes(data[:size])
        with pytest.raises(ValueError, match=rf"cannot load checkpoint .*cut\.pt: the file is truncated or corrupt "
                                             rf"\({size:,} bytes; was a copy cut short\?\): copy it again"):
            tinyllm.load_checkpoint(path)
    code, out, err = call_main(["sample", "--ckpt", files["dir"] / "truncated.pt"], capsys)
    assert_one_line_error(code, err, r"truncated\.pt: the file is truncated or corrupt .*copy it again, or use the "
                                     r"run's other checkpoint \(best\.pt or last\.pt\)")
    assert "Errno" not in err and out == ""


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_pickle_that_names_a_function_keeps_the_hostile_pickle_wording(tmp_path, how):
    path = tmp_path / "x.pt"
    if how == "torch.save":
        torch.save({"format": tinyllm.CHECKPOINT_FORMAT, "version": 1, "f": print}, path)
    else:
        path.write_bytes(pickle.dumps({"f": print}, protocol=2))  # what an old torch.save wrote: a pickle
    with pytest.raises(ValueError, match="it holds objects other than tensors and plain data, which tinyllm never "
                                         "unpickles"):
        tinyllm.load_checkpoint(path)


# --- --out that cannot hold a run, and a disk that fills up: which path, what to do, nothing lost -----------

@pytest.mark.parametrize("out", ["README.md", "README.md/run"])
def test_out_where_a_file_is_says_so_before_any_work(tmp_path, corpus_file, capsys, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# my notes\n", encoding="utf-8")
    code, stdout, err = call_main(["train", "--data", corpus_file, "--out", out, *TINY], capsys)
    assert_one_line_error(code, err, rf"--out {re.escape(out)} cannot hold a run: README\.md is a file, not a folder; "
                                     r"choose another --out, e.g\. runs/my-run$")
    assert stdout == ""  # refused before the data was read or a model built
    assert readme.read_text(encoding="utf-8") == "# my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "corpus.txt"]


def test_out_in_a_folder_you_cannot_write_says_so_before_any_work(tmp_path, corpus_file, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: pretend not to be root
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: real_access(p, mode) and Path(p) != locked)
    try:
        code, stdout, err = call_main(["train", "--data", corpus_file, "--out", locked / "run", *TINY], capsys)
    finally:
        locked.chmod(0o755)
    assert_one_line_error(code, err, rf"--out .*locked/run cannot hold a run: {re.escape(str(locked))} is not writable "
                                     r"for you; choose an --out folder you can write to$")
    assert stdout == "" and list(locked.iterdir()) == []


def full_disk_after(n: int, out: Path, kept: dict):
    """An os.fsync that works n - 1 times, then fails as a full disk does (ENOSPC), keeping a copy of last.pt."""
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) >= n:
            kept.setdefault("last.pt", (out / "last.pt").read_bytes() if (out / "last.pt").exists() else None)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    return fsync


def test_a_full_disk_keeps_last_pt_and_says_how_to_go_on(tmp_path, corpus_file, capsys, monkeypatch):
    out, kept = tmp_path / "run", {}
    monkeypatch.setattr(os, "fsync", full_disk_after(4, out, kept))  # saves 1-3 (steps 1-3) work, the 4th fails
    args = ["train", "--data", corpus_file, "--out", out, "--max-steps", "20", "--ckpt-interval", "1", *TINY]
    code, _, err = call_main(args, capsys)
    assert_one_line_error(code, err, rf"cannot write {re.escape(str(out / 'last.pt'))} \(No space left on device\); "
                                     r"the previous last\.pt is intact: free some space\. Then resume with: python "
                                     rf"tinyllm\.py train --resume --out {re.escape(str(out))}$")
    assert (out / "last.pt").read_bytes() == kept["last.pt"]  # byte for byte what was there before the failed save
    assert tinyllm.load_checkpoint(out / "last.pt")["step"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["last.pt"]  # no temporary file left behind
    monkeypatch.undo()  # space was freed: the run goes on from step 3 and finishes
    code, stdout, err = call_main(["train", "--resume", "--out", out, "--quiet", "--sample-tokens", "5"], capsys)
    assert code == 0, err
    assert f"resuming {out} at step 3" in stdout and "done: step 20" in stdout


def test_a_full_disk_before_the_first_save_in_a_real_process(tmp_path, corpus_file):
    """The same, as a user sees it (a real process whose os.fsync fails); nothing saved yet, so nothing to resume."""
    out = tmp_path / "run"
    wrapper = ("import errno, os, runpy, sys\n"
               "def fsync(fd): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
               "os.fsync = fsync\n"
               "sys.argv = sys.argv[1:]\n"
               "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", wrapper, str(REPO / "tinyllm.py"), "train", "--data", str(corpus_file),
                        "--out", str(out), "--max-steps", "5", "--ckpt-interval", "1", *TINY],
                       cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert_one_line_error(r.returncode, r.stderr, rf"cannot write {re.escape(str(out / 'last.pt'))} \(No space left "
                                                  r"on device\): free some space$")
    assert list(out.iterdir()) == []


def test_a_failed_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    """Every file the toolkit writes goes through atomic_write_bytes: a checkpoint saved from the API, say."""
    path = tmp_path / "m.pt"
    model = tinyllm.TinyLLM(tinyllm.ModelConfig.from_preset("tiny", 3))
    tinyllm.save_checkpoint(path, model)
    before = path.read_bytes()
    monkeypatch.setattr(os, "fsync", full_disk_after(1, tmp_path, {}))
    with pytest.raises(OSError, match=r"^cannot write .*m\.pt \(No space left on device\); the previous m\.pt "
                                      r"is intact: free some space$") as caught:
        tinyllm.save_checkpoint(path, tinyllm.TinyLLM(tinyllm.ModelConfig.from_preset("tiny", 4)))
    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    monkeypatch.undo()
    with pytest.raises(OSError, match=r"^cannot write .*m\.pt/x\.pt \(File exists\): .*m\.pt is a file, not "
                                      r"a folder$"):
        tinyllm.save_checkpoint(path / "x.pt", model)


# --- a prompt that is not valid Unicode ------------------------------------------------------------------

def test_a_prompt_with_a_lone_surrogate_is_one_clear_line(files, capsys, tmp_path):
    """Bytes that are not UTF-8 on the command line reach Python as lone surrogates ("caf\\xe9" -> "caf\\udce9")."""
    message = (r"the text holds a lone surrogate '\\udce9' at position 3, which is not valid Unicode text \(bytes that "
               r"were not UTF-8\?\): clean it first")
    code, out, err = call_main(["sample", "--ckpt", files["run"], "--prompt", "caf\udce9", "--max-new-tokens", "5"],
                               capsys)
    assert_one_line_error(code, err, message)
    assert out == ""
    r = subprocess.run([sys.executable, str(REPO / "tinyllm.py"), "sample", "--ckpt", str(files["run"]), "--prompt",
                        b"caf\xe9"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert_one_line_error(r.returncode, r.stderr, message)


def test_a_checkpoint_whose_tokenizer_has_a_hostile_split_pattern(files, capsys):
    raw = torch.load(files["run"] / "last.pt", weights_only=True)
    raw["tokenizer"] = {"type": "bpe", "merges": [], "special_tokens": {}, "pattern": r"(a+)+$"}
    path = files["dir"] / "hostile-pattern.pt"
    torch.save(raw, path)
    code, out, err = call_main(["sample", "--ckpt", path, "--prompt", "a" * 40 + "b"], capsys)
    assert_one_line_error(code, err, r"hostile-pattern\.pt: bad split pattern in BPE tokenizer: tinyllm reads only "
                                     r"its own \(SPLIT_PATTERN, or the one before it\)")
    assert out == ""
