"""Training: the loss falls, the LR schedule, weight decay, gradient accumulation, seeds, time budget,
history, mixed precision, and divergence."""

import math
import re
import time

import pytest
import torch

import tinyllm
from tinyllm import (CharTokenizer, ModelConfig, TinyLLM, TrainConfig, TrainingDiverged, choose_precision,
                     fit, get_batch, load_checkpoint, lr_at, make_optimizer, split_train_val, train)
from conftest import assert_same_weights, tiny_config, tiny_model, without_seconds

pytestmark = pytest.mark.usefixtures("single_thread")


def encode(text: str):
    tok = CharTokenizer.from_text(text)
    train_ids, val_ids = split_train_val(tok.encode(text))
    return tok, train_ids, val_ids




def params_of(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def data(corpus_text):
    return encode(corpus_text)


# --- learning -------------------------------------------------------------------------------------

def test_loss_falls_on_generated_text(data):
    tok, train_ids, val_ids = data
    model = tiny_model(tok.vocab_size)
    before = tinyllm.evaluate(model, torch.tensor(val_ids), 32)
    history = train(model, train_ids, val_ids, tiny_config(max_steps=60, eval_interval=30))
    assert before == pytest.approx(math.log(tok.vocab_size), abs=0.1)
    assert history[-1]["val_loss"] < before - 0.9
    assert history[-1]["val_loss"] < history[0]["val_loss"]


def test_loss_falls_on_tinyshakespeare(shakespeare_path):
    tok, train_ids, val_ids = encode(shakespeare_path.read_text(encoding="utf-8")[:200_000])
    model = tiny_model(tok.vocab_size)
    before = tinyllm.evaluate(model, torch.tensor(val_ids), 32)
    history = train(model, train_ids, val_ids, tiny_config(max_steps=80, eval_interval=40))
    assert history[-1]["val_loss"] < before - 0.7  # from ~ln(62) = 4.1 nats to ~3.1 in 80 tiny steps


def test_train_rejects_text_shorter_than_one_window():
    tok, train_ids, val_ids = encode("too short for a window of 32 chars")
    with pytest.raises(ValueError, match="too few for one window"):
        fit(tiny_model(tok.vocab_size), train_ids, val_ids, tiny_config(max_steps=1))


# --- LR schedule and optimizer ------------------------------------------------------------------

def test_lr_schedule_warmup_cosine_min():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    warm = [lr_at(s, s / cfg.max_steps, cfg) for s in range(10)]
    assert warm[0] == pytest.approx(1e-4) and warm[-1] == pytest.approx(1e-3)
    assert all(b - a == pytest.approx(1e-4) for a, b in zip(warm, warm[1:]))  # linear
    assert lr_at(10, 0.0, cfg) == pytest.approx(1e-3)  # the cosine starts at the peak
    assert lr_at(50, 0.5, cfg) == pytest.approx((1e-3 + 1e-4) / 2)  # and is halfway at half time
    assert lr_at(100, 1.0, cfg) == pytest.approx(1e-4)
    assert lr_at(500, 3.0, cfg) == pytest.approx(1e-4)  # never below min_lr
    decay = [lr_at(s, s / cfg.max_steps, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_lr_in_training_follows_the_schedule(data):
    tok, train_ids, val_ids = data
    config = tiny_config(max_steps=20, eval_interval=1, warmup_steps=5)
    history = train(tiny_model(tok.vocab_size), train_ids, val_ids, config)
    for row in history:
        s = row["step"] - 1  # the row logs the LR used for its last step
        assert row["lr"] == pytest.approx(lr_at(s, s / config.max_steps, config))


def test_weight_decay_only_on_matrices():
    model = tiny_model(65)
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1))
    by_decay = {g["weight_decay"]: g["params"] for g in opt.param_groups}
    assert set(by_decay) == {0.1, 0.0}
    assert all(p.dim() == 2 for p in by_decay[0.1]) and all(p.dim() == 1 for p in by_decay[0.0])
    named = dict(model.named_parameters())
    decayed = {id(p) for p in by_decay[0.1]}
    assert id(named["blocks.0.attn.qkv.weight"]) in decayed
    assert id(named["norm.weight"]) not in decayed
    assert sum(len(g["params"]) for g in opt.param_groups) == len(named)  # every parameter, once


# --- batches and gradient accumulation ----------------------------------------------------------------

def test_get_batch_targets_are_inputs_shifted():
    data = torch.arange(100)
    x, y = get_batch(data, 4, 10, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert x.shape == y.shape == (4, 10)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)


def test_grad_accum_scales_loss_to_the_full_batch_gradient():
    """Two half batches, each loss divided by 2, accumulate the gradient of the whole batch."""
    model = tiny_model(65)
    x, y = torch.randint(65, (8, 32)), torch.randint(65, (8, 32))
    model(x, y)[1].backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for half in (slice(0, 4), slice(4, 8)):
        (model(x[half], y[half])[1] / 2).backward()
    for a, b in zip(full, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_grad_accum_equivalence_in_train(data):
    """batch 8 x accum 1 and batch 4 x accum 2 see the same windows and make the same updates."""
    tok, train_ids, val_ids = data
    g = torch.Generator().manual_seed(5)
    whole = get_batch(torch.tensor(train_ids), 8, 32, g, torch.device("cpu"))[0]
    g = torch.Generator().manual_seed(5)
    halves = torch.cat([get_batch(torch.tensor(train_ids), 4, 32, g, torch.device("cpu"))[0] for _ in range(2)])
    assert torch.equal(whole, halves)  # the premise: the same random windows either way
    a, b = tiny_model(tok.vocab_size), tiny_model(tok.vocab_size)
    ha = train(a, train_ids, val_ids, tiny_config(max_steps=4, batch_size=8, grad_accum=1, seed=5))
    hb = train(b, train_ids, val_ids, tiny_config(max_steps=4, batch_size=4, grad_accum=2, seed=5))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=name)
    assert ha[-1]["tokens"] == hb[-1]["tokens"] == 4 * 8 * 32
    assert ha[-1]["train_loss"] == pytest.approx(hb[-1]["train_loss"], rel=1e-5)


# --- reproducibility, budgets, history ----------------------------------------------------------------

def test_same_seed_same_run_other_seed_other_run(data):
    tok, train_ids, val_ids = data
    runs = []
    for seed in (1, 1, 2):
        model = tiny_model(tok.vocab_size)
        history = train(model, train_ids, val_ids, tiny_config(max_steps=15, seed=seed))
        runs.append((params_of(model), [{k: v for k, v in r.items() if k != "seconds"} for r in history]))
    (p1, h1), (p2, h2), (p3, _) = runs
    assert h1 == h2
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    assert not all(torch.equal(p1[k], p3[k]) for k in p1)  # the seed picks the batches


class FakeClock:
    """time.perf_counter for tinyllm, advancing a fixed amount per call: time budgets without waiting."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


@pytest.mark.parametrize("loop", [train, fit])
def test_max_time_stops_training(data, monkeypatch, loop):
    tok, train_ids, val_ids = data
    monkeypatch.setattr(tinyllm.time, "perf_counter", FakeClock(0.1))  # every clock read: 0.1 s later
    history = loop(tiny_model(tok.vocab_size), train_ids, val_ids,
                   tiny_config(max_steps=10**9, max_time=1.5, eval_interval=10**9))
    assert 1.5 <= history[-1]["seconds"] < 1.5 + 0.5  # stopped at the first step past the budget
    assert 5 <= history[-1]["step"] <= 15
    assert len(history) == 1  # no evaluation but the final one


def test_fit_trains_exactly_like_train(data):
    """Part II's loop is built from Part I's pieces: for the same settings, the same weights and history."""
    tok, train_ids, val_ids = data
    for settings in (dict(max_steps=12, eval_interval=5), dict(max_steps=6, grad_accum=2)):
        a, b = tiny_model(tok.vocab_size, dropout=0.1), tiny_model(tok.vocab_size, dropout=0.1)
        torch.manual_seed(3)
        ha = train(a, train_ids, val_ids, tiny_config(**settings))
        torch.manual_seed(3)
        hb = fit(b, train_ids, val_ids, tiny_config(**settings))
        assert_same_weights(a, b)
        assert without_seconds(ha) == without_seconds(hb)


def test_history_fields_and_bits_per_char(data):
    tok, train_ids, val_ids = data
    config = tiny_config(max_steps=20, eval_interval=10, chars_per_token=1.5, batch_size=4, grad_accum=2)
    history = train(tiny_model(tok.vocab_size), train_ids, val_ids, config)
    assert [r["step"] for r in history] == [10, 20]
    for row in history:
        assert set(row) >= {"step", "tokens", "train_loss", "val_loss", "lr", "seconds", "train_bpc", "val_bpc"}
        assert row["tokens"] == row["step"] * 4 * 2 * 32
        assert row["val_bpc"] == pytest.approx(row["val_loss"] / math.log(2) / 1.5)
        assert row["train_bpc"] == pytest.approx(row["train_loss"] / math.log(2) / 1.5)
    assert history[0]["seconds"] <= history[1]["seconds"]


# --- precision ------------------------------------------------------------------------------------

def test_fp16_uses_grad_scaler_and_saves_its_state(data, tmp_path):
    tok, train_ids, val_ids = data
    model = tiny_model(tok.vocab_size)
    seen = []
    model.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    history = fit(model, train_ids, val_ids, tiny_config(max_steps=6, dtype="fp16", out_dir=str(tmp_path)),
                    tokenizer=tok)
    assert torch.float16 in seen  # autocast really ran the matmuls in half precision
    assert math.isfinite(history[-1]["val_loss"])
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["scaler"] and state["scaler"]["scale"] > 0  # the scaler was on, and is resumable


def test_bf16_autocast_runs_on_cpu(data, tmp_path):
    tok, train_ids, val_ids = data
    model = tiny_model(tok.vocab_size)
    seen = []
    model.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    history = fit(model, train_ids, val_ids, tiny_config(max_steps=6, dtype="bf16", out_dir=str(tmp_path)))
    assert torch.bfloat16 in seen and math.isfinite(history[-1]["val_loss"])
    assert model.embed.weight.dtype == torch.float32  # autocast keeps the weights themselves in fp32
    assert load_checkpoint(tmp_path / "last.pt")["scaler"] is None  # no scaler needed for bf16


@pytest.mark.parametrize("has_bf16, expected", [(False, {torch.float32}), (True, {torch.bfloat16})])
def test_cpu_precision_by_default_follows_the_instructions(data, monkeypatch, has_bf16, expected):
    """dtype "auto" on a CPU: bf16 autocast where the CPU multiplies bf16 in hardware, float32 elsewhere."""
    monkeypatch.setattr(tinyllm, "cpu_has_bf16", lambda: has_bf16)
    tok, train_ids, val_ids = data
    model = tiny_model(tok.vocab_size)
    seen = []
    model.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    train(model, train_ids, val_ids, tiny_config(max_steps=2, dtype="auto"))
    assert set(seen) == expected


@pytest.mark.parametrize("capability, expected", [((7, 5), torch.float16), ((7, 0), torch.float16),
                                                  ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_choose_precision_by_cuda_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # a T4 says True: must not matter
    assert choose_precision(torch.device("cuda"), "auto") == expected
    assert choose_precision(torch.device("cuda"), "fp32") is None


def test_choose_precision_explicit_and_cpu(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(tinyllm, "cpu_has_bf16", lambda: False)
    assert choose_precision(cpu, "auto") is None
    monkeypatch.setattr(tinyllm, "cpu_has_bf16", lambda: True)
    assert choose_precision(cpu, "auto") == torch.bfloat16
    assert choose_precision(torch.device("mps"), "auto") is None  # MPS: float32 unless asked
    assert choose_precision(cpu, "fp32") is None
    assert choose_precision(cpu, "bf16") == torch.bfloat16
    assert choose_precision(cpu, "fp16") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        choose_precision(cpu, "fp8")


# --- divergence -----------------------------------------------------------------------------------

def test_nan_loss_stops_with_step_and_lr_and_keeps_a_good_checkpoint(data, tmp_path):
    tok, train_ids, val_ids = data
    config = tiny_config(max_steps=50, lr=1e6, warmup_steps=1, ckpt_interval=1, out_dir=str(tmp_path))
    with pytest.raises(TrainingDiverged) as info:
        fit(tiny_model(tok.vocab_size), train_ids, val_ids, config, tokenizer=tok)
    message = str(info.value)
    assert re.search(r"at step \d+ \(learning rate \d\.\d\de[+-]\d+\)", message), message
    assert "NaN" in message or "nan" in message or "inf" in message
    state = load_checkpoint(tmp_path / "last.pt")
    assert 1 <= state["step"] < int(re.search(r"step (\d+)", message).group(1))
    assert f"last.pt (step {state['step']}) is kept" in message  # the message says what is left
    assert all(torch.isfinite(p).all() for p in state["model"].parameters()), "the kept checkpoint is not good"
    assert not list(tmp_path.glob(".*.tmp"))


def test_nan_loss_is_caught_before_the_update(data, monkeypatch, tmp_path):
    """A NaN loss (here injected at step 3) stops training before it can reach the weights."""
    tok, train_ids, val_ids = data
    model = tiny_model(tok.vocab_size)
    calls = []
    forward = TinyLLM.forward

    def poisoned(self, idx, targets=None, cache=None):
        logits, loss = forward(self, idx, targets, cache)
        calls.append(1)
        return logits, (loss * float("nan") if len(calls) == 3 and loss is not None else loss)

    monkeypatch.setattr(TinyLLM, "forward", poisoned)
    config = tiny_config(max_steps=10, eval_interval=100, lr=3e-3, warmup_steps=10, ckpt_interval=2,
                         out_dir=str(tmp_path))
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 3 \(learning rate 9\.00e-04\).*"
                                               r"last\.pt \(step 2\) is kept"):
        fit(model, train_ids, val_ids, config)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2


def test_divergence_before_any_checkpoint_says_so(data, tmp_path):
    tok, train_ids, val_ids = data
    config = tiny_config(max_steps=50, lr=1e6, warmup_steps=1, eval_interval=100, out_dir=str(tmp_path))
    with pytest.raises(TrainingDiverged, match="no checkpoint had been saved yet"):
        fit(tiny_model(tok.vocab_size), train_ids, val_ids, config)



def test_keep_best_ends_with_the_weights_of_the_best_evaluation(data):
    """Validation on shuffled characters: the model first learns their frequencies (val improves), then the
    corpus's order, which shuffled text lacks (val gets worse). keep_best=True ends at the best evaluation."""
    tok, train_ids, val_ids = data
    shuffled = torch.as_tensor(val_ids)[torch.randperm(len(val_ids), generator=torch.Generator().manual_seed(0))]
    settings = dict(max_steps=80, eval_interval=5, warmup_steps=1, eval_windows=10**6)
    plain, kept = tiny_model(tok.vocab_size), tiny_model(tok.vocab_size)
    history = train(plain, train_ids, shuffled, tiny_config(**settings))
    kept_history = train(kept, train_ids, shuffled, tiny_config(keep_best=True, **settings))
    assert without_seconds(history) == without_seconds(kept_history)  # the same run ...
    best = min(history, key=lambda row: row["val_loss"])
    assert best["step"] < history[-1]["step"] and history[-1]["val_loss"] > best["val_loss"] + 0.05, history
    final = tinyllm.evaluate(kept, shuffled, kept.config.block_size)
    assert final == pytest.approx(best["val_loss"], abs=1e-5)  # ... but it ends at its best point
    assert tinyllm.evaluate(plain, shuffled, plain.config.block_size) == pytest.approx(history[-1]["val_loss"], abs=1e-5)


def test_interrupting_train_keeps_the_history_so_far(data, monkeypatch):
    """The notebook's stop button raises KeyboardInterrupt in the cell: train returns, with a row for the last step."""
    tok, train_ids, val_ids = data
    steps = []
    real_step = tinyllm.train_step

    def step_then_stop(*args, **kwargs):
        steps.append(1)
        if len(steps) == 13:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(tinyllm, "train_step", step_then_stop)
    model = tiny_model(tok.vocab_size)
    history = train(model, train_ids, val_ids, tiny_config(max_steps=100, eval_interval=5))
    assert [row["step"] for row in history] == [5, 10, 12]  # the evaluations, then where it stopped
    assert history[-1]["val_loss"] == pytest.approx(
        tinyllm.evaluate(model, torch.as_tensor(val_ids), model.config.block_size, 64, tiny_config().eval_windows))
