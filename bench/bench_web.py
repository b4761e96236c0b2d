"""The web page's file sizes, and generation speed in onnxruntime (Python) and in Chromium; with --int8, the
8-bit model beside the float one: file size, validation loss, greedy agreement and speed.

`export --web` of a checkpoint goes to a temporary folder; then 500 greedy tokens after "ROMEO:"
(past the context, so the KV cache slides) are timed, best of 3 after a warm-up, in:
  - PyTorch, `generate` with the KV cache (what `tinyllm.py sample` does), one thread;
  - onnxruntime in Python, one thread: the page's model (a step with the KV cache), and the plain
    `export --onnx` graph run on the whole window for every token;
  - Chromium, in real time: the page itself (its own "tokens/s" line), driven by playwright-core:
    the generation a fresh page starts on load (?prompt=...), then three more on the same page, once
    WebAssembly is compiled and warm. (Headless Chromium's --virtual-time-budget cannot time it: its
    clock stands still.)
Every run also checks that the tokens are PyTorch's. With --int8, the same for `export --web --int8`,
and, for the float and the 8-bit models: the loss on the whole validation split of the checkpoint's
data (nats per character, with `export --onnx`'s graph), and, for the page's model.onnx fed PyTorch's
500 greedy tokens, how often its next token is PyTorch's (and where its own greedy text first parts).

    python bench/bench_web.py --ckpt RUN [--int8] [--playwright DIR] [--chromium PATH] [--reps N]

playwright-core is not a dependency of tinyllm: `npm install --prefix DIR playwright-core` puts it in
DIR/node_modules (without it, the Chromium part is skipped).
"""

from __future__ import annotations

import argparse
import functools
import gzip
import http.server
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import onnxruntime
import torch

import tinyllm

PROMPT, N = "ROMEO:", 500

DRIVER = """
const { chromium } = require("playwright-core");
(async () => {
  const [url, executablePath, reps] = process.argv.slice(1); // node -e SCRIPT ARGS...
  const browser = await chromium.launch({ executablePath, args: ["--no-sandbox", "--disable-gpu"] });
  const runs = [];
  for (let i = 0; i < Number(reps); i++) {
    const page = await browser.newPage();
    await page.addInitScript(() => { // note when the page's state becomes "running" (the model is loaded)
      new MutationObserver(() => { if (document.body.dataset.state === "running") window.loadedAt ??= performance.now(); })
        .observe(document, { attributes: true, subtree: true, attributeFilter: ["data-state"] });
    });
    await page.goto(url); // its ?prompt= starts a generation once the model is loaded
    const done = () => page.waitForFunction(() => document.body.dataset.state === "done", null, { timeout: 300000 });
    await done();
    const loadMs = await page.evaluate(() => Math.round(window.loadedAt));
    runs.push({ loadMs, stats: await page.textContent("#stats"), output: await page.textContent("#output") });
    for (let j = 0; j < 3; j++) { // the same again, with WebAssembly compiled and warm
      await page.evaluate(() => (document.body.dataset.state = "clicked"));
      await page.click("#generate");
      await done();
      runs.push({ stats: await page.textContent("#stats"), output: await page.textContent("#output") });
    }
    await page.close();
  }
  console.log(JSON.stringify(runs));
  await browser.close();
})();
"""


def best_rate(generate, reps: int) -> float:
    generate(20)  # warm-up
    return max(N / timed(generate) for _ in range(reps))


def timed(generate) -> float:
    start = time.perf_counter()
    generate(N)
    return time.perf_counter() - start


def print_sizes(folder: Path) -> None:
    print(f"\n{folder.name}: file                  bytes     gzip -9")
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        print(f"  {f.name:28s} {len(data):10,d} {len(gzip.compress(data, 9)):10,d}")
    print(f"  {'total':28s} {sum(f.stat().st_size for f in folder.iterdir()):10,d}")


def session(path: Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options)


def cached_generator(site: Path, prompt: list[int], block: int):
    """(n, forced) -> the page's model's n greedy tokens after prompt, run by onnxruntime as the page runs it.

    With `forced` (a list of tokens), the model is fed those instead of its own, and what it would
    have said at each step is returned.
    """
    step = session(site / "model.onnx")
    shape = json.loads((site / "model.json").read_text())["cache_shape"]

    def generate(n: int, forced: list[int] | None = None) -> list[int]:
        k = v = np.zeros(shape, np.float32)
        feed, seen, out = prompt[-block:], 0, []
        for i in range(n):
            logits, k, v = step.run(None, {"idx": np.array([feed]), "seen": np.array(seen), "k_cache": k, "v_cache": v})
            seen += len(feed)
            out.append(int(logits[0, -1].argmax()))
            feed = [out[-1] if forced is None else forced[i]]
        return out

    return generate


def python_speeds(model, tok, site: Path, plain: Path, reps: int) -> list[int]:
    """PyTorch's and onnxruntime's tokens/s; returns PyTorch's greedy tokens (what every runtime must give)."""
    prompt, S = tok.encode(PROMPT), model.config.block_size
    want = tinyllm.generate(model, torch.tensor([prompt]), N, temperature=0)[0, len(prompt):].tolist()
    window = session(plain)

    def torch_generate(n: int) -> None:
        tinyllm.generate(model, torch.tensor([prompt]), n, temperature=0)

    def ort_window(n: int) -> list[int]:
        ids = list(prompt)
        for _ in range(n):
            ids.append(int(window.run(None, {"idx": np.array([ids[-S:]])})[0][0, -1].argmax()))
        return ids[len(prompt):]

    cached = cached_generator(site, prompt, S)
    no_cache = tinyllm.generate(model, torch.tensor([prompt]), N, temperature=0, use_cache=False)[0, len(prompt):].tolist()
    print(f"\n{N} greedy tokens after {PROMPT!r}, best of {reps}, one thread")
    print(f"PyTorch generate (KV cache)           {best_rate(torch_generate, reps):7.0f} tokens/s")
    print(f"onnxruntime {onnxruntime.__version__}, page's model (KV cache) {best_rate(cached, reps):7.0f} tokens/s"
          f"   (tokens same as PyTorch: {cached(N) == want})")
    print(f"onnxruntime, export --onnx (window)   {best_rate(ort_window, reps):7.0f} tokens/s"
          f"   (tokens same as PyTorch's without the cache: {ort_window(N) == no_cache})")
    return want


def chromium_speeds(site: Path, args, expected: str) -> None:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/index.html?" + urlencode({"prompt": PROMPT, "tokens": N, "temperature": 0})
    result = subprocess.run(["node", "-e", DRIVER, url, args.chromium, str(args.reps)], capture_output=True, text=True,
                            cwd=args.playwright, timeout=1200)
    server.shutdown()
    if result.returncode != 0:
        sys.exit(f"the Chromium run failed:\n{result.stderr[-2000:]}")
    version = subprocess.run([args.chromium, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"\n{site.name} in {version}, onnxruntime-web (WebAssembly, one thread), the page's own figures:")
    for run in json.loads(result.stdout):
        when = f"new page, model loaded in {run['loadMs']:4d} ms" if "loadMs" in run else "same page, again" + 18 * " "
        print(f"  {when}: {run['stats']}; tokens as expected: {run['output'] == expected}")


def val_loss(graph: Path, val_ids: list[int], block: int, batch: int = 16) -> float:
    """Mean next-token loss (nats) over the non-overlapping windows of the whole split, as tinyllm's evaluate takes them."""
    run, data = session(graph), np.array(val_ids)
    n = (len(data) - 1) // block
    total = 0.0
    for first in range(0, n, batch):
        starts = np.arange(first, min(first + batch, n))[:, None] * block
        chunk = data[starts + np.arange(block + 1)]
        logits = run.run(None, {"idx": chunk[:, :-1]})[0].astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        total -= np.take_along_axis(logp, chunk[:, 1:, None], -1).sum()
    return total / (n * block)


def int8_report(model, tok, ckpt: dict, folder: Path, want: list[int]) -> None:
    """The float and the 8-bit model side by side: file size, validation loss, greedy agreement."""
    graphs = {"float": tinyllm.export_onnx(model, folder / "plain" / "float.onnx", tok),
              "int8": tinyllm.export_onnx(model, folder / "plain" / "int8.onnx", tok, int8=True)}
    text = tinyllm.load_text((ckpt.get("meta") or {}).get("data", "shakespeare"))
    _, val_ids, chars_per_token = tinyllm.prepare_data(text, tok)
    S, prompt = model.config.block_size, tok.encode(PROMPT)
    print(f"\nfloat and int8, validation split of {len(val_ids):,} tokens, all of it (export --onnx's graph); "
          f"along PyTorch's {N} greedy tokens (the page's model.onnx):")
    for name, graph in graphs.items():
        loss = val_loss(graph, val_ids, S) / chars_per_token
        site = folder / ("site" if name == "float" else "site-int8")
        run = cached_generator(site, prompt, S)
        agree = np.mean(np.array(run(N, forced=want)) == np.array(want))  # fed PyTorch's tokens: its next one?
        parted = next((i for i, (a, b) in enumerate(zip(run(N), want)) if a != b), "never")
        print(f"  {name:5s} model.onnx {(site / 'model.onnx').stat().st_size:10,d} bytes | val loss {loss:.4f} nats/char"
              f" | next token = PyTorch's greedy one: {100 * agree:5.1f}% of {N} | its own greedy text parts"
              f" from PyTorch's at token {parted}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="a checkpoint file or run directory")
    p.add_argument("--int8", action="store_true", help="also the 8-bit model (export --int8), beside the float one")
    p.add_argument("--playwright", help="a folder whose node_modules holds playwright-core")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--reps", type=int, default=3, help="timings per runtime (default 3)")
    args = p.parse_args()
    torch.set_num_threads(1)
    ckpt = tinyllm.load_checkpoint(args.ckpt)
    model, tok = ckpt["model"].eval(), ckpt["tokenizer"]
    print(f"model: {model.num_params():,} parameters, context {model.config.block_size}, {tok.kind} tokenizer "
          f"({tok.vocab_size} tokens)")
    folder = Path(tempfile.mkdtemp())
    sites = [tinyllm.export_web(model, folder / "site", tok)]
    if args.int8:
        sites.append(tinyllm.export_web(model, folder / "site-int8", tok, int8=True))
    for site in sites:
        print_sizes(site)
    want = python_speeds(model, tok, sites[0], tinyllm.export_onnx(model, folder / "plain" / "model.onnx", tok), args.reps)
    if args.int8:
        int8_report(model, tok, ckpt, folder, want)
    if not args.playwright:
        print("\nChromium: skipped (no --playwright DIR)")
        return
    for site in sites:  # float: PyTorch's text; int8: what onnxruntime gives for the 8-bit model
        expected = want if site.name == "site" else cached_generator(site, tok.encode(PROMPT), model.config.block_size)(N)
        chromium_speeds(site, args, PROMPT + tok.decode(expected))


if __name__ == "__main__":
    main()
