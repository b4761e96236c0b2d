"""Experiments behind the `cpu` preset: speed (steps/s) and quality (val loss at a fixed step budget).

Speed and sample efficiency are measured separately, so that results do not depend on how busy the
machine is while the quality runs go:

    python bench/experiment.py speed   '{"model": {...}, "train": {...}}'   # best steps/s of short bursts
    python bench/experiment.py quality '{"model": {...}, "train": {...}}' --steps N

A config is the `cpu` preset with the given model/train fields overridden. Each result is printed and
appended as one JSON line to bench/results/experiments.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import tinyllm  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "experiments.jsonl"


def load_data():
    text = tinyllm.load_text("shakespeare")
    tok = tinyllm.CharTokenizer.from_text(text)
    train_text, val_text = tinyllm.split_train_val(text)
    return tok, torch.tensor(tok.encode(train_text)), torch.tensor(tok.encode(val_text))


def configs(spec: dict, vocab_size: int):
    preset = tinyllm.PRESETS["cpu"]
    mcfg = tinyllm.ModelConfig(vocab_size=vocab_size, **{**preset["model"], **spec.get("model", {})})
    train = {**preset["train"], **spec.get("train", {})}
    return mcfg, train


def uptime() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def speed(spec: dict, bursts: int = 3, steps: int = 25) -> dict:
    """Best steps/s over `bursts` bursts of `steps` training steps, after a warm-up."""
    tok, train_ids, _ = load_data()
    mcfg, train = configs(spec, tok.vocab_size)
    if "threads" in spec:
        torch.set_num_threads(spec["threads"])
    tinyllm.seed_everything(0)
    model = tinyllm.TinyLLM(mcfg)
    tc = tinyllm.TrainConfig(**{**train, "max_time": None, "device": "cpu", "progress": False})
    opt = tinyllm.make_optimizer(model, tc)
    net = torch.compile(model) if spec.get("compile") else model
    amp = tinyllm.choose_precision(torch.device("cpu"), spec.get("dtype", "fp32"))
    gen = torch.Generator().manual_seed(0)

    scaler = torch.amp.GradScaler("cpu", enabled=amp == torch.float16)

    def one_step():  # Part I's own training step
        batch = tinyllm.get_batch(train_ids, tc.batch_size, mcfg.block_size, gen, torch.device("cpu"))
        return tinyllm.train_step(net, opt, scaler, [batch], tc.lr, amp, tc.grad_clip)

    t = time.perf_counter()
    for _ in range(10):
        one_step()
    warmup = time.perf_counter() - t
    rates = []
    for _ in range(bursts):
        t = time.perf_counter()
        for _ in range(steps):
            one_step()
        rates.append(steps / (time.perf_counter() - t))
    return {"kind": "speed", "spec": spec, "params": model.num_params(), "steps_per_s": round(max(rates), 2),
            "all_rates": [round(r, 2) for r in rates], "warmup_s": round(warmup, 2), "load": uptime()}


def quality(spec: dict, steps: int) -> dict:
    """Train for a fixed number of steps (LR schedule over those steps); full-split val loss at the end."""
    tok, train_ids, val_ids = load_data()
    mcfg, train = configs(spec, tok.vocab_size)
    if "threads" in spec:
        torch.set_num_threads(spec["threads"])
    tinyllm.seed_everything(spec.get("seed", 1337))
    model = tinyllm.TinyLLM(mcfg)
    tc = tinyllm.TrainConfig(**{**train, "max_steps": steps, "max_time": None, "device": "cpu",
                                "progress": False, "eval_interval": 10**9, "seed": spec.get("seed", 1337)})
    t = time.perf_counter()
    history = tinyllm.train(model, train_ids, val_ids, tc)
    return {"kind": "quality", "spec": spec, "params": model.num_params(), "steps": steps,
            "val_loss": round(history[-1]["val_loss"], 4), "train_loss": round(history[-1]["train_loss"], 4),
            "wall_s": round(time.perf_counter() - t, 1), "load": uptime()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["speed", "quality"])
    p.add_argument("spec", help="JSON: {'model': {...}, 'train': {...}, 'threads', 'dtype', 'compile', 'seed'}")
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--label", default="")
    args = p.parse_args()
    spec = json.loads(args.spec)
    result = speed(spec) if args.kind == "speed" else quality(spec, args.steps)
    result["label"] = args.label
    result["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
    print(json.dumps(result))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
