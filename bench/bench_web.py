"""The web page's file sizes, and generation speed in onnxruntime (Python) and in Chromium.

`export --web` of a checkpoint goes to a temporary folder; then 500 greedy tokens after "ROMEO:"
(past the context, so the KV cache slides) are timed, best of 3 after a warm-up, in:
  - PyTorch, `generate` with the KV cache (what `tinyllm.py sample` does), one thread;
  - onnxruntime in Python, one thread: the page's model (a step with the KV cache), and the plain
    `export --onnx` graph run on the whole window for every token;
  - Chromium, in real time: the page itself (its own "tokens/s" line), driven by playwright-core:
    the generation a fresh page starts on load (?prompt=...), then three more on the same page, once
    WebAssembly is compiled and warm. (Headless Chromium's --virtual-time-budget cannot time it: its
    clock stands still.)
Every run also checks that the tokens are PyTorch's.

    python bench/bench_web.py --ckpt RUN [--playwright DIR] [--chromium PATH]

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

import tinyllm  # noqa: E402

PROMPT, N, REPS = "ROMEO:", 500, 3

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
    const done = () => page.waitForFunction(() => document.body.dataset.state === "done", null, { timeout: 120000 });
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


def best_rate(generate) -> float:
    generate(20)  # warm-up
    return max(N / timed(generate) for _ in range(REPS))


def timed(generate) -> float:
    start = time.perf_counter()
    generate(N)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="a checkpoint file or run directory")
    p.add_argument("--playwright", help="a folder whose node_modules holds playwright-core")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args()
    torch.set_num_threads(1)
    ckpt = tinyllm.load_checkpoint(args.ckpt)
    model, tok = ckpt["model"].eval(), ckpt["tokenizer"]
    prompt = tok.encode(PROMPT)
    want = tinyllm.generate(model, torch.tensor([prompt]), N, temperature=0)[0, len(prompt):].tolist()
    S = model.config.block_size
    print(f"model: {model.num_params():,} parameters, context {S}, {tok.kind} tokenizer ({tok.vocab_size} tokens)")

    folder = Path(tempfile.mkdtemp()) / "site"
    tinyllm.export_web(model, folder, tok)
    plain = tinyllm.export_onnx(model, folder.parent / "plain" / "model.onnx", tok)
    print("\nfile                          bytes     gzip -9")
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        print(f"{f.name:28s} {len(data):10,d} {len(gzip.compress(data, 9)):10,d}")
    total = sum(f.stat().st_size for f in folder.iterdir())
    print(f"{'total':28s} {total:10,d}")

    def torch_generate(n: int) -> None:
        tinyllm.generate(model, torch.tensor([prompt]), n, temperature=0)

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    start = time.perf_counter()
    cached = onnxruntime.InferenceSession(str(folder / "model.onnx"), options)
    load_ms = (time.perf_counter() - start) * 1000
    window = onnxruntime.InferenceSession(str(plain), options)
    shape = json.loads((folder / "model.json").read_text())["cache_shape"]

    def ort_cached(n: int) -> list[int]:
        k = v = np.zeros(shape, np.float32)
        feed, seen, out = prompt[-S:], 0, []
        for _ in range(n):
            logits, k, v = cached.run(None, {"idx": np.array([feed]), "seen": np.array(seen), "k_cache": k, "v_cache": v})
            seen += len(feed)
            feed = [int(logits[0, -1].argmax())]
            out += feed
        return out

    def ort_window(n: int) -> list[int]:
        ids = list(prompt)
        for _ in range(n):
            ids.append(int(window.run(None, {"idx": np.array([ids[-S:]])})[0][0, -1].argmax()))
        return ids[len(prompt):]

    print(f"\n{N} greedy tokens after {PROMPT!r}, best of {REPS}, one thread")
    print(f"PyTorch generate (KV cache)           {best_rate(torch_generate):7.0f} tokens/s")
    print(f"onnxruntime {onnxruntime.__version__}, page's model (KV cache) {best_rate(ort_cached):7.0f} tokens/s"
          f"   (session created in {load_ms:.0f} ms; tokens same as PyTorch: {ort_cached(N) == want})")
    print(f"onnxruntime, export --onnx (window)   {best_rate(ort_window):7.0f} tokens/s"
          f"   (tokens same as PyTorch's without the cache: "
          f"{ort_window(N) == tinyllm.generate(model, torch.tensor([prompt]), N, temperature=0, use_cache=False)[0, len(prompt):].tolist()})")

    if not args.playwright:
        print("\nChromium: skipped (no --playwright DIR)")
        return
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/index.html?" + urlencode({"prompt": PROMPT, "tokens": N, "temperature": 0})
    result = subprocess.run(["node", "-e", DRIVER, url, args.chromium, str(REPS)], capture_output=True, text=True,
                            cwd=args.playwright, timeout=600)
    server.shutdown()
    if result.returncode != 0:
        sys.exit(f"the Chromium run failed:\n{result.stderr[-2000:]}")
    runs = json.loads(result.stdout)
    version = subprocess.run([args.chromium, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"\n{version}, onnxruntime-web (WebAssembly, one thread), the page's own figures:")
    for run in runs:
        same = run["output"] == PROMPT + tok.decode(want)
        when = f"new page, model loaded in {run['loadMs']:4d} ms" if "loadMs" in run else "same page, again" + 18 * " "
        print(f"  {when}: {run['stats']}; tokens same as PyTorch: {same}")


if __name__ == "__main__":
    main()
