"""How many steps does a configuration need to reach nanoGPT's CPU-recipe loss (val <= 1.898)?

    python bench/early_screen.py --configs baseline,muon3+warmup10+batch24 --seeds 2
    python bench/early_screen.py --configs first_muon --gain-lr 10 --total 1600

The speedrun's time to 1.898 is (steps to reach it) x (time per step). The step count does not depend on
the machine's load, so it can be screened with 1 thread, two runs side by side: each run trains `--stop`
steps of a schedule planned for `--total` (about the steps a 100 s run makes, so that the LR early on is
the speedrun's), evaluates every 10 steps on the speedrun's 256 windows, and prints one JSON line (also
appended to bench/results/early_screen.jsonl) with the first step at or below 1.898 and the history.

Knobs beyond the ladder's variants, for the early phase only: the LR of AdamW's group of matrices (with
Muon, the embedding alone; with AdamW only, every matrix) and of the RMSNorm gains, as multiples; the
starting value of the q/k RMSNorm gains; and a Muon momentum warmup.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import torch

try:
    from bench import ladder, speedrun  # from the repository root
except ImportError:
    import ladder  # run as a script: bench/ is on sys.path
    import speedrun

RESULTS = Path(__file__).resolve().parent / "results" / "early_screen.jsonl"
TARGET = 1.898  # nanoGPT's CPU recipe after its 2,000 iterations (bench/README.md)


def tune_early(trainer: speedrun.Trainer, args: argparse.Namespace) -> None:
    """The screen's own knobs: LR multiples for the AdamW groups, the q/k gains' starting value."""
    for group in trainer.optimizer.param_groups:
        if not group.get("muon") and group["params"]:
            group["lr_scale"] = args.embed_lr if group["params"][0].dim() == 2 else args.gain_lr
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.fill_(args.qk_gain)


def screen(variant: ladder.Variant, seed: int, args: argparse.Namespace, data: tuple,
           track: speedrun.Track = speedrun.TRACKS["cpu"]) -> dict:
    trainer = speedrun.Trainer(variant, track, data[2], seed, args.total)
    tune_early(trainer, args)
    history, clock = [], 0.0
    for step in range(args.stop):
        if args.momentum_from is not None:  # Muon's momentum from momentum_from up to 0.95 over 300 steps
            for group in trainer.optimizer.param_groups:
                if group.get("muon"):
                    group["momentum"] = args.momentum_from + (0.95 - args.momentum_from) * min(1.0, step / 300)
        t = time.perf_counter()
        trainer.step(data[0], step, step / args.total)
        clock += time.perf_counter() - t
        if (step + 1) % 10 == 0:
            history.append([step + 1, round(trainer.evaluate(data[1], track.eval_windows), 4)])
    first = next((s for s, loss in history if loss <= TARGET), None)
    return {"variant": variant.name, "seed": seed, "first_1898_step": first, "total": args.total,
            "stop": args.stop, "ms_per_step": round(1000 * clock / args.stop, 1), "threads": torch.get_num_threads(),
            "knobs": {k: getattr(args, k) for k in ("embed_lr", "gain_lr", "qk_gain", "momentum_from")},
            "when": time.strftime("%Y-%m-%d %H:%M:%S"), "history": history, **speedrun.machine()}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="baseline", help="comma-separated ladder variants ('+' joins changes)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--stop", type=int, default=420, help="steps to train")
    p.add_argument("--total", type=int, default=1600, help="the steps the LR schedule is planned for")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--embed-lr", dest="embed_lr", type=float, default=1.0,
                   help="x the AdamW LR for its matrices (with Muon: the embedding alone)")
    p.add_argument("--gain-lr", dest="gain_lr", type=float, default=1.0, help="x the AdamW LR for the RMSNorm gains")
    p.add_argument("--qk-gain", dest="qk_gain", type=float, default=1.0, help="the q/k RMSNorm gains' first value")
    p.add_argument("--momentum-from", dest="momentum_from", type=float, default=None,
                   help="Muon's momentum at step 0, rising to 0.95 by step 300")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    data = speedrun.load_data(torch.device("cpu"))
    for name in args.configs.split(","):
        for seed in speedrun.SEEDS[:args.seeds]:
            record = screen(ladder.get_variant(name), seed, args, data)
            speedrun.append(record, args.out)
            print(f"{name:<28} seed {seed}  first <= {TARGET}: step {record['first_1898_step']}  "
                  f"{record['ms_per_step']:.1f} ms/step ({args.threads} thread(s))", flush=True)


if __name__ == "__main__":
    main()
