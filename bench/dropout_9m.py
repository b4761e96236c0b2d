"""Where does the `9m` preset start to overfit TinyShakespeare, and how much does dropout help?

Trains the 9m preset for its full step budget (3,000 steps of 64 x 256 tokens, ~49 passes over the
training split) with several dropout rates, one process each, and prints every evaluation (train and
validation loss on 100 windows; the last row on the whole validation split) and each run's best point:

    python bench/dropout_9m.py                    # dropout 0, 0.1, 0.2 in parallel on one GPU
    python bench/dropout_9m.py --dropout 0.1 --steps 3000 --device cuda

Needs a GPU for the real preset (a CPU run of 3,000 steps takes hours: use --preset cpu there).
Results are appended as JSON lines to bench/results/dropout_9m.jsonl.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import tinyllm  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "dropout_9m.jsonl"


def run(preset: str, dropout: float, steps: int, device: str) -> dict:
    text = tinyllm.load_text("shakespeare")
    tok = tinyllm.CharTokenizer.from_text(text)
    train_text, val_text = tinyllm.split_train_val(text)
    tinyllm.seed_everything(1337)
    model = tinyllm.TinyLLM(tinyllm.ModelConfig.from_preset(preset, tok.vocab_size, dropout=dropout))
    config = tinyllm.TrainConfig.from_preset(preset, max_steps=steps, max_time=None, device=device, progress=False)
    t0 = time.perf_counter()
    history = tinyllm.train(model, tok.encode(train_text), tok.encode(val_text), config)
    best = min(history, key=lambda r: r["val_loss"])
    return {"preset": preset, "dropout": dropout, "steps": steps, "device": tinyllm.versions(),
            "gpu": __import__("torch").cuda.get_device_name() if device != "cpu" else "cpu",
            "seconds": round(time.perf_counter() - t0, 1), "final_val": history[-1]["val_loss"],
            "best_val": best["val_loss"], "best_step": best["step"],
            "history": [{k: r[k] for k in ("step", "train_loss", "val_loss")} for r in history]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dropout", type=float, nargs="*", default=[0.0, 0.1, 0.2])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--preset", default="9m")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    if len(args.dropout) > 1:  # one process per rate, in parallel: the 9m model leaves most of a big GPU idle
        procs = [subprocess.Popen([sys.executable, __file__, "--dropout", str(d), "--steps", str(args.steps),
                                   "--preset", args.preset, "--device", args.device]) for d in args.dropout]
        sys.exit(max(p.wait() for p in procs))
    result = run(args.preset, args.dropout[0], args.steps, args.device)
    for r in result["history"]:
        print(f"dropout {result['dropout']:.2f} | step {r['step']:>5} | train {r['train_loss']:.4f} | val {r['val_loss']:.4f}")
    print(f"RESULT dropout {result['dropout']:.2f}: best val {result['best_val']:.4f} at step {result['best_step']}, "
          f"final {result['final_val']:.4f} (whole split), {result['seconds']:.0f} s on {result['gpu']}", flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
