"""The CPU quality target, measured end to end: the real command, the whole process timed.

Runs, as a subprocess,

    python tinyllm.py train --preset cpu --max-time 100 --out <tmpdir> --quiet

with TINYLLM_DATA_DIR pointing at the data, times the whole process (start-up, training, evaluations,
checkpoints and the final sample included), and reads the final validation loss from the run's last.pt
history. The final history row's val_loss is the loss over the WHOLE validation split (the last 10%
of TinyShakespeare) in non-overlapping windows of the model's context. Writes the history to
bench/results/cpu_run.json (plotted by bench/plot_val_curve.py).

    TINYLLM_DATA_DIR=/path/to/data python bench/bench_train.py [--max-time 100] [--preset cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
import tinyllm  # noqa: E402


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--max-time", type=float, default=100.0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "cpu_run.json"))
    args = p.parse_args()
    env = dict(os.environ)
    env.setdefault("TINYLLM_DATA_DIR", str(ROOT / "data"))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, str(ROOT / "tinyllm.py"), "train", "--preset", args.preset,
               "--max-time", str(args.max_time), "--out", str(run_dir), "--quiet"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"training failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        ckpt = tinyllm.load_checkpoint(run_dir / "last.pt")
    history = ckpt["history"]
    final = history[-1]
    load_after = os.getloadavg()
    result = {
        "command": " ".join(["python tinyllm.py"] + cmd[2:-3] + ["--out", "<tmpdir>", "--quiet"]),
        "wall_s": round(wall, 1), "steps": final["step"], "train_seconds": final["seconds"],
        "val_loss": final["val_loss"], "val_bpc": final["val_bpc"], "params": ckpt["model"].num_params(),
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch": tinyllm.torch.__version__,
        "threads": tinyllm.torch.get_num_threads(),
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "history": history,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"machine     : {result['cpu']}, {result['cores']} cores, torch {result['torch']}, "
          f"load {load_before[0]:.2f} before / {load_after[0]:.2f} after")
    print(f"command     : {result['command']}")
    print(f"wall        : {wall:.1f} s for the whole process (training clock {final['seconds']:.1f} s)")
    print(f"steps       : {final['step']}")
    print(f"val loss    : {final['val_loss']:.4f} nats/char over the whole validation split "
          f"(target <= 1.60: {'met' if final['val_loss'] <= 1.60 else 'NOT met'})")
    print(f"bits/char   : {final['val_bpc']:.3f}")
    print(f"history     : {args.out}")


if __name__ == "__main__":
    main()
