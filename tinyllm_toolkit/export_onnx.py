"""Export to ONNX and the web page (`export --onnx`, `export --web`).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import re
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from tinyllm import BPETokenizer, CHAT_TOKENS, TinyLLM, Tokenizer, chat_token_ids, rope_angles
from tinyllm_toolkit.export_hf import hf_split_pattern
from tinyllm_toolkit.files import atomic_write_bytes, export_folder, export_source


# ONNX is a file format for a computation graph and its weights that runtimes in many languages
# run: onnxruntime in Python, C++ or C#, and onnxruntime-web in a browser (WebAssembly). The graph
# is the model's forward pass, token ids -> logits, or for the web page a step of generation with
# the KV cache; the tokenizer and the sampling loop are short enough to write again in JavaScript
# (web/tinyllm.js), so a static page can generate text, or hold a conversation, with no server
# behind it. The web page is a folder and goes through `export_folder`, which never writes into a
# folder that is not a tinyllm export unless told to; a single ONNX file goes into any folder, but
# never replaces a file without being told to. onnx is needed only here, and imported only here.

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


class WindowCache:
    """A KVCache (section 12) whose state comes in and goes out as tensors, so that a trace can follow it.

    It holds one layer's keys and values (B, H, L, D) for the last L <= size tokens, in the order
    they came: `add` appends the new ones and keeps the last `size`. KVCache keeps the same set of
    tokens (in ring-buffer order, which attention does not see), so a step over this cache computes
    what a step over a KVCache does: a prompt of at most `size` tokens first, then one token at a time.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, size: int):
        self.k, self.v, self.size = k, v, size

    def add(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = torch.cat([self.k, k], dim=2)[:, :, -self.size:]
        self.v = torch.cat([self.v, v], dim=2)[:, :, -self.size:]
        return self.k, self.v


class CachedForward(nn.Module):
    """A step of generation with the KV cache as tensors in and out, made of the model's own modules.

    TinyLLM.forward with a cache, but the state travels with each call: k_cache and v_cache
    (n_layer, batch, n_head, L, head_dim) hold the keys and values of the last L <= block_size tokens
    (L = 0 at the start), and `seen` counts the tokens before idx (their positions). The model's own
    blocks do the work, each with a WindowCache; only the RoPE angles are computed here, for the
    positions from `seen` on. Returns the logits and the new caches.

    The attention runs `by_hand` (attention_by_hand, on a copy of the model): its causal mask lets
    the last T of the keys be the T queries' own, which is right for a prompt and for each later
    token alike. The fused kernel's is_causal would be fixed by the trace to its example and means
    "query i sees keys 0..i", wrong once the cache holds older keys.
    """

    def __init__(self, model: TinyLLM):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        for block in self.model.blocks:
            block.attn.by_hand = True

    def forward(self, idx: torch.Tensor, seen: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model, cfg = self.model, self.model.config
        positions = seen + torch.arange(idx.shape[1])  # (T,)
        cos, sin = rope_angles(cfg.d_model // cfg.n_head, positions, cfg.rope_theta)
        caches = [WindowCache(k_cache[i], v_cache[i], cfg.block_size) for i in range(cfg.n_layer)]
        x = model.embed(idx)
        for block, cache in zip(model.blocks, caches):
            x = block(x, cos, sin, cache)
        return model.head(model.norm(x)), torch.stack([c.k for c in caches]), torch.stack([c.v for c in caches])


def empty_cache_shape(cfg) -> list[int]:
    """The shape of k_cache and v_cache before the first step: no tokens seen yet."""
    return [cfg.n_layer, 1, cfg.n_head, 0, cfg.d_model // cfg.n_head]


def onnx_model_bytes(model: TinyLLM, kv_cache: bool = False, opset: int = 18) -> bytes:
    """The forward pass as an ONNX model: "idx" (batch, T) int64 -> "logits" (batch, T, vocab_size) float32.

    With `kv_cache`, the graph is CachedForward's: it also takes "seen", "k_cache" and "v_cache" and
    returns "new_k_cache" and "new_v_cache". It uses torch's TorchScript exporter (dynamo=False),
    which traces one call and needs only the onnx package. The example has T >= 2: traced on one
    token, a "dynamic" T is silently fixed to 1. The trace keeps no Python `if`, so the graph has no
    context check: T must stay <= block_size. Opset 18, as onnxruntime-web trails the Python runtime.
    """
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
        cache = torch.zeros(empty_cache_shape(cfg))
        module, args = CachedForward(model), (idx, torch.tensor(0), cache, cache)
        inputs, outputs = ["idx", "seen", "k_cache", "v_cache"], ["logits", "new_k_cache", "new_v_cache"]
        axes.update({name: {1: "batch", 3: "past"} for name in inputs[2:]})
        axes.update({name: {1: "batch", 3: "kept"} for name in outputs[1:]})
    else:
        module, args, inputs, outputs = model, (idx,), ["idx"], ["logits"]
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the exporter's deprecation notice, and the tracer's on `if T > block_size`
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=opset, dynamo=False)
    return buffer.getvalue()


def quantize_int8(data: bytes) -> bytes:
    """The ONNX model `data` with its weights stored as 8-bit integers, by onnxruntime's own quantizer.

    quantize_dynamic stores each weight matrix (and the embedding table) as int8 with one scale per
    tensor, and quantizes the activations on the fly at every step; the graph's inputs and outputs stay
    float32, so whatever runs the float model runs this one. About a quarter of the size.
    """
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ImportError("--int8 quantizes with onnxruntime's tools: pip install onnxruntime") from None
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(data)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # its advice to pre-process (shape inference) is for convolutional models
        try:
            quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        return target.read_bytes()


def is_chat_tokenizer(tokenizer: Optional[Tokenizer]) -> bool:
    """Whether the tokenizer has section 14's three chat tokens: then the model is a chat model."""
    return tokenizer is not None and all(t in getattr(tokenizer, "special_tokens", {}) for t in CHAT_TOKENS)


def onnx_files(model: TinyLLM, tokenizer: Optional[Tokenizer], name: str, kv_cache: bool = False,
               int8: bool = False) -> dict[str, bytes]:
    """NAME.onnx and NAME.json (the config and tokenizer that a runtime needs), as {file name: bytes}."""
    cfg = model.config
    info = {"format": "tinyllm-onnx", "version": 2, "kv_cache": kv_cache, "int8": int8,
            "parameters": model.num_params(), "config": asdict(cfg),
            "tokenizer": tokenizer.to_dict() if tokenizer is not None else None}
    if kv_cache:
        info["cache_shape"] = empty_cache_shape(cfg)  # the caches' shape before the first step
    if isinstance(tokenizer, BPETokenizer):
        info["split_pattern_js"] = js_split_pattern(tokenizer.pattern)
    if is_chat_tokenizer(tokenizer):
        info["chat_tokens"] = dict(zip(CHAT_TOKENS, chat_token_ids(tokenizer)))
    data = onnx_model_bytes(model, kv_cache)
    stem = Path(name).stem
    return {name: quantize_int8(data) if int8 else data,
            f"{stem}.json": json.dumps(info, ensure_ascii=False, indent=1).encode("utf-8")}


def export_onnx(checkpoint: str | Path | TinyLLM, path: str | Path, tokenizer: Optional[Tokenizer] = None,
                overwrite: bool = False, kv_cache: bool = False, int8: bool = False) -> Path:
    """Write a model (or a checkpoint file or run directory) as an ONNX file, with a JSON file beside it.

    FILE.onnx maps token ids "idx" (batch, T) int64, T <= block_size, to "logits" (batch, T,
    vocab_size), or with `kv_cache` does a step of generation with the cache (see CachedForward);
    FILE.json holds the model's config and its tokenizer. With `int8`, the weights are stored in 8
    bits (quantize_int8). The two files go into any folder; existing files of those names are
    replaced only with `overwrite`. Each is written atomically. Returns the path of the .onnx file.
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"the ONNX file's name must end in .onnx (its JSON goes beside it), got {path}")
    targets = [path, path.with_suffix(".json")]
    for target in targets:
        if target.is_dir():
            raise IsADirectoryError(f"{target} is a folder: give the name of a file to write, e.g. {target / 'model.onnx'}")
    taken = [str(t) for t in targets if t.exists() or t.is_symlink()]
    if taken and not overwrite:
        raise FileExistsError(f"refusing to replace {' and '.join(taken)}: choose another file name, or add "
                              "--overwrite (overwrite=True in Python) to replace it")
    model, tokenizer = export_source(checkpoint, tokenizer)
    files = onnx_files(model, tokenizer, path.name, kv_cache, int8)  # all made before anything is written
    for name, data in files.items():
        atomic_write_bytes(path.with_name(name), data)
    return path


PAGES = {"text": ("index.html", "page.js"), "chat": ("chat.html", "chat.js")}  # web/'s page for each kind of model


def export_web(checkpoint: str | Path | TinyLLM, out_dir: str | Path, tokenizer: Optional[Tokenizer] = None,
               overwrite: bool = False, int8: bool = False) -> Path:
    """Write a static web page that runs the model in the browser; returns the folder.

    A text model gets a page that continues a prompt, a chat model (its tokenizer has the chat tokens)
    a page to talk to it. The folder holds the page as index.html, its script, web/tinyllm.js, the
    model as model.onnx (a step of generation with the KV cache, as `generate` takes it; `int8`: its
    weights in 8 bits) and model.json, and, if `npm ci --prefix web` has installed it,
    onnxruntime-web's files (then the page works offline; without them it loads the same version
    from a CDN). Serve it with any static server.
    """
    import shutil

    model, tokenizer = export_source(checkpoint, tokenizer)
    if tokenizer is None:
        raise ValueError("the web page needs the model's tokenizer: export a checkpoint from tinyllm.py train, "
                         "or pass tokenizer=")
    page, script = PAGES["chat" if is_chat_tokenizer(tokenizer) else "text"]
    if not all((WEB_DIR / name).is_file() for name in (page, script, "tinyllm.js")):
        raise FileNotFoundError(f"the page's template files are missing from {WEB_DIR}: export --web needs the "
                                "web/ folder that comes with tinyllm.py")
    files = onnx_files(model, tokenizer, "model.onnx", kv_cache=True, int8=int8)
    runtime = WEB_DIR / "node_modules" / "onnxruntime-web" / "dist"
    with export_folder(out_dir, "web", overwrite) as folder:
        for name, data in files.items():
            (folder / name).write_bytes(data)
        shutil.copyfile(WEB_DIR / page, folder / "index.html")
        for name in (script, "tinyllm.js"):
            shutil.copyfile(WEB_DIR / name, folder / name)
        if all((runtime / name).is_file() for name in ORT_WEB_FILES):
            for name in ORT_WEB_FILES:
                shutil.copyfile(runtime / name, folder / name)
    return Path(out_dir)
