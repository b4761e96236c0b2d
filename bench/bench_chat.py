"""Chat fine-tuning (section 14), measured: masked vs full-sequence loss, from the pretrained model vs from scratch.

Every run fine-tunes the `cpu` preset's shape with the same settings and the same step budget (so the
comparison does not depend on how busy the machine is; the seconds each run took are printed too), on
the same generated conversations, with Part I's `finetune`, and is measured at the end on the same
exam: greedy replies to the 200 held-out sums (exact match of the whole reply, and the share ending
with <|end|> within 32 tokens) and the loss on the assistant's tokens of 500 held-out conversations.

    python bench/bench_chat.py --base runs/shakespeare     # a `tinyllm.py train` run (the cpu preset)
    python bench/bench_chat.py --base B --steps 2000 --seeds 1337 1338 --starts pretrained --losses masked

Without --base it first trains one: python tinyllm.py train --max-steps 1900 (the steps a quiet
100-second run gets on the reference machine). Appends every run to bench/results/chat.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
import tinyllm  # noqa: E402


def one_run(base: Path, start: str, masked: bool, seed: int, steps: int, conversations: int, eval_every: int) -> dict:
    """Fine-tune once and measure; returns a row for the table."""
    tinyllm.seed_everything(seed)
    if start == "pretrained":
        ckpt = tinyllm.load_checkpoint(base)
        tokenizer = tinyllm.chat_tokenizer(ckpt["tokenizer"])
        model = tinyllm.grow_vocab(ckpt["model"], ckpt["tokenizer"], tokenizer, seed)
    else:
        tokenizer = tinyllm.chat_tokenizer()
        model = tinyllm.TinyLLM(tinyllm.ModelConfig.from_preset("cpu", tokenizer.vocab_size))
    block = model.config.block_size
    data = tinyllm.chat_data(tokenizer, tinyllm.make_conversations(conversations, seed), block)
    val = tinyllm.chat_data(tokenizer, tinyllm.make_conversations(500, seed + 1, held_out=True), block)
    exam = tinyllm.held_out_sums(200)
    config = tinyllm.TrainConfig.from_preset("cpu", max_steps=steps, max_time=None, eval_interval=eval_every,
                                             device="cpu", seed=seed, progress=False)
    curve = []

    def measure(m: tinyllm.TinyLLM) -> dict:
        t = time.perf_counter()
        r = tinyllm.chat_eval(m, tokenizer, exam)
        row = {"accuracy": r["accuracy"], "stop_rate": r["stop_rate"], "assistant_loss": tinyllm.assistant_loss(m, val, 256)}
        curve.append(round(r["accuracy"], 3))
        row["eval_seconds"] = time.perf_counter() - t
        return row

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    history = tinyllm.finetune(model, data, config, masked=masked, on_eval=measure)
    seconds = time.perf_counter() - t0 - sum(r["eval_seconds"] for r in history)
    final = history[-1]
    return {"start": start, "loss": "masked" if masked else "full", "seed": seed, "steps": final["step"],
            "train_seconds": round(seconds, 1), "accuracy": final["accuracy"], "stop_rate": final["stop_rate"],
            "assistant_loss": round(final["assistant_loss"], 4), "accuracy_curve": curve, "eval_every": eval_every,
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, help="a cpu-preset checkpoint or run directory from tinyllm.py train")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--conversations", type=int, default=20_000)
    p.add_argument("--eval-every", type=int, default=250, help="steps between accuracy measurements (the curve)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337])
    p.add_argument("--starts", nargs="+", default=["pretrained", "scratch"], choices=["pretrained", "scratch"])
    p.add_argument("--losses", nargs="+", default=["masked", "full"], choices=["masked", "full"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "chat.jsonl")
    args = p.parse_args()
    tinyllm.torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        base = args.base
        if base is None and "pretrained" in args.starts:
            base = Path(tmp) / "base"
            print("training the pretrained model: python tinyllm.py train --max-steps 1900 ...", flush=True)
            subprocess.run([sys.executable, str(ROOT / "tinyllm.py"), "train", "--preset", "cpu", "--max-steps", "1900",
                            "--out", str(base), "--quiet"], check=True, env={**os.environ})
        print(f"{'start':<11} {'loss':<7} {'seed':>5} {'steps':>6} {'train s':>8} {'accuracy':>9} {'stop':>6} "
              f"{'asst loss':>9}  load  accuracy every {args.eval_every} steps", flush=True)
        for seed in args.seeds:
            for start in args.starts:
                for loss in args.losses:
                    row = one_run(base, start, loss == "masked", seed, args.steps, args.conversations, args.eval_every)
                    print(f"{row['start']:<11} {row['loss']:<7} {row['seed']:>5} {row['steps']:>6} "
                          f"{row['train_seconds']:>8.1f} {row['accuracy']:>9.1%} {row['stop_rate']:>6.1%} "
                          f"{row['assistant_loss']:>9.4f}  {row['load_before']:.1f}  "
                          f"{' '.join(f'{a:.0%}' for a in row['accuracy_curve'])}", flush=True)
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    with open(args.out, "a") as f:
                        f.write(json.dumps({**row, "threads": args.threads, "torch": tinyllm.torch.__version__,
                                            "time": time.strftime("%Y-%m-%d %H:%M")}) + "\n")


if __name__ == "__main__":
    main()
