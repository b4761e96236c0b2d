"""Checkpoints: round trip, plain data only, exact resume, best/last, and files that must be refused."""

import io
import os
import pickle
import signal
import zipfile

import pytest
import torch

import tinyllm
import tinyllm_toolkit.runs
from tinyllm import (BPETokenizer, CharTokenizer, ModelConfig, TinyLLM, TrainConfig, load_checkpoint,
                     fit, save_checkpoint, split_train_val)
from conftest import assert_same_weights, tiny_config, tiny_model, without_seconds

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def data(corpus_text):
    tok = CharTokenizer.from_text(corpus_text)
    return (tok, *split_train_val(tok.encode(corpus_text)))






# --- round trip -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_save_load_gives_identical_logits(tmp_path, corpus_text, kind):
    tok = CharTokenizer.from_text(corpus_text) if kind == "char" else BPETokenizer.train(corpus_text, 300)
    model = tiny_model(tok.vocab_size)
    with torch.no_grad():
        model.norm.weight.mul_(1.5)  # not the init: a load that silently re-initialised would show
    save_checkpoint(tmp_path / "m.pt", model, tok, step=7)
    ckpt = load_checkpoint(tmp_path / "m.pt")
    idx = torch.tensor([tok.encode("The king speaks of the sea.")])
    torch.testing.assert_close(ckpt["model"](idx)[0], model(idx)[0], rtol=0, atol=0)
    assert ckpt["model"].config == model.config
    assert ckpt["tokenizer"].encode(corpus_text[:500]) == tok.encode(corpus_text[:500])
    assert ckpt["step"] == 7
    assert ckpt["model"].head.weight is ckpt["model"].embed.weight  # still tied after loading


def is_plain(x) -> bool:
    if isinstance(x, dict):
        return all(isinstance(k, (str, int)) and is_plain(v) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return all(is_plain(v) for v in x)
    return x is None or isinstance(x, (str, int, float, bool, torch.Tensor))


def test_training_checkpoint_is_plain_data(tmp_path, data):
    tok, train_ids, val_ids = data
    fit(tiny_model(tok.vocab_size), train_ids, val_ids, tiny_config(max_steps=3, out_dir=str(tmp_path)),
          tokenizer=tok, meta={"data": "corpus"})
    raw = torch.load(tmp_path / "last.pt", weights_only=True)  # never runs code from the file
    assert raw["format"] == tinyllm.CHECKPOINT_FORMAT and raw["version"] == tinyllm.CHECKPOINT_VERSION
    assert is_plain(raw)
    for key in ("model", "model_config", "tokenizer", "optimizer", "step", "history", "train_config", "rng",
                "best_val", "meta"):
        assert key in raw, key
    assert isinstance(raw["model_config"], dict) and isinstance(raw["tokenizer"], dict)


def test_load_run_directory_means_best(tmp_path, data):
    tok, train_ids, val_ids = data
    history = fit(tiny_model(tok.vocab_size), train_ids, val_ids,
                    tiny_config(max_steps=40, eval_interval=10, lr=3e-2, out_dir=str(tmp_path)), tokenizer=tok)
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()
    best, last = load_checkpoint(tmp_path), load_checkpoint(tmp_path / "last.pt")
    best_row = min(history, key=lambda r: r["val_loss"])
    assert best["step"] == best_row["step"] and best["best_val"] == best_row["val_loss"]
    assert last["step"] == 40 and last["done"] is True
    assert best["history"][-1]["step"] == best["step"]
    assert not list(tmp_path.glob(".*.tmp"))


# --- exact resume -------------------------------------------------------------------------------------

class Crash(Exception):
    pass


def crash_at_batch(monkeypatch, n: int, action=None) -> None:
    """Make the n-th call of get_batch crash (or do `action` instead): a kill at an arbitrary moment."""
    calls = []
    real = tinyllm.get_batch

    def get_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            if action is None:
                raise Crash(f"simulated crash at batch {n}")
            action()
        return real(*args, **kwargs)

    monkeypatch.setattr(tinyllm_toolkit.runs, "get_batch", get_batch)  # what fit draws its batches with


@pytest.mark.parametrize("dtype, grad_accum, crash_step, optimizer",
                         [("fp32", 1, 9, "adamw"), ("fp32", 1, 25, "adamw"), ("fp16", 2, 19, "adamw"),
                          ("fp32", 1, 19, "muon")])
def test_crash_and_resume_matches_an_uninterrupted_run(tmp_path, data, monkeypatch, dtype, grad_accum, crash_step,
                                                        optimizer):
    tok, train_ids, val_ids = data
    settings = dict(max_steps=30, eval_interval=10, ckpt_interval=7, dtype=dtype, grad_accum=grad_accum,
                    batch_size=4, seed=3, optimizer=optimizer)
    whole = tiny_model(tok.vocab_size)
    expected = fit(whole, train_ids, val_ids, tiny_config(out_dir=str(tmp_path / "a"), **settings), tokenizer=tok)

    crash_at_batch(monkeypatch, (crash_step - 1) * grad_accum + 1)
    with pytest.raises(Crash):
        fit(tiny_model(tok.vocab_size), train_ids, val_ids, tiny_config(out_dir=str(tmp_path / "b"), **settings),
              tokenizer=tok)
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "b" / "last.pt")
    assert state["step"] == max(s for s in range(1, crash_step) if s % 7 == 0 or s % 10 == 0)
    history = fit(state["model"], train_ids, val_ids, state["train_config"], tokenizer=state["tokenizer"],
                    resume=state)
    assert_same_weights(state["model"], whole)
    assert without_seconds(history) == without_seconds(expected)
    last_a, last_b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert_same_weights(last_a["model"], last_b["model"])
    assert last_b["step"] == 30 and last_b["done"]
    for a, b in zip(last_a["optimizer"]["state"].values(), last_b["optimizer"]["state"].values()):
        assert a.keys() == b.keys() and {"exp_avg", "momentum"} & a.keys()  # AdamW's moments, or Muon's momentum
        assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)


@pytest.mark.parametrize("at_step", [13, 20])
def test_sigint_saves_last_and_resume_is_exact(tmp_path, data, monkeypatch, at_step):
    """Ctrl-C finishes the step in flight, saves last.pt and stops; resuming gives the uninterrupted run.

    Ctrl-C during the very last step just lets the run finish (with its final evaluation).
    """
    tok, train_ids, val_ids = data
    settings = dict(max_steps=20, eval_interval=10, eval_windows=2, seed=4)
    whole = tiny_model(tok.vocab_size)
    expected = fit(whole, train_ids, val_ids, tiny_config(**settings))

    crash_at_batch(monkeypatch, at_step, action=lambda: os.kill(os.getpid(), signal.SIGINT))
    model = tiny_model(tok.vocab_size)
    try:
        history = fit(model, train_ids, val_ids, tiny_config(out_dir=str(tmp_path), **settings), tokenizer=tok)
        interrupted = False
    except KeyboardInterrupt:
        interrupted = True
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler was put back
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == at_step  # the step in flight was finished, then saved
    if at_step < settings["max_steps"]:
        assert interrupted and not state["done"]
        model = state["model"]
        history = fit(model, train_ids, val_ids, state["train_config"], tokenizer=tok, resume=state)
    else:
        assert not interrupted and state["done"]
    assert_same_weights(model, whole)
    assert without_seconds(history) == without_seconds(expected)
    assert load_checkpoint(tmp_path / "last.pt")["done"]


def test_stale_temp_files_are_removed_when_training_starts(tmp_path, data):
    tok, train_ids, val_ids = data
    stray = tmp_path / ".last.pt.abc123.tmp"
    stray.write_bytes(b"half a checkpoint")
    fit(tiny_model(tok.vocab_size), train_ids, val_ids, tiny_config(max_steps=1, out_dir=str(tmp_path)))
    assert not stray.exists()
    assert (tmp_path / "last.pt").is_file()


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    """A failure between writing and renaming keeps the old file whole and leaves no temp file behind."""
    path = tmp_path / "last.pt"
    tinyllm.atomic_write_bytes(path, b"old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        tinyllm.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# --- files that must be refused -------------------------------------------------------------------

@pytest.fixture
def good_ckpt(tmp_path, data) -> tinyllm.Path:
    tok = data[0]
    path = tmp_path / "good.pt"
    save_checkpoint(path, tiny_model(tok.vocab_size), tok, step=1)
    return path


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path)  # a directory without best.pt or last.pt


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.99])
def test_truncated_checkpoint(good_ckpt, keep):
    data = good_ckpt.read_bytes()
    good_ckpt.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        load_checkpoint(good_ckpt)


@pytest.mark.parametrize("content", [b"hello, I am a text file\n", b"\x00" * 100, "\u00e9t\u00e9".encode()])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("payload", [torch.zeros(3), [1, 2], {"model": {}}, {"format": "other", "version": 1}])
def test_torch_file_that_is_not_a_tinyllm_checkpoint(tmp_path, payload):
    path = tmp_path / "x.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match="not a tinyllm checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("version", [0, 2, 99, None, "1"])
def test_wrong_format_version(good_ckpt, version):
    raw = torch.load(good_ckpt, weights_only=True)
    raw["version"] = version
    torch.save(raw, good_ckpt)
    with pytest.raises(ValueError, match=f"version {version}.*reads version 1"):
        load_checkpoint(good_ckpt)


def test_damaged_checkpoint_whose_weights_do_not_fit_its_config(good_ckpt):
    raw = torch.load(good_ckpt, weights_only=True)
    raw["model_config"]["d_model"] = 64
    torch.save(raw, good_ckpt)
    with pytest.raises(ValueError, match="damaged"):
        load_checkpoint(good_ckpt)
    raw["model_config"] = {"nonsense": 1}
    torch.save(raw, good_ckpt)
    with pytest.raises(ValueError, match="damaged"):
        load_checkpoint(good_ckpt)


def test_checkpoint_with_a_malformed_tokenizer(good_ckpt):
    raw = torch.load(good_ckpt, weights_only=True)
    raw["tokenizer"] = {"type": "bpe", "merges": [[300, 5]], "special_tokens": {}}
    torch.save(raw, good_ckpt)
    with pytest.raises(ValueError, match="malformed BPE tokenizer"):
        load_checkpoint(good_ckpt)


class Evil:
    """Unpickling this object would create a file: the classic code-execution payload, made harmless."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("how", ["torch.save", "pickle", "inside-a-real-checkpoint"])
def test_checkpoint_that_would_run_code_is_refused(tmp_path, good_ckpt, how):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save({"format": tinyllm.CHECKPOINT_FORMAT, "version": 1, "x": Evil(str(target))}, path)
    elif how == "pickle":
        path.write_bytes(pickle.dumps(Evil(str(target)), protocol=2))
    else:
        raw = torch.load(good_ckpt, weights_only=True)
        raw["meta"] = {"note": Evil(str(target))}
        torch.save(raw, path)
    assert not target.exists()
    with pytest.raises(ValueError, match="never unpickles|cannot load checkpoint"):
        load_checkpoint(path)
    assert not target.exists(), "the payload ran"
    with pytest.raises(pickle.UnpicklingError):  # the guard is torch's weights_only loader
        torch.load(path, weights_only=True)
    assert not target.exists()


def test_evil_payload_is_real(tmp_path):
    """The payload above does create its file when unpickled without weights_only (so the test means something)."""
    target = tmp_path / "pwned.txt"
    buffer = io.BytesIO()
    torch.save({"x": Evil(str(target))}, buffer)
    assert zipfile.is_zipfile(io.BytesIO(buffer.getvalue()))
    buffer.seek(0)
    torch.load(buffer, weights_only=False)
    assert target.exists()


# --- one format: the chapter's plain save and load, and the command line's checkpoints -------------------

def test_what_save_model_writes_the_command_line_samples_from(tmp_path, data, cli):
    tok, train_ids, val_ids = data
    model = tiny_model(tok.vocab_size)
    tinyllm.train(model, train_ids, val_ids, tiny_config(max_steps=30))
    tinyllm.save_model(tmp_path / "nb.pt", model, tok)
    r = cli("sample", "--ckpt", tmp_path / "nb.pt", "--prompt", "The king", "--max-new-tokens", "30",
            "--temperature", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    expected = tinyllm.complete(model.cpu(), tok, "The king", 30, temperature=0)
    assert r.stdout == "The king" + expected + "\n"


def test_what_the_command_line_writes_load_model_reads(tmp_path, corpus_file, cli):
    r = cli("train", "--data", corpus_file, "--preset", "tiny", "--max-steps", "20", "--out", tmp_path / "run",
            "--quiet", "--sample-tokens", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    model, tok = tinyllm.load_model(tmp_path / "run" / "best.pt")
    checked = load_checkpoint(tmp_path / "run" / "best.pt")
    assert_same_weights(model, checked["model"])
    assert tok.to_dict() == checked["tokenizer"].to_dict()
    assert checked["train_state"].step == 20 and checked["train_state"].history == checked["history"]
