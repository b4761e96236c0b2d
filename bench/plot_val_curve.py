"""Plot validation loss against seconds for the run recorded by bench/bench_train.py.

    python bench/plot_val_curve.py [bench/results/cpu_run.json] [bench/val_loss_vs_time.png]

Periodic evaluations use a subset of the validation windows; the last point is the whole split.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results" / "cpu_run.json"
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "val_loss_vs_time.png"
    run = json.loads(src.read_text())
    hist = run["history"]
    secs, vals = [h["seconds"] for h in hist], [h["val_loss"] for h in hist]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=90)
    ax.plot(secs, vals, marker="o", ms=3, label=f"tinyllm cpu preset ({run['params'] / 1e6:.2f}M params)")
    ax.plot(secs[-1:], vals[-1:], marker="*", ms=12, color="C0", ls="none")
    ax.annotate(f"{vals[-1]:.3f} (whole val split)", (secs[-1], vals[-1]), textcoords="offset points",
                xytext=(-120, 12), fontsize=8)
    ax.axhline(1.60, color="C3", ls="--", lw=1, label="target 1.60")
    ax.plot([101], [1.898], "s", color="C1", label="nanoGPT CPU recipe: 1.898 @ 101 s")
    ax.plot([74], [1.771], "^", color="C2", label="nanoGPT tuned: 1.771 @ 74 s")
    ax.set_xlabel("training seconds (2 CPU cores)")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_ylim(1.4, 3.0)
    ax.set_xlim(0, max(110, secs[-1] + 5))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"TinyShakespeare, char-level: val loss vs time ({run['cpu']})", fontsize=8)
    fig.tight_layout()
    fig.savefig(dst)
    print(f"wrote {dst} ({dst.stat().st_size / 1024:.0f} KiB) from {src}")


if __name__ == "__main__":
    main()
