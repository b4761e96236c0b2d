"""Training throughput on this CPU: tokens/s for forward + backward + AdamW step, and FLOP/s.

For the `cpu` and `9m` presets (fp32, batch and context from the preset), times training steps after
a warm-up (best of several bursts, so that a busy machine hurts less) and converts to FLOP/s with

    FLOPs per token = 6 * N  +  6 * n_layer * block_size * d_model

N = parameters in matrix multiplies (the tied embedding/head counts once, as the head's matmul; the
embedding lookup is free). 6N is 2N for the forward pass and 4N for the backward pass. The second
term is attention's scores and weighted sum: per layer and token 2 * T * d_model forward for q.k and
as much for weights.v, times 3 for forward + backward, counted for the full T x T square (as the
PaLM paper's formula does; causal masking could skip half). The ceiling beside it is a large square
fp32 matmul, the best case for the CPU's vector units.

    python bench/bench_throughput.py [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import tinyllm  # noqa: E402


def matmul_flops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def flops_per_token(model: tinyllm.TinyLLM) -> float:
    cfg = model.config
    n = model.num_params() - sum(p.numel() for name, p in model.named_parameters() if "norm" in name)
    return 6 * n + 6 * cfg.n_layer * cfg.block_size * cfg.d_model


def train_throughput(preset: str, bursts: int = 3, steps: int = 10, warmup: int = 3) -> dict:
    torch.manual_seed(0)
    cfg = tinyllm.ModelConfig.from_preset(preset, vocab_size=65)
    tc = tinyllm.TrainConfig.from_preset(preset)
    model = tinyllm.TinyLLM(cfg)
    opt = tinyllm.make_optimizer(model, tc)
    scaler = torch.amp.GradScaler("cpu", enabled=False)  # fp32 on the CPU: the scaler does nothing
    data = torch.randint(0, 65, (200_000,))
    gen = torch.Generator().manual_seed(0)

    def step():  # Part I's own training step, as train() and fit() run it
        batch = tinyllm.get_batch(data, tc.batch_size, cfg.block_size, gen, torch.device("cpu"))
        tinyllm.train_step(model, opt, scaler, [batch], tc.lr, None, tc.grad_clip)

    for _ in range(warmup):
        step()
    best = float("inf")
    for _ in range(bursts):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - t) / steps)
    tokens = tc.batch_size * cfg.block_size
    fpt = flops_per_token(model)
    return {"preset": preset, "params": model.num_params(), "batch": tc.batch_size, "context": cfg.block_size,
            "step_s": best, "tokens_per_s": tokens / best, "flops_per_token": fpt, "flops": fpt * tokens / best}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    peak = matmul_flops()
    print(f"torch {torch.__version__}, {args.threads} threads, {torch.backends.cpu.get_cpu_capability()}, "
          f"load average {load:.2f}")
    print(f"fp32 matmul 2048x2048 (practical ceiling): {peak / 1e9:.1f} GFLOP/s")
    print(f"{'preset':>6} {'params':>8} {'B x T':>9} {'step':>8} {'tokens/s':>9} {'FLOPs/token':>12} "
          f"{'GFLOP/s':>8} {'of ceiling':>10}")
    for preset in ("cpu", "9m"):
        # a 9m step (64 x 256 tokens) is ~1 TFLOP, tens of seconds on a CPU: time fewer of them
        r = train_throughput(preset) if preset == "cpu" else train_throughput(preset, bursts=2, steps=1, warmup=1)
        print(f"{preset:>6} {r['params'] / 1e6:7.2f}M {r['batch']:>4} x {r['context']:<4}"
              f"{r['step_s'] * 1e3:7.0f}ms {r['tokens_per_s']:9.0f} {r['flops_per_token'] / 1e6:10.1f} M"
              f"{r['flops'] / 1e9:8.1f} {r['flops'] / peak:9.0%}")
    print(f"FLOPs per token = 6*N + 6*n_layer*T*d_model (N: parameters in matmuls, tied head once); "
          f"load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
