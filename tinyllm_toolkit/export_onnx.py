"""Export to ONNX and the web page (`export --onnx`, `export --web`).
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinyllm import BPETokenizer, TinyLLM, Tokenizer, apply_rope, rope_angles
from tinyllm_toolkit.export_hf import hf_split_pattern
from tinyllm_toolkit.files import atomic_write_bytes, export_folder, export_source


# ONNX is a file format for a computation graph and its weights that runtimes in many languages
# run: onnxruntime in Python, C++ or C#, and onnxruntime-web in a browser (WebAssembly). The graph
# is the model's forward pass, token ids -> logits, or for the web page a step of generation with
# the KV cache; the tokenizer and the sampling loop are short enough to write again in JavaScript
# (web/tinyllm.js), so a static page can generate text with no server behind it. Every export goes
# through `export_folder`, which never writes into a folder that is not a tinyllm export unless
# told to. onnx is needed only here, and imported only here.

WEB_DIR = Path(__file__).resolve().parent.parent / "web"  # the page's template files


# onnxruntime-web's files that a page running on WebAssembly needs, from its npm package's dist/.
ORT_WEB_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")


def js_split_pattern(pattern: str) -> str:
    """A BPE split pattern for JavaScript's RegExp (flag u) that cuts text exactly as Python's re does.

    JavaScript's \\d and \\w are ASCII only and its \\s is not Python's either, so this takes
    hf_split_pattern's translation (each of them written out as the code-point ranges Python
    matches) and changes its escapes to JavaScript's: \\x{HHHH} becomes \\u{HHHH} and \\& a plain &.
    """
    def to_js(m: re.Match) -> str:
        escape = m.group(1)
        return "\\u" + escape[1:] if escape.startswith("x{") else "&" if escape == "&" else m.group()

    return re.sub(r"\\(x\{[0-9A-F]+\}|.)", to_js, hf_split_pattern(pattern), flags=re.S)


class CachedForward(nn.Module):
    """TinyLLM.forward with the KV cache as tensors in and out, so that a step of generation traces to ONNX.

    KVCache keeps its state in Python (tensors and a counter), which a trace cannot follow, so here
    the state travels with each call: k_cache and v_cache (n_layer, batch, n_head, block_size, head_dim)
    and `seen`, the number of tokens before idx. As in KVCache, the token at position p sits in slot
    p % block_size, so once the cache is full each new token replaces the oldest one (the window
    slides), and a mask says which slots each query may see. Returns the logits and the new caches.
    """

    def __init__(self, model: TinyLLM):
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor, seen: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model, cfg = self.model, self.model.config
        B, T = idx.shape
        S, H, D = cfg.block_size, cfg.n_head, cfg.d_model // cfg.n_head
        positions = seen + torch.arange(T)  # (T,)
        cos, sin = rope_angles(D, positions, cfg.rope_theta)
        slots = torch.arange(S)
        write = (positions[:, None] % S == slots).float()  # (T, S): 1 where token t goes
        keep = 1 - write.sum(0)[:, None]  # (S, 1): 1 for the slots left as they were
        held = seen + T - 1 - (seen + T - 1 - slots) % S  # (S,): the position in each slot after the writes
        visible = (held <= positions[:, None]) & (held > positions[:, None] - S) & (held >= 0)  # (T, S)
        x = model.embed(idx)
        new_k, new_v = [], []
        for i, block in enumerate(model.blocks):
            q, k, v = block.attn.qkv(block.norm1(x)).split(cfg.d_model, dim=2)
            q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            k = k_cache[i] * keep + write.T @ k  # (B, H, S, D): the new keys written into their slots
            v = v_cache[i] * keep + write.T @ v
            scores = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~visible, float("-inf"))
            y = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, cfg.d_model)
            x = x + block.attn.proj(y)
            x = x + block.mlp(block.norm2(x))
            new_k.append(k)
            new_v.append(v)
        return model.head(model.norm(x)), torch.stack(new_k), torch.stack(new_v)


def onnx_model_bytes(model: TinyLLM, kv_cache: bool = False, opset: int = 18) -> bytes:
    """The forward pass as an ONNX model: "idx" (batch, T) int64 -> "logits" (batch, T, vocab_size) float32.

    With `kv_cache`, the graph is CachedForward's: it also takes "seen", "k_cache" and "v_cache" and
    returns "new_k_cache" and "new_v_cache". It uses torch's TorchScript exporter (dynamo=False),
    which traces one call and needs only the onnx package. The example has T >= 2: traced on one
    token, a "dynamic" T is silently fixed to 1. The trace keeps no Python `if`, so the graph has no
    context check: T must stay <= block_size. Opset 18, as onnxruntime-web trails the Python runtime.
    """
    import copy
    import warnings

    try:
        import onnx  # noqa: F401  (torch's exporter writes the file with it)
    except ImportError:
        raise ImportError("exporting to ONNX needs the onnx package: pip install onnx") from None
    model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    cfg = model.config
    idx = torch.zeros(1, min(8, cfg.block_size), dtype=torch.long)
    axes = {"idx": {0: "batch", 1: "T"}, "logits": {0: "batch", 1: "T"}}
    if kv_cache:
        cache = torch.zeros(cfg.n_layer, 1, cfg.n_head, cfg.block_size, cfg.d_model // cfg.n_head)
        module, args = CachedForward(model), (idx, torch.tensor(0), cache, cache)
        inputs, outputs = ["idx", "seen", "k_cache", "v_cache"], ["logits", "new_k_cache", "new_v_cache"]
        axes.update({name: {1: "batch"} for name in inputs[2:] + outputs[1:]})
    else:
        module, args, inputs, outputs = model, (idx,), ["idx"], ["logits"]
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the exporter's deprecation notice, and the tracer's on `if T > block_size`
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=opset, dynamo=False)
    return buffer.getvalue()


def write_onnx(model: TinyLLM, tokenizer: Optional[Tokenizer], path: Path, kv_cache: bool = False) -> None:
    """Write FILE.onnx (path) and FILE.json beside it: the config and tokenizer that a runtime needs."""
    cfg = model.config
    info = {"format": "tinyllm-onnx", "version": 1, "kv_cache": kv_cache, "parameters": model.num_params(),
            "config": asdict(cfg), "tokenizer": tokenizer.to_dict() if tokenizer is not None else None}
    if kv_cache:
        info["cache_shape"] = [cfg.n_layer, 1, cfg.n_head, cfg.block_size, cfg.d_model // cfg.n_head]
    if isinstance(tokenizer, BPETokenizer):
        info["split_pattern_js"] = js_split_pattern(tokenizer.pattern)
    atomic_write_bytes(path, onnx_model_bytes(model, kv_cache))
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(info, ensure_ascii=False, indent=1).encode("utf-8"))


def export_onnx(checkpoint: str | Path | TinyLLM, path: str | Path, tokenizer: Optional[Tokenizer] = None,
                overwrite: bool = False, kv_cache: bool = False) -> Path:
    """Write a model (or a checkpoint file or run directory) as an ONNX file, with a JSON file beside it.

    FILE.onnx maps token ids "idx" (batch, T) int64, T <= block_size, to "logits" (batch, T,
    vocab_size), or with `kv_cache` does a step of generation with the cache (see CachedForward);
    FILE.json holds the model's config and its tokenizer. The folder they go into must be new, empty
    or a previous export (see `export_folder`). Returns the path of the .onnx file.
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"the ONNX file's name must end in .onnx (its JSON goes beside it), got {path}")
    model, tokenizer = export_source(checkpoint, tokenizer)
    with export_folder(path.parent, "onnx", overwrite) as folder:
        write_onnx(model, tokenizer, folder / path.name, kv_cache)
    return path


def export_web(checkpoint: str | Path | TinyLLM, out_dir: str | Path, tokenizer: Optional[Tokenizer] = None,
               overwrite: bool = False) -> Path:
    """Write a static web page that generates text with the model in the browser; returns the folder.

    The folder holds web/'s index.html and tinyllm.js, the model as model.onnx (a step of generation
    with the KV cache, as `generate` takes it) and model.json, and, if `npm ci --prefix web` has
    installed it, onnxruntime-web's files (then the page works offline; without them it loads the
    same version from a CDN). Serve it with any static server.
    """
    import shutil

    model, tokenizer = export_source(checkpoint, tokenizer)
    if tokenizer is None:
        raise ValueError("the web page needs the model's tokenizer: export a checkpoint from tinyllm.py train, "
                         "or pass tokenizer=")
    if not (WEB_DIR / "index.html").is_file():
        raise FileNotFoundError(f"the page's template files are missing from {WEB_DIR}: export --web needs the "
                                "web/ folder that comes with tinyllm.py")
    runtime = WEB_DIR / "node_modules" / "onnxruntime-web" / "dist"
    with export_folder(out_dir, "web", overwrite) as folder:
        write_onnx(model, tokenizer, folder / "model.onnx", kv_cache=True)
        for name in ("index.html", "tinyllm.js"):
            shutil.copyfile(WEB_DIR / name, folder / name)
        if all((runtime / name).is_file() for name in ORT_WEB_FILES):
            for name in ORT_WEB_FILES:
                shutil.copyfile(runtime / name, folder / name)
    return Path(out_dir)
