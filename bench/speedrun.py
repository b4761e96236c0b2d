"""The tinyllm speedrun: how low can the validation loss go in 100 s on 2 CPU cores (or 60 s on one GPU)?

    python bench/speedrun.py                                   # the cpu preset, 100 s, 3 seeds
    python bench/speedrun.py --configs baseline,muon           # two configurations, interleaved A, B, A, B
    python bench/speedrun.py --ladder --budget 100 --seeds 3   # every rung of bench/ladder.py
    python bench/speedrun.py --ladder --steps 2000             # the same at equal steps (robust to load)
    python bench/speedrun.py --timing --configs baseline,bf16  # step-time ratios, interleaved bursts
    python bench/speedrun.py --track gpu                       # the 9m class on one GPU: 60 s, time to 1.47
    python bench/speedrun.py --report                          # tables and figure from bench/results/

CPU track: 2 threads, training clock of 100 s (evaluations pause it; compilation and everything else in a
step count), scored on the WHOLE validation split in nats/char. Evaluations on 256 evenly spaced windows of
the split, every 10 steps until the run has reached its last threshold and every 50 after, give the time at
which it first reached 1.90, 1.898 (nanoGPT's CPU recipe) and 1.70. Every run is one JSON line in
bench/results/speedrun.jsonl, with the machine's load average at its start and end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

import tinyllm

try:
    from bench import ladder  # imported from the repository root (the tests)
except ImportError:
    import ladder  # run as a script: bench/ is on sys.path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "speedrun.jsonl"
SEEDS = (1337, 1338, 1339, 1340, 1341)


@dataclass(frozen=True)
class Track:
    """What a speedrun track fixes: the preset, the device, the clock and the loss thresholds it times."""

    name: str
    preset: str
    device: str
    threads: Optional[int]
    budget_s: float
    thresholds: tuple[float, ...]
    eval_interval: int = 50  # steps between evaluations once every threshold is reached
    eval_windows: int = 256
    early_eval_interval: int = 10  # ... and before: a fine grid, so that the time to each threshold is seen


TRACKS = {
    "cpu": Track("cpu", "cpu", "cpu", 2, 100.0, (1.90, 1.898, 1.70)),  # 1.898: nanoGPT's CPU recipe, 2,000 iters
    "gpu": Track("gpu", "9m", "cuda", None, 60.0, (1.47,)),
}


def machine() -> dict:
    """Which computer ran it: the lscpu model name and flags that matter, cores, torch, the commit."""
    info = {"cpu": "unknown", "cores": os.cpu_count(), "torch": torch.__version__, "bf16_instructions": False}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("Flags"):
                info["bf16_instructions"] = "avx512_bf16" in line or "amx_bf16" in line
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH, capture_output=True,
                                        text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = "unknown"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load_data(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """TinyShakespeare, character tokens, Part I's 90/10 split."""
    text = tinyllm.load_text("shakespeare")
    tok = tinyllm.CharTokenizer.from_text(text)
    train_ids, val_ids, _ = tinyllm.prepare_data(text, tok)
    return torch.tensor(train_ids), torch.tensor(val_ids), tok.vocab_size


class Trainer:
    """One variant, ready to train: model, the network that runs the steps (compiled or not), optimizer.

    The loop is Part I's: get_batch, forward_backward, clip, step; the LR from lr_at. It lives here rather
    than in tinyllm.train because the ladder swaps the optimizer, the batch size and the precision.
    """

    def __init__(self, variant: ladder.Variant, track: Track, vocab_size: int, seed: int, total_steps: int,
                 model_overrides: Optional[dict] = None):
        preset = tinyllm.check_preset(track.preset)
        self.variant, self.device = variant, torch.device(track.device)
        tinyllm.seed_everything(seed)
        self.cfg = tinyllm.ModelConfig.from_preset(track.preset, vocab_size, **{**variant.model, **(model_overrides or {})})
        self.config = tinyllm.TrainConfig(**{**preset["train"], **variant.train, "max_steps": total_steps,
                                             "max_time": None, "device": track.device, "seed": seed})
        self.model = ladder.build_model(variant, self.cfg).to(self.device).train()
        self.net = torch.compile(self.model) if variant.compile else self.model
        self.optimizer = ladder.build_optimizer(variant, self.model, self.config)
        # Part I's choice for the preset's dtype ("auto": bf16 on a CPU with bf16 instructions), unless the rung says bf16
        self.amp = torch.bfloat16 if variant.bf16 else tinyllm.choose_precision(self.device, self.config.dtype)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.generator = torch.Generator().manual_seed(seed)

    def step(self, train_ids: torch.Tensor, step: int, progress: float) -> float:
        """One optimizer step at the schedule's LR; returns the training loss."""
        lr = tinyllm.lr_at(step, progress, self.config)
        batch = tinyllm.get_batch(train_ids, ladder.batch_size_at(self.variant, self.config, progress),
                                  self.cfg.block_size, self.generator, self.device)
        loss = tinyllm.forward_backward(self.net, self.scaler, [batch], self.amp).item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"{self.variant.name}: the loss became {loss} at step {step}")
        ladder.set_lr(self.optimizer, lr)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def evaluate(self, val_ids: torch.Tensor, windows: Optional[int]) -> float:
        """Part I's evaluate, in float32, on the uncompiled model (same weights); None: the whole split."""
        return tinyllm.evaluate(self.model, val_ids, self.cfg.block_size, 64, windows)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_run(variant: ladder.Variant, track: Track, data: tuple, seed: int, budget_s: Optional[float],
              steps: Optional[int], model_overrides: Optional[dict] = None) -> dict:
    """One run, by the training clock (budget_s) or for a fixed number of steps; the history of evaluations.

    The clock counts only training steps (compilation included), not evaluations, so that evaluating
    often enough to time the thresholds costs the run nothing: every early_eval_interval steps until the
    run has reached its last threshold, every eval_interval after.
    """
    train_ids, val_ids, vocab = data
    trainer = Trainer(variant, track, vocab, seed, steps or 10**9, model_overrides)
    load_start, clock, step, history, recent = os.getloadavg(), 0.0, 0, [], []
    lowest, reached = min(track.thresholds), False
    while not (steps and step >= steps) and not (budget_s and clock >= budget_s):
        progress = step / steps if steps else clock / budget_s
        t = time.perf_counter()
        recent.append(trainer.step(train_ids, step, progress))
        sync(trainer.device)
        clock += time.perf_counter() - t
        step += 1
        if step % (track.eval_interval if reached else track.early_eval_interval) == 0:
            history.append(eval_row(trainer, val_ids, track.eval_windows, step, clock, recent))
            recent, reached = [], reached or history[-1]["val_loss"] <= lowest
    final = eval_row(trainer, val_ids, None, step, clock, recent)
    history.append(final)
    return run_record(variant, track, seed, budget_s, steps, trainer, history, load_start)


def eval_row(trainer: Trainer, val_ids: torch.Tensor, windows: Optional[int], step: int, clock: float,
             recent: list[float]) -> dict:
    return {"step": step, "seconds": round(clock, 2), "val_loss": round(trainer.evaluate(val_ids, windows), 4),
            "train_loss": round(sum(recent) / max(len(recent), 1), 4), "windows": windows or "all"}


def first_below(history: list[dict], threshold: float) -> Optional[dict]:
    """The first evaluation at or below the threshold: its training-clock seconds and step (None: never)."""
    for row in history:
        if row["val_loss"] <= threshold:
            return {"seconds": row["seconds"], "step": row["step"]}
    return None


def run_record(variant: ladder.Variant, track: Track, seed: int, budget_s: Optional[float],
               steps: Optional[int], trainer: Trainer, history: list[dict], load_start: tuple) -> dict:
    """Everything one run measured, as one JSON line: what ran, on what, under which load, with what result."""
    final = history[-1]
    return {
        "kind": "run", "track": track.name, "mode": "steps" if steps else "budget", "budget_s": budget_s,
        "steps_target": steps, "variant": variant.name, "why": variant.why, "seed": seed,
        "params": trainer.model.num_params(), "steps": final["step"], "train_s": final["seconds"],
        "val_loss": final["val_loss"], "best_val": min(r["val_loss"] for r in history),
        "first_below": {f"{t:g}": first_below(history, t) for t in track.thresholds},
        "threads": torch.get_num_threads(), "load_start": [round(x, 2) for x in load_start],
        "load_end": [round(x, 2) for x in os.getloadavg()], "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "history": history,
    }


def append(record: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def run_interleaved(variants: list[ladder.Variant], track: Track, seeds: list[int], budget_s: Optional[float],
                    steps: Optional[int], out: Path, session: str) -> list[dict]:
    """Seed by seed, every variant in turn (A, B, A, B, ...), so that a busy spell hurts all alike."""
    data = load_data(torch.device(track.device))
    info, records = machine(), []
    for seed in seeds:
        for variant in variants:
            record = {**train_run(variant, track, data, seed, budget_s, steps), "session": session, **info}
            append(record, out)
            records.append(record)
            print(run_line(record), flush=True)
    return records


def run_line(r: dict) -> str:
    times = "  ".join(f"<={t}: {v['seconds']:.1f}s" if v else f"<={t}: never" for t, v in r["first_below"].items())
    return (f"{r['variant']:<24} seed {r['seed']}  steps {r['steps']:>5}  {r['train_s']:6.1f}s  "
            f"val {r['val_loss']:.4f}  {times}  load {r['load_start'][0]:.2f}->{r['load_end'][0]:.2f}")


# ----------------------------------------------------------------------------------------------
# Step-time ratios: short bursts of every variant in turn, the same load for all
# ----------------------------------------------------------------------------------------------

def warm_up(trainer: Trainer, train_ids: torch.Tensor, n: int = 6) -> float:
    """A few steps across the whole schedule (both batch sizes of a ramp), so compilation is done; seconds."""
    t = time.perf_counter()
    for i in range(n):
        trainer.step(train_ids, 1000 + i, i / (n - 1))
    sync(trainer.device)
    return time.perf_counter() - t


def burst(trainer: Trainer, train_ids: torch.Tensor, n: int) -> float:
    """Mean seconds per step over n steps whose progress sweeps 0 -> 1 (a ramp's mix of batch sizes)."""
    t = time.perf_counter()
    for i in range(n):
        trainer.step(train_ids, 1000 + i, i / n)
    sync(trainer.device)
    return (time.perf_counter() - t) / n


def timing(variants: list[ladder.Variant], track: Track, rounds: int, steps: int, out: Path,
           session: str) -> list[dict]:
    """Step time of every variant relative to the first (the baseline): the ratio of median burst times.

    Bursts run round-robin (A, B, C, A, B, C, ...), so a busy spell lands on every variant alike; the
    per-round ratios give the spread. Warm-up (for torch.compile: the compilation) is reported apart.
    """
    train_ids, _, vocab = load_data(torch.device(track.device))
    load_start = os.getloadavg()
    trainers = [Trainer(v, track, vocab, 0, steps) for v in variants]
    warm = [warm_up(tr, train_ids) for tr in trainers]
    times: list[list[float]] = [[] for _ in variants]
    for r in range(rounds):
        for i, tr in enumerate(trainers):
            times[i].append(burst(tr, train_ids, steps))
        print(f"round {r + 1}/{rounds}: " + " ".join(f"{t[-1] * 1000:.0f}" for t in times) + " ms/step", flush=True)
    base = statistics.median(times[0])
    info, records = machine(), []
    for v, tr, w, ts in zip(variants, trainers, warm, times):
        per_round = [t / b for t, b in zip(ts, times[0])]
        record = {"kind": "timing", "track": track.name, "variant": v.name, "session": session,
                  "step_s": [round(t, 5) for t in ts], "median_step_s": round(statistics.median(ts), 5),
                  "ratio": round(statistics.median(ts) / base, 3), "ratio_range": [round(min(per_round), 3),
                  round(max(per_round), 3)], "warmup_s": round(w, 2), "burst_steps": steps, "rounds": rounds,
                  "threads": torch.get_num_threads(), "load_start": [round(x, 2) for x in load_start],
                  "load_end": [round(x, 2) for x in os.getloadavg()], "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                  **info}
        append(record, out)
        records.append(record)
        print(f"{v.name:<24} {record['median_step_s'] * 1000:7.1f} ms/step  ratio {record['ratio']:.3f} "
              f"(rounds {record['ratio_range'][0]:.3f}-{record['ratio_range'][1]:.3f})  warm-up {w:.1f}s")
    return records


# ----------------------------------------------------------------------------------------------
# Summaries: mean +- std per variant, the difference from the baseline, and the figure
# ----------------------------------------------------------------------------------------------

def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def summarise(records: list[dict], thresholds: tuple[float, ...] = TRACKS["cpu"].thresholds) -> list[dict]:
    """Per variant: val mean +- std, steps, threshold times, and the paired difference from the baseline.

    The difference is taken over the seeds both have, each run by the clock paired with the baseline run
    of its own session (two sessions that both ran the baseline for a seed ran under different loads); "beyond
    noise" means it exceeds twice the larger of the two standard deviations (the spread of single runs:
    the variant's and that of the baseline runs it is paired with), a stricter test than the standard
    error of the difference.
    """
    by_variant: dict[str, list[dict]] = {}
    for r in records:
        by_variant.setdefault(r["variant"], []).append(r)
    base_val = {pair_key(r): r["val_loss"] for r in by_variant.get("baseline", [])}
    rows = []
    for name, rs in by_variant.items():
        mean, std = mean_std([r["val_loss"] for r in rs])
        matched = [(base_val[key], r["val_loss"]) for r in rs if (key := pair_key(r)) in base_val]  # (baseline, run)
        paired = [val - base for base, val in matched]
        row = {"variant": name, "n": len(rs), "mean": mean, "std": std,
               "steps": statistics.fmean(r["steps"] for r in rs), "train_s": statistics.fmean(r["train_s"] for r in rs),
               "load": [min(r["load_start"][0] for r in rs), max(r["load_end"][0] for r in rs)],
               "first_below": {f"{t:g}": mean_first([first_below(r["history"], t) for r in rs]) for t in thresholds}}
        if paired and name != "baseline":  # the difference on the seeds both have (the same data order)
            b_std = mean_std([base for base, _ in matched])[1]  # the spread of the baseline runs it is paired with
            row["diff"], row["paired_std"] = mean_std(paired)
            row["beyond_noise"] = abs(row["diff"]) > 2 * max(std, b_std)
        rows.append(row)
    return rows


def pair_key(record: dict) -> tuple:
    """Which baseline run a run is compared with: the same seed, and for a run by the clock the same
    session too (a run at equal steps is deterministic, so any session's baseline of that seed will do)."""
    return (record.get("session") if record.get("mode") == "budget" else None, record["seed"])


def mean_first(hits: list[Optional[dict]]) -> Optional[dict]:
    """Mean training-clock seconds and mean step to a threshold, or None unless every seed reached it."""
    if any(h is None for h in hits):
        return None
    return {"seconds": statistics.fmean(h["seconds"] for h in hits), "step": statistics.fmean(h["step"] for h in hits)}


def print_summary(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    print(f"{'variant':<28} {'n':>2} {'val mean':>9} {'std':>7} {'diff':>8} {'beyond 2σ':>9} {'steps':>7} "
          f"{'train s':>8}  first at/below: seconds/step")
    for row in rows:
        diff = f"{row['diff']:+.4f}" if "diff" in row else ""
        flag = ("yes" if row["beyond_noise"] else "no") if "diff" in row else ""
        firsts = "  ".join(f"{t}: {v['seconds']:.1f}s/{v['step']:.0f}" if v else f"{t}: -"
                           for t, v in row["first_below"].items())
        print(f"{row['variant']:<28} {row['n']:>2} {row['mean']:>9.4f} {row['std']:>7.4f} {diff:>8} {flag:>9} "
              f"{row['steps']:>7.0f} {row['train_s']:>8.1f}  {firsts}")


def markdown(rows: list[dict], ratios: dict[str, dict]) -> str:
    """The ladder as a Markdown table (for bench/README.md): measured numbers only, blanks where none."""
    lines = ["| variant | runs | val, mean ± std | vs baseline | beyond 2σ | step time (× baseline) | "
             "first ≤ 1.898 / ≤ 1.70 (step) |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = ratios.get(row["variant"])
        firsts = " / ".join(f"{v['step']:.0f}" if v else "—" for t, v in row["first_below"].items() if t != "1.9")
        lines.append(f"| {row['variant']} | {row['n']} | {row['mean']:.4f} ± {row['std']:.4f} | "
                     f"{row['diff']:+.4f} | {'yes' if row['beyond_noise'] else 'no'} | "
                     if "diff" in row else f"| {row['variant']} | {row['n']} | {row['mean']:.4f} ± {row['std']:.4f} | — | — | ")
        lines[-1] += (f"{ratio['ratio']:.2f} ({ratio['ratio_range'][0]:.2f}–{ratio['ratio_range'][1]:.2f}) | "
                      if ratio else "— | ") + f"{firsts} |"
    return "\n".join(lines)


def read_records(path: Path, **match) -> list[dict]:
    """The JSONL records whose fields equal `match` (e.g. mode="steps", steps_target=2000)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def plot(panels: list[tuple[str, list[dict], str]], out_png: Path, ratios: Optional[dict[str, dict]] = None) -> None:
    """One panel per measurement kind: val mean +- std per variant, the baseline's mean and its 2σ band;
    each label carries the steps a variant made in its budget (wall clock), or its step time relative to
    the baseline (equal steps), where it was measured."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(9.5 * len(panels), 0.42 * max(len(r) for _, r, _ in panels) + 1.6),
                             squeeze=False)
    for ax, (title, rows, mode) in zip(axes[0], panels):
        names = [r["variant"] for r in rows][::-1]
        means = [r["mean"] for r in rows][::-1]
        stds = [0.0 if math.isnan(r["std"]) else r["std"] for r in rows][::-1]
        colors = ["black" if n == "baseline" else "tab:green" if r.get("beyond_noise") and r["diff"] < 0
                  else "tab:red" if r.get("beyond_noise") else "tab:gray" for n, r in zip(names, rows[::-1])]
        for y, (m, sd, c) in enumerate(zip(means, stds, colors)):
            ax.errorbar(m, y, xerr=sd, fmt="o", color=c, ecolor=c, capsize=3)
        base = next((r for r in rows if r["variant"] == "baseline"), None)
        if base is not None:
            ax.axvline(base["mean"], color="black", lw=0.8)
            if not math.isnan(base["std"]):
                ax.axvspan(base["mean"] - 2 * base["std"], base["mean"] + 2 * base["std"], color="black", alpha=0.08)
        ratios = ratios or {}
        steps = {r["variant"]: r["steps"] for r in rows}
        ax.set_yticks(range(len(names)), [f"{n} ({steps[n]:,.0f} steps)" if mode == "budget" else
                                          f"{n} (step ×{ratios[n]['ratio']:.2f})" if n in ratios else n for n in names])
        ax.set_xlabel("validation loss, whole split (nats/char; lower is better)")
        ax.set_title(title, fontsize=8.5)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    print(f"figure: {out_png}")


def panel_title(label: str, rows: list[dict]) -> str:
    lo = min(r["load"][0] for r in rows)
    hi = max(r["load"][1] for r in rows)
    n = max(r["n"] for r in rows)
    return (f"{label}, up to {n} seeds; 1-min load average {lo:.2f}-{hi:.2f}\n"
            "green / red: better / worse than the baseline by more than 2σ; band: baseline ± 2σ")


def report(path: Path, steps: Optional[int], budget: Optional[float], figure: Optional[Path], track: str,
           timing_sessions: Optional[list[str]] = None, run_sessions: Optional[list[str]] = None) -> None:
    """Tables (and the figure) from the JSONL: equal steps and/or wall clock, and the latest step-time ratios.

    run_sessions keeps only the runs of those sessions, so that each variant is paired with the baseline
    runs interleaved with it (a baseline from another session ran under another load)."""
    panels = []
    views = [("steps", dict(steps_target=steps), f"equal steps ({steps} each)") if steps else None,
             ("budget", dict(budget_s=budget), f"wall clock ({budget:g} s of training each)") if budget else None]
    for mode, match, label in filter(None, views):
        runs = [r for r in read_records(path, kind="run", track=track, mode=mode, **match)
                if not run_sessions or r.get("session") in run_sessions]
        rows = summarise(runs, TRACKS[track].thresholds)
        if rows:
            print_summary(rows, label)
            panels.append((panel_title(label, rows), rows, mode))
    latest: dict[str, dict] = {}
    for r in read_records(path, kind="timing", track=track):
        if not timing_sessions or r["session"] in timing_sessions:
            latest[r["variant"]] = r
    if latest:
        print("\nstep time relative to the baseline (latest timing session of each variant)")
        for name, r in latest.items():
            print(f"{name:<28} {r['ratio']:.3f} (rounds {r['ratio_range'][0]:.3f}-{r['ratio_range'][1]:.3f}) "
                  f"{r['median_step_s'] * 1000:.1f} ms/step  warm-up {r['warmup_s']:.1f}s  load {r['load_start'][0]:.2f}")
    for title, rows, _ in panels:
        print(f"\n{title.splitlines()[0]}, as Markdown:\n{markdown(rows, latest)}")
    if figure and panels:
        plot(panels, figure, latest)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--track", choices=sorted(TRACKS), default="cpu")
    p.add_argument("--configs", default="baseline", help="comma-separated variants of bench/ladder.py; "
                   "join changes with '+' (muon+relu2)")
    p.add_argument("--ladder", action="store_true", help="the baseline and every rung of the ladder (ladder.LADDER)")
    p.add_argument("--budget", type=float, default=None, help="seconds of training (default: the track's)")
    p.add_argument("--steps", type=int, default=None, help="train a fixed number of steps instead of a budget")
    p.add_argument("--seeds", type=int, default=3, help=f"how many seeds, from {SEEDS[0]} on (at most {len(SEEDS)})")
    p.add_argument("--seed-start", type=int, default=0, help="skip this many seeds of the list (add seeds 4 and 5 "
                   "to an earlier run: --seed-start 3 --seeds 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the track's; cpu: 2)")
    p.add_argument("--timing", action="store_true", help="step-time ratios instead of runs")
    p.add_argument("--rounds", type=int, default=5, help="timing: rounds of bursts")
    p.add_argument("--burst", type=int, default=30, help="timing: steps per burst")
    p.add_argument("--report", action="store_true", help="print the tables from the results file; no training")
    p.add_argument("--figure", type=Path, default=None, help="with --report: write the ladder figure (PNG)")
    p.add_argument("--timing-sessions", default=None, help="with --report: the timing sessions to use "
                   "(comma-separated; default: the latest timing of each variant)")
    p.add_argument("--out", type=Path, default=RESULTS, help="the JSONL file results go to (and --report reads)")
    p.add_argument("--session", default=None, help="a label stored with every record (default: the start time); "
                   "with --report, the sessions whose runs to read (comma-separated; default: all)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    track = TRACKS[args.track]
    if args.report:
        sessions = args.timing_sessions.split(",") if args.timing_sessions else None
        report(args.out, args.steps, args.budget or (None if args.steps else track.budget_s), args.figure, track.name,
               sessions, args.session.split(",") if args.session else None)
        return
    if track.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("the gpu track needs a CUDA GPU, and this machine has none")
    threads = args.threads or track.threads
    if threads:
        torch.set_num_threads(threads)
    names = list(ladder.LADDER) if args.ladder else args.configs.split(",")
    variants = [ladder.get_variant(n) for n in names]
    session = args.session or time.strftime("%Y%m%d-%H%M%S")
    if args.timing:
        timing(variants, track, args.rounds, args.burst, args.out, session)
        return
    if not (1 <= args.seeds and 0 <= args.seed_start and args.seed_start + args.seeds <= len(SEEDS)):
        raise SystemExit(f"--seed-start + --seeds must be at most {len(SEEDS)}, with at least one seed")
    budget = None if args.steps else (args.budget or track.budget_s)
    records = run_interleaved(variants, track, list(SEEDS[args.seed_start:args.seed_start + args.seeds]), budget, args.steps, args.out, session)
    label = f"{args.steps} steps each" if args.steps else f"{budget:g} s of training each"
    print_summary(summarise(records, track.thresholds), f"{track.name} track, {label}, {threads or 'default'} threads, session {session}")


if __name__ == "__main__":
    main()
