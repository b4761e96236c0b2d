"""Generation speed with and without the KV cache, for the `9m` preset on this CPU.

A randomly initialised 9m model (speed does not depend on the weights) continues a one-token prompt
by 500 new tokens (past the 256-token context, where the cache slides as a ring buffer) and by 200
(within the context). Each is timed after a warm-up, best of a few runs; sampling at temperature 1.

    python bench/bench_generate.py [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import tinyllm  # noqa: E402


def tokens_per_s(model: tinyllm.TinyLLM, n: int, use_cache: bool, reps: int) -> float:
    prompt = torch.zeros(1, 1, dtype=torch.long)
    tinyllm.generate(model, prompt, 20, seed=0, use_cache=use_cache)  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        out = tinyllm.generate(model, prompt, n, seed=0, use_cache=use_cache)
        best = min(best, time.perf_counter() - t)
    assert out.size(1) == n + 1
    return n / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = tinyllm.TinyLLM(tinyllm.ModelConfig.from_preset("9m", vocab_size=65)).eval()
    print(f"9m preset: {model.num_params() / 1e6:.2f}M parameters, context {model.config.block_size}, "
          f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.2f}")
    print(f"{'new tokens':>10} {'no cache tok/s':>15} {'KV cache tok/s':>15} {'speed-up':>9}")
    for n in (500, 200):
        slow = tokens_per_s(model, n, use_cache=False, reps=2)
        fast = tokens_per_s(model, n, use_cache=True, reps=3)
        print(f"{n:>10} {slow:15.1f} {fast:15.1f} {fast / slow:8.1f}x")
    print(f"load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
