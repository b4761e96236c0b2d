"""Export to ONNX and the web: onnxruntime computes what tinyllm computes, the page generates tinyllm's
tokens in a real browser, the chat page answers as `tinyllm.py chat` does, --int8 stays close to the
float model, no folder export ever writes into a folder that is not its own, and a single ONNX file
never replaces a file unasked.

onnx and onnxruntime are optional for users (requirements-dev.txt installs them). The page's tests
need Node, Chromium and onnxruntime-web (`npm ci --prefix web`); without them they are skipped with
the reason, except under CI (.ci/run installs them), where a missing one is a failure.
"""

from __future__ import annotations

import functools
import html
import http.server
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import tinyllm
from conftest import REPO, cli_env, run_cli, run_without

CI = bool(os.environ.get("CI"))
if CI:
    import onnx  # noqa: F401  (CI must run these tests, never skip them)
    import onnxruntime
else:
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")

SPECIAL = "<|endoftext|>"
TRICKY_TEXTS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n",
    "It's 2024, don't they'll we've I'M  YOU'RE -- 3.14159 and 1,000,000 (approx.)!",
    "snake_case __init__ a_b_c  tabs\there\r\nwindows\u000bvt\x0cff   trailing spaces   ",
    "naïve café façade — “quotes” ‘single’ … ½ ² Ⅷ ١٢٣ ۴۵ e\u0301 a\u0308",
    "日本語のテキストです。中文也可以。한국어 텍스트. हिन्दी भाषा ไทยภาษา العربية עברית",
    "emoji 👍🏽 🇫🇷 family 👨\u200d👩\u200d👧 \U0001F600\U0001F600",
    f"special tokens{SPECIAL}inside and {SPECIAL} around {SPECIAL}<|endof",
    "control \x00\x01\x1c\x1d\x1e\x1f\x7f\x85 and\u00a0no-break\u2009thin\u3000ideographic \ufeffbom",
    "\ufeffa leading byte order mark",
    "   \n\n\t  leading and ending whitespace \n \n",
    "",
]
PROMPT = "The king speaks of the crown and the fool "  # longer than the tiny preset's context of 32


def train_tiny(tokenizer: tinyllm.Tokenizer, text: str, steps: int = 40, **model_overrides) -> tinyllm.TinyLLM:
    """The tiny preset, trained for a few steps: enough for text with a shape, in a few seconds."""
    torch.manual_seed(0)
    model = tinyllm.TinyLLM(tinyllm.ModelConfig.from_preset("tiny", tokenizer.vocab_size, **model_overrides))
    train_ids, val_ids, _ = tinyllm.prepare_data(text, tokenizer)
    config = tinyllm.TrainConfig.from_preset("tiny", max_steps=steps, device="cpu", progress=False)
    tinyllm.fit(model, train_ids, val_ids, config, tokenizer)
    return model.eval()


@pytest.fixture(scope="module")
def char_run(corpus_text, tmp_path_factory) -> Path:
    """A run directory holding a checkpoint with a character tokenizer, and QK-norm (the cpu preset's)."""
    tok = tinyllm.CharTokenizer.from_text(corpus_text)
    run = tmp_path_factory.mktemp("char-run")
    tinyllm.save_checkpoint(run / "best.pt", train_tiny(tok, corpus_text, qk_norm=True), tok, step=40)
    return run


@pytest.fixture(scope="module")
def bpe_run(corpus_text, tmp_path_factory) -> Path:
    """A run directory holding a checkpoint with a byte-level BPE (with a special token)."""
    text = corpus_text + "\n".join(TRICKY_TEXTS[3:6]) * 20
    tok = tinyllm.BPETokenizer.train(text, 360, special_tokens=[SPECIAL])
    run = tmp_path_factory.mktemp("bpe-run")
    tinyllm.save_checkpoint(run / "best.pt", train_tiny(tok, text), tok, step=40)
    return run


@pytest.fixture(scope="module")
def chat_runs(corpus_text, tmp_path_factory) -> dict[str, Path]:
    """Run directories of two tiny chat models, a character one and a byte-level BPE one, briefly fine-tuned."""
    conversations = tinyllm.make_conversations(1500, seed=0, max_number=19)
    said = "\n".join(m["content"] for messages in conversations[:300] for m in messages)
    runs = {}
    for kind, tok in [("char", tinyllm.chat_tokenizer()),
                      ("bpe", tinyllm.chat_tokenizer(tinyllm.BPETokenizer.train(corpus_text + said, 330)))]:
        torch.manual_seed(0)
        model = tinyllm.TinyLLM(tinyllm.ModelConfig.from_preset("tiny", tok.vocab_size, block_size=48))
        config = tinyllm.TrainConfig.from_preset("tiny", batch_size=16, max_steps=150, eval_interval=150, lr=1e-2,
                                                 min_lr=1e-3, device="cpu", seed=0, progress=False)
        tinyllm.finetune(model, tinyllm.chat_data(tok, conversations, 48), config)
        runs[kind] = tmp_path_factory.mktemp(f"chat-{kind}")
        tinyllm.save_checkpoint(runs[kind] / "best.pt", model.eval(), tok, step=150, meta={"chat": True})
    return runs


def folder_state(folder: Path) -> dict[str, bytes]:
    """Every file under folder (relative path -> bytes), to check that nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def foreign_folder(path: Path) -> Path:
    """A folder of someone else's files, some of them with the names an export writes."""
    (path / "sub").mkdir(parents=True)
    for name in ("notes.txt", "index.html", "config.json", "model.onnx", "sub/keep.txt"):
        (path / name).write_text(f"someone's {name}\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------
# Exports never write into someone else's folder
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["hf", "web"])
def test_cli_refuses_a_foreign_folder(kind, tmp_path, char_run):
    if kind == "hf":
        pytest.importorskip("safetensors")
    folder = foreign_folder(tmp_path / "mine")
    before = folder_state(folder)
    result = run_cli("export", "--ckpt", char_run, f"--{kind}", folder)
    assert result.returncode == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: refusing to export into {folder}: "), result.stderr
    assert "--overwrite" in lines[0] and "new or empty folder" in lines[0]
    assert folder_state(folder) == before  # byte-identical, and nothing added
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary folder left behind


def test_api_refuses_too(tmp_path, char_run):
    pytest.importorskip("safetensors")
    folder = foreign_folder(tmp_path / "mine")
    before = folder_state(folder)
    for export in (lambda: tinyllm.export_hf(char_run, folder), lambda: tinyllm.export_web(char_run, folder)):
        with pytest.raises(FileExistsError, match="refusing to export into .*overwrite=True"):
            export()
    with pytest.raises(FileExistsError, match="refusing to replace .*model.onnx: .*overwrite=True"):
        tinyllm.export_onnx(char_run, folder / "model.onnx")
    assert folder_state(folder) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        tinyllm.export_web(char_run, tmp_path / "file")


def test_a_previous_export_is_replaced(tmp_path, char_run, chat_runs):
    out = tmp_path / "site"
    tinyllm.export_web(char_run, out)  # a text model's page ...
    assert "page.js" in {p.name for p in out.iterdir()}
    result = run_cli("export", "--ckpt", chat_runs["char"], "--web", out)  # ... replaced by a chat model's
    assert result.returncode == 0, result.stderr
    names = {p.name for p in out.iterdir()}
    assert {"index.html", "tinyllm.js", "chat.js", "model.onnx", "model.json", tinyllm.EXPORT_MARKER} <= names
    assert "page.js" not in names  # the old export's files went with it
    assert (out / "index.html").read_bytes() == (REPO / "web" / "chat.html").read_bytes()
    marker = json.loads((out / tinyllm.EXPORT_MARKER).read_text())
    assert marker["kind"] == "web" and sorted(marker["files"]) == sorted(names - {tinyllm.EXPORT_MARKER})
    assert run_cli("export", "--ckpt", char_run, "--web", out).returncode == 0  # and again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_a_single_file_export_goes_into_any_folder(tmp_path, char_run):
    """--onnx from a folder of one's own files (a project's, say): the two files, no marker, nothing else touched."""
    folder = foreign_folder(tmp_path / "project")
    before = folder_state(folder)
    result = run_cli("export", "--ckpt", char_run, "--onnx", "tiny.onnx", cwd=folder)
    assert result.returncode == 0, result.stderr
    after = folder_state(folder)
    assert sorted(set(after) - set(before)) == ["tiny.json", "tiny.onnx"]  # no marker, no temporary file
    assert {name: after[name] for name in before} == before
    assert json.loads(after["tiny.json"])["config"]["vocab_size"] == tinyllm.load_checkpoint(char_run)["model"].config.vocab_size


@pytest.mark.parametrize("existing", ["tiny.onnx", "tiny.json"])
def test_a_single_file_export_replaces_a_file_only_when_told(existing, tmp_path, char_run):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / existing).write_text("someone's file")
    before = folder_state(folder)
    result = run_cli("export", "--ckpt", char_run, "--onnx", folder / "tiny.onnx")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: refusing to replace {folder / existing}") and "--overwrite" in lines[0]
    assert folder_state(folder) == before
    assert run_cli("export", "--ckpt", char_run, "--onnx", folder / "tiny.onnx", "--overwrite").returncode == 0
    assert sorted(folder_state(folder)) == ["tiny.json", "tiny.onnx"]
    assert folder_state(folder)[existing] != before[existing]


def test_a_single_file_export_that_fails_leaves_the_old_files(tmp_path, char_run, monkeypatch):
    path = tinyllm.export_onnx(char_run, tmp_path / "tiny.onnx")
    before = folder_state(tmp_path)

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tinyllm.os, "replace", failing_replace)
    with pytest.raises(OSError, match=f"cannot write {path} .*the previous tiny.onnx is intact"):
        tinyllm.export_onnx(char_run, path, overwrite=True, kv_cache=True)
    monkeypatch.undo()
    assert folder_state(tmp_path) == before  # both old files whole, and no temporary file left
    (tmp_path / "sub.onnx").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder: give the name of a file"):
        tinyllm.export_onnx(char_run, tmp_path / "sub.onnx", overwrite=True)


def test_overwrite_replaces_only_files_of_the_same_names(tmp_path, char_run):
    folder = foreign_folder(tmp_path / "mine")
    before = folder_state(folder)
    result = run_cli("export", "--ckpt", char_run, "--web", folder, "--overwrite")
    assert result.returncode == 0, result.stderr
    after = folder_state(folder)
    for name in ("notes.txt", "config.json", "sub/keep.txt"):
        assert after[name] == before[name]
    assert after["index.html"] == (REPO / "web" / "index.html").read_bytes()
    assert after["model.onnx"] != before["model.onnx"]
    # The marker lists only the export's files, so the next export still asks before touching notes.txt.
    assert "notes.txt" not in json.loads(after[tinyllm.EXPORT_MARKER])["files"]
    assert run_cli("export", "--ckpt", char_run, "--web", folder).returncode == 1


def test_a_failure_halfway_leaves_the_folder_as_it_was(tmp_path, char_run, monkeypatch):
    out = tmp_path / "site"
    tinyllm.export_web(char_run, out)
    before = folder_state(out)
    with pytest.raises(RuntimeError, match="disk full"):
        with tinyllm.export_folder(out, "web") as folder:
            (folder / "index.html").write_text("half")
            raise RuntimeError("disk full")
    assert folder_state(out) == before

    real_replace, into_out = os.replace, []

    def failing_replace(src, dst):  # the third rename into the folder fails
        if Path(dst).parent == out:
            into_out.append(dst)
            if len(into_out) == 3:
                raise OSError("no space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(tinyllm.os, "replace", failing_replace)
    with pytest.raises(OSError, match="no space"):
        tinyllm.export_web(char_run, out)
    monkeypatch.undo()
    assert folder_state(out) == before  # every rename undone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_a_marker_cannot_point_outside_its_folder(tmp_path, char_run):
    folder = tmp_path / "mine"
    folder.mkdir()
    (tmp_path / "precious.txt").write_text("keep me")
    (folder / tinyllm.EXPORT_MARKER).write_text(json.dumps({"files": ["../precious.txt"]}))
    with pytest.raises(FileExistsError):
        tinyllm.export_web(char_run, folder)
    tinyllm.export_web(char_run, folder, overwrite=True)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


# ------------------------------------------------------------------------------------------------
# ONNX: onnxruntime computes tinyllm's logits
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_export(bpe_run, tmp_path_factory) -> Path:
    return tinyllm.export_onnx(bpe_run, tmp_path_factory.mktemp("onnx") / "tiny" / "model.onnx")


def test_onnx_logits_match_pytorch(onnx_export, bpe_run):
    import onnx

    model = tinyllm.load_checkpoint(bpe_run)["model"].eval()
    graph = onnx.load(str(onnx_export)).graph
    dims = [[d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim] for t in (graph.input[0], graph.output[0])]
    assert dims == [["batch", "T"], ["batch", "T", model.config.vocab_size]]  # T is symbolic, not fixed to the example's
    assert str(REPO).encode() not in onnx_export.read_bytes()  # no local paths in the file
    session = onnxruntime.InferenceSession(str(onnx_export))
    generator = torch.Generator().manual_seed(0)
    for batch, length in [(1, 1), (1, 2), (1, 5), (3, 17), (1, model.config.block_size)]:
        x = torch.randint(0, model.config.vocab_size, (batch, length), generator=generator)
        ours = model(x)[0].detach().numpy()
        theirs = session.run(None, {"idx": x.numpy()})[0]
        assert theirs.shape == ours.shape
        assert abs(theirs - ours).max() < 1e-4, (length, abs(theirs - ours).max())
        assert (theirs.argmax(-1) == ours.argmax(-1)).all()


def test_onnx_json_holds_config_and_tokenizer(onnx_export, bpe_run):
    info = json.loads(onnx_export.with_suffix(".json").read_text(encoding="utf-8"))
    ckpt = tinyllm.load_checkpoint(bpe_run)
    assert info["config"] == tinyllm.asdict(ckpt["model"].config)
    assert tinyllm.tokenizer_from_dict(info["tokenizer"]).to_dict() == ckpt["tokenizer"].to_dict()
    assert (info["kv_cache"], info["parameters"]) == (False, ckpt["model"].num_params())


def test_onnx_with_kv_cache_generates_pytorchs_tokens(bpe_run, tmp_path):
    """The cached step, prompt first and then one token at a time past the context, as generate does it."""
    import numpy as np

    path = tinyllm.export_onnx(bpe_run, tmp_path / "kv" / "model.onnx", kv_cache=True)
    info = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    ckpt = tinyllm.load_checkpoint(bpe_run)
    model, tok = ckpt["model"].eval(), ckpt["tokenizer"]
    session = onnxruntime.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == ["idx", "seen", "k_cache", "v_cache"]
    n = 3 * model.config.block_size
    prompt = tok.encode(PROMPT)
    want = tinyllm.generate(model, torch.tensor([prompt]), n, temperature=0)[0, -n:].tolist()
    k = v = np.zeros(info["cache_shape"], np.float32)
    cache, feed, seen, got = tinyllm.new_cache(model, 1), prompt[-model.config.block_size:], 0, []
    for _ in range(n):
        logits, k, v = session.run(None, {"idx": np.array([feed]), "seen": np.array(seen), "k_cache": k, "v_cache": v})
        with torch.no_grad():
            ours = model(torch.tensor([feed]), cache=cache)[0].numpy()
        assert abs(logits - ours).max() < 1e-4, (seen, abs(logits - ours).max())
        seen += len(feed)
        feed = [int(logits[0, -1].argmax())]
        got += feed
    assert got == want


def test_cli_onnx(tmp_path, char_run):
    result = run_cli("export", "--ckpt", char_run, "--onnx", tmp_path / "out" / "tiny.onnx")
    assert result.returncode == 0, result.stderr
    assert "onnxruntime.InferenceSession" in result.stdout
    assert (tmp_path / "out" / "tiny.onnx").is_file() and (tmp_path / "out" / "tiny.json").is_file()
    bad = run_cli("export", "--ckpt", char_run, "--onnx", tmp_path / "x" / "tiny.bin")
    assert bad.returncode == 1 and bad.stderr.startswith("error: the ONNX file's name must end in .onnx")
    assert not (tmp_path / "x").exists()


def test_module_works_without_onnx(tmp_path):
    """`import tinyllm` needs no onnx; the export says in one line what to install, and writes nothing."""
    result = run_without(["onnx"], f"tinyllm.export_onnx(model, {str(tmp_path / 'x' / 'm.onnx')!r})")
    assert result.returncode == 0, result.stderr
    assert "pip install onnx" in result.stdout
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------
# The page's JavaScript: its tokenizers in Node, the whole page in headless Chromium
# ------------------------------------------------------------------------------------------------

def need(tool: str | None, reason: str):
    """Skip (or, under CI, fail) when a tool the page's tests need is missing."""
    if not tool:
        if CI:
            pytest.fail(f"CI must run the page's tests, but: {reason}")
        pytest.skip(reason)
    return tool


@pytest.fixture(scope="module")
def node() -> str:
    return need(shutil.which("node"), "Node.js is not installed (it runs the page's tokenizers)")


@pytest.fixture(scope="module")
def chromium() -> str:
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    need(found, "no Chromium: apt-get install chromium")
    need(all((REPO / "web" / "node_modules" / "onnxruntime-web" / "dist" / f).is_file() for f in tinyllm.ORT_WEB_FILES),
         "onnxruntime-web is not installed: npm ci --prefix web")
    return found


def run_js_tokenizer(node: str, tmp_path: Path, info: dict, texts: list[str], id_lists: list[list[int]],
                     split_text: str = "") -> dict:
    """Encode texts, decode id lists and split split_text with the page's own code, in Node."""
    shutil.copyfile(REPO / "web" / "tinyllm.js", tmp_path / "tinyllm.mjs")  # .mjs: Node reads it as a module
    (tmp_path / "in.json").write_text(json.dumps({"info": info, "texts": texts, "ids": id_lists, "split": split_text}))
    (tmp_path / "run.mjs").write_text(
        'import { readFileSync, writeFileSync } from "node:fs";\n'
        'import { makeTokenizer } from "./tinyllm.mjs";\n'
        'const { info, texts, ids, split } = JSON.parse(readFileSync("in.json", "utf8"));\n'
        "const tok = makeTokenizer(info);\n"
        "const attempt = (f) => (t) => { try { return f(t); } catch (e) { return e.message; } };\n"
        "const [encoded, ordinary] = [attempt((t) => tok.encode(t)), attempt((t) => tok.encodeOrdinary(t))];\n"
        "const pieces = info.split_pattern_js ? [...split.matchAll(new RegExp(info.split_pattern_js, 'gu'))].map((m) => m[0]) : [];\n"
        'writeFileSync("out.json", JSON.stringify({ encoded: texts.map(encoded), ordinary: texts.map(ordinary), '
        "decoded: ids.map((i) => tok.decode(i)), pieces }));\n")
    result = subprocess.run([node, "run.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))


def random_texts(n: int = 40, seed: int = 0) -> list[str]:
    """Random strings over ASCII, several scripts, astral planes and odd whitespace."""
    rng = random.Random(seed)
    pools = [range(32, 127), range(0x80, 0x800), range(0x900, 0x1000), range(0x3000, 0xA000),
             range(0x10000, 0x1FA00), [9, 10, 13, 32, 0x1C, 0x85, 0xA0, 0x2028, ord("_"), ord("'")]]
    return ["".join(chr(rng.choice(rng.choice(pools))) for _ in range(rng.randrange(1, 120))) for _ in range(n)]


def test_js_bpe_tokenizer_gives_python_ids(node, tmp_path, onnx_export, bpe_run):
    tok = tinyllm.load_checkpoint(bpe_run)["tokenizer"]
    info = json.loads(onnx_export.with_suffix(".json").read_text(encoding="utf-8"))
    texts = TRICKY_TEXTS + random_texts()
    rng = random.Random(1)
    id_lists = [tok.encode(t) for t in texts] + [[rng.randrange(tok.vocab_size) for _ in range(30)] for _ in range(40)]
    everything = "".join(map(chr, range(0xD800))) + "".join(map(chr, range(0xE000, 0x110000))) + " it's  _x1 \n\n y"
    out = run_js_tokenizer(node, tmp_path, info, texts, id_lists, everything)
    for text, ids, ordinary in zip(texts, out["encoded"], out["ordinary"]):
        assert ids == tok.encode(text), text
        assert ordinary == tok.encode_ordinary(text), text  # a special token's spelling stays ordinary text
    for ids, text in zip(id_lists, out["decoded"]):
        assert text == tok.decode(ids), ids  # random ids make invalid UTF-8: U+FFFD in the same places
    assert out["pieces"] == re.findall(tok.pattern, everything)  # the split pattern agrees on every character


def test_js_char_tokenizer(node, tmp_path, corpus_text):
    tok = tinyllm.CharTokenizer.from_text(corpus_text + "é😀\t")
    info = {"tokenizer": tok.to_dict()}
    texts = [corpus_text[:500], "The king é😀\t😀", "The ☃ king"]
    out = run_js_tokenizer(node, tmp_path, info, texts, [tok.encode(t) for t in texts[:2]])
    assert out["encoded"][:2] == [tok.encode(t) for t in texts[:2]]
    assert out["decoded"] == texts[:2]
    assert "'☃' not in this model's vocabulary" in out["encoded"][2].replace('"', "'")


def run_js(node: str, tmp_path: Path, body: str, data) -> object:
    """Run `body` (JavaScript with `data` in scope and tinyllm.js's exports as T) in Node; returns what it puts in `out`."""
    shutil.copyfile(REPO / "web" / "tinyllm.js", tmp_path / "tinyllm.mjs")
    (tmp_path / "in.json").write_text(json.dumps(data))
    (tmp_path / "run.mjs").write_text(
        'import { readFileSync, writeFileSync } from "node:fs";\n'
        'import * as T from "./tinyllm.mjs";\n'
        'const data = JSON.parse(readFileSync("in.json", "utf8"));\n'
        f"let out;\n{body}\n"
        'writeFileSync("out.json", JSON.stringify(out));\n')
    result = subprocess.run([node, "run.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))


def random_conversation(rng: random.Random, words: list[str]) -> list[dict]:
    turns = rng.randrange(1, 12)
    return [{"role": "user" if i % 2 == 0 else "assistant",
             "content": " ".join(rng.choice(words) for _ in range(rng.randrange(1, 14)))} for i in range(turns)]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_js_fit_context_keeps_the_turns_python_keeps(kind, node, tmp_path, chat_runs):
    """The page's history policy is fit_context's: the same prompt ids, and the same sentence for a message too long."""
    tok = tinyllm.load_checkpoint(chat_runs[kind])["tokenizer"]
    rng = random.Random(0)
    words = ["hi", "what", "is", "2", "+", "3?", "Tilly", "<|end|>", "<|user|>", "plus", "dandelions.", "two\nlines"]
    cases = []
    for _ in range(150):
        messages = random_conversation(rng, words)
        if messages[-1]["role"] != "user":
            messages.append({"role": "user", "content": rng.choice(words)})
        cases.append({"messages": messages, "block": rng.choice([16, 24, 48, 96]), "reserve": rng.choice([0, 4, 12])})
    info = {"tokenizer": tok.to_dict(), "split_pattern_js": tinyllm.js_split_pattern(tok.pattern) if kind == "bpe" else None,
            "chat_tokens": dict(zip(tinyllm.CHAT_TOKENS, tinyllm.chat_token_ids(tok)))}
    got = run_js(node, tmp_path, "const tok = T.makeTokenizer(data.info);\n"
                 "out = data.cases.map(({ messages, block, reserve }) => {\n"
                 "  try { return T.fitContext(tok, data.info.chat_tokens, messages, block, reserve); }\n"
                 "  catch (e) { return e.message; } });", {"info": info, "cases": cases})
    dropped = refused = 0
    for case, ids in zip(cases, got):
        try:
            want = tinyllm.fit_context(tok, case["messages"], case["block"], case["reserve"])
        except ValueError as e:
            want, refused = str(e), refused + 1
        assert ids == want, case
        dropped += isinstance(want, list) and len(want) < len(tinyllm.encode_chat(tok, case["messages"], True)[0])
    assert dropped > 20 and refused > 5  # both ends of the policy were exercised


def test_js_top_p_keeps_the_tokens_python_keeps(node, tmp_path):
    """sampleToken's nucleus: the tokens it can pick are those sample_token keeps (with top-k too)."""
    rng = random.Random(0)
    cases = [{"logits": [rng.gauss(0, 2) for _ in range(12)], "top_k": rng.choice([0, 3, 8]),
              "top_p": rng.choice([0.1, 0.5, 0.8, 0.95, 1.0]), "temperature": rng.choice([0.5, 1.0, 2.0])}
             for _ in range(40)]
    got = run_js(node, tmp_path, "out = data.map((c) => [...new Set(Array.from({ length: 4000 }, (_, i) =>\n"
                 "  T.sampleToken(Float32Array.from(c.logits), c.temperature, c.top_k, c.top_p, () => (i + 0.5) / 4000)))]"
                 ".sort((a, b) => a - b));", cases)
    for case, picked in zip(cases, got):
        logits = torch.tensor([case["logits"]]) / case["temperature"]
        kept = set(range(12))
        if case["top_k"]:
            kept &= set(torch.topk(logits, case["top_k"]).indices[0].tolist())
        probs = torch.softmax(logits[0, sorted(kept)], 0)
        order = sorted(kept)
        ranked = sorted(zip(probs.tolist(), order), reverse=True)
        before, nucleus = 0.0, set()
        for p, i in ranked:
            if before >= case["top_p"]:
                break
            nucleus.add(i)
            before += p
        big = {i for p, i in ranked if i in nucleus and p / sum(q for q, j in ranked if j in nucleus) > 1e-3}
        assert big <= set(picked) <= nucleus, case  # every token kept with a visible share is reached, no other


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, *args) -> None:
        pass


class CDNHandler(QuietHandler):
    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")  # as jsdelivr does: scripts of other sites may load it
        super().end_headers()


@pytest.fixture
def serve():
    """serve(folder) -> the URL of folder, served on 127.0.0.1 by a plain static server."""
    servers = []

    def start(folder: Path, handler: type = QuietHandler) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def page_dom(chromium: str, url: str, tmp_path: Path) -> tuple[str, str]:
    """Load url in headless Chromium and let it run (in virtual time); returns (body's data-state, the page's HTML)."""
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=60000",
         "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    state = re.search(r'<body data-state="(\w+)"', result.stdout)
    assert state, result.stdout[-2000:]
    return state.group(1), result.stdout


def open_page(chromium: str, url: str, tmp_path: Path) -> tuple[str, str]:
    """The completion page after it ran: (body's data-state, #output's text)."""
    state, dom = page_dom(chromium, url, tmp_path)
    output = re.search(r'<pre id="output">(.*?)</pre>', dom, re.S)
    assert output, dom[-2000:]
    return state, html.unescape(output.group(1))


def open_chat(chromium: str, url: str, tmp_path: Path) -> tuple[str, list[str], list[str]]:
    """The chat page after it ran: (body's data-state, the replies' texts, the error messages), in order."""
    state, dom = page_dom(chromium, url, tmp_path)
    turns = [(kind, html.unescape(text)) for kind, text in re.findall(r'<div class="turn (\w+)">(.*?)</div>', dom, re.S)]
    return state, [t for kind, t in turns if kind == "reply"], [t for kind, t in turns if kind == "error"]


def page_url(base: str, prompt: str, tokens: int, temperature: float = 0.0, **more) -> str:
    from urllib.parse import urlencode

    return base + "index.html?" + urlencode({"prompt": prompt, "tokens": tokens, "temperature": temperature, **more})


@pytest.mark.slow
@pytest.mark.parametrize("run_name", ["char_run", "bpe_run"])
def test_page_generates_pytorchs_greedy_tokens(run_name, request, chromium, serve, tmp_path):
    """The page's own code, in a browser, continues a prompt longer than the context as `sample` does."""
    run = request.getfixturevalue(run_name)
    site = tmp_path / "site"
    result = run_cli("export", "--ckpt", run, "--web", site)
    assert result.returncode == 0 and "works offline" in result.stdout, result.stderr
    ckpt = tinyllm.load_checkpoint(run)
    model, tok = ckpt["model"], ckpt["tokenizer"]
    n = 2 * model.config.block_size  # the window slides
    new = tinyllm.generate(model, torch.tensor([tok.encode(PROMPT)]), n, temperature=0)[0, -n:].tolist()  # with the cache
    base = serve(site)
    assert open_page(chromium, page_url(base, PROMPT, n), tmp_path) == ("done", PROMPT + tok.decode(new))
    # top-k 1, or a tiny top-p, samples the most likely token: the sampling path gives the greedy text too
    assert open_page(chromium, page_url(base, PROMPT, n, 0.8, top_k=1, seed=1), tmp_path) == ("done", PROMPT + tok.decode(new))
    assert open_page(chromium, page_url(base, PROMPT, n, 0.8, top_p=1e-6, seed=1), tmp_path) == ("done", PROMPT + tok.decode(new))


@pytest.mark.slow
def test_page_without_the_runtime_loads_it_from_the_cdn(chromium, serve, char_run, tmp_path):
    """Runtime files missing beside the page: it takes them from the CDN (a local stand-in here)."""
    site = tinyllm.export_web(char_run, tmp_path / "site")
    for name in tinyllm.ORT_WEB_FILES:
        (site / name).unlink()
    cdn = serve(REPO / "web" / "node_modules" / "onnxruntime-web" / "dist", CDNHandler)
    script = (site / "tinyllm.js").read_text(encoding="utf-8")
    assert "const CDN = `https://cdn.jsdelivr.net/npm/onnxruntime-web@${ORT_VERSION}/dist/`;" in script
    (site / "tinyllm.js").write_text(re.sub(r"const CDN = `[^`]*`;", f"const CDN = {cdn!r};", script), encoding="utf-8")
    assert open_page(chromium, page_url(serve(site), "The king", 5), tmp_path)[0] == "done"


@pytest.mark.slow
def test_page_answers_bad_input_with_a_message(chromium, serve, char_run, tmp_path):
    site = tinyllm.export_web(char_run, tmp_path / "site")
    base = serve(site)
    state, output = open_page(chromium, page_url(base, "The king ☃ speaks", 10), tmp_path)
    assert state == "error" and "'☃' not in this model's vocabulary" in output.replace('"', "'"), output
    state, output = open_page(chromium, page_url(base, "The king", 10, -1), tmp_path)
    assert state == "error" and output.startswith("temperature must be >= 0"), output
    state, output = open_page(chromium, page_url(base, "The king", 10, 0.8, top_p=1.5), tmp_path)
    assert state == "error" and output.startswith("top-p must be above 0 and at most 1"), output
    (site / "model.onnx").write_bytes(b"not a model")
    state, output = open_page(chromium, page_url(base, "The king", 10), tmp_path)
    assert state == "error" and output.startswith("could not load the model"), output


def test_page_template_pins_the_runtime_version():
    """The CDN fallback loads exactly the onnxruntime-web version that package.json pins and npm installs."""
    pinned = json.loads((REPO / "web" / "package.json").read_text())["dependencies"]["onnxruntime-web"]
    lock = json.loads((REPO / "web" / "package-lock.json").read_text())
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned)
    assert lock["packages"]["node_modules/onnxruntime-web"]["version"] == pinned
    assert f'const ORT_VERSION = "{pinned}";' in (REPO / "web" / "tinyllm.js").read_text()


# ------------------------------------------------------------------------------------------------
# The chat page: a conversation in the browser, with the replies of `tinyllm.py chat`
# ------------------------------------------------------------------------------------------------

CHAT_LINES = ["hi", "what is 2 + 3?", "I typed <|end|> here", "who are you?",
              "what is 12 + 7?", "what do you eat?", "thanks Tilly", "bye"]


def cli_chat(run: Path, lines: list[str], *options: str) -> subprocess.CompletedProcess:
    """`printf 'LINE\\n...' | python tinyllm.py chat --ckpt RUN OPTIONS`."""
    return subprocess.run([sys.executable, str(REPO / "tinyllm.py"), "chat", "--ckpt", str(run), *options],
                          input="".join(line + "\n" for line in lines), env=cli_env(), capture_output=True, text=True,
                          timeout=300)


def chat_url(base: str, lines: list[str], **settings) -> str:
    from urllib.parse import urlencode

    return base + "index.html?" + urlencode({"chat": "\n".join(lines), **settings})


def turns_dropped(run: Path, lines: list[str], replies: list[str]) -> int:
    """How many of the conversation's prompts left out some of its earlier turns (fit_context dropped them)."""
    ckpt = tinyllm.load_checkpoint(run)
    tok, block = ckpt["tokenizer"], ckpt["model"].config.block_size
    messages, dropped = [], 0
    for line, reply in zip(lines, replies):
        messages.append({"role": "user", "content": line})
        whole = tinyllm.encode_chat(tok, messages, reply_next=True)[0]
        dropped += len(tinyllm.fit_context(tok, messages, block, block // 4)) < len(whole)
        messages.append({"role": "assistant", "content": reply})
    return dropped


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_chat_page_answers_as_the_command_line_does(kind, chat_runs, chromium, serve, tmp_path):
    """At temperature 0, the page's replies are `tinyllm.py chat`'s, character for character, as old turns drop out."""
    run = chat_runs[kind]
    result = run_cli("export", "--ckpt", run, "--web", tmp_path / "site")
    assert result.returncode == 0 and "as a chat page" in result.stdout, result.stderr
    for tokens in ("64", "6"):  # the default length, and replies cut at the limit
        cli = cli_chat(run, CHAT_LINES, "--temperature", "0", "--max-new-tokens", tokens)
        assert cli.returncode == 0, cli.stderr
        state, replies, errors = open_chat(chromium, chat_url(serve(tmp_path / "site"), CHAT_LINES, temperature=0,
                                                               tokens=tokens), tmp_path)
        assert (state, errors) == ("done", [])
        assert [" ".join(r.split("\n")) for r in replies] == cli.stdout.splitlines()  # the CLI prints a reply per line
        assert any(replies) and turns_dropped(run, CHAT_LINES, replies) >= 2
    ckpt = tinyllm.load_checkpoint(run)
    messages = []
    for line, reply in zip(CHAT_LINES, replies):  # and exactly the Python API's replies, newlines included
        messages.append({"role": "user", "content": line})
        assert reply == tinyllm.chat(ckpt["model"], ckpt["tokenizer"], messages, 6)
        messages.append({"role": "assistant", "content": reply})


@pytest.mark.slow
def test_chat_page_refuses_what_the_command_line_refuses(chat_runs, chromium, serve, tmp_path):
    run = chat_runs["char"]
    base = serve(tinyllm.export_web(run, tmp_path / "site"))
    too_long = "what is " + "1 + " * 12 + "1?"
    cli = cli_chat(run, ["hi", too_long])
    assert cli.returncode == 1 and cli.stderr.startswith("error: line 2: the message is ")
    state, replies, errors = open_chat(chromium, chat_url(base, ["hi", too_long, "bye"]), tmp_path)
    assert state == "error" and len(replies) == 1  # "hi" answered, the long one refused, "bye" never sent
    assert errors == [cli.stderr.strip().removeprefix("error: line 2: ")]  # the same sentence
    assert "write a shorter one" in errors[0]
    for lines, message in [(["hi", " "], "the message is empty"), (["snow ☃"], "'☃' not in this model's vocabulary")]:
        state, _, errors = open_chat(chromium, chat_url(base, lines), tmp_path)
        assert state == "error" and len(errors) == 1 and message in errors[0].replace('"', "'"), errors
    state, _, errors = open_chat(chromium, chat_url(base, ["hi"], top_p=0), tmp_path)
    assert state == "error" and errors[0].startswith("top-p must be above 0 and at most 1"), errors


# ------------------------------------------------------------------------------------------------
# --int8: the weights in 8 bits, by onnxruntime's quantizer
# ------------------------------------------------------------------------------------------------

def test_int8_export_stores_the_weights_in_8_bits_and_stays_close(bpe_run, tmp_path):
    import numpy as np
    import onnx

    full = tinyllm.export_onnx(bpe_run, tmp_path / "float.onnx")
    small = tinyllm.export_onnx(bpe_run, tmp_path / "int8.onnx", int8=True)
    assert json.loads(small.with_suffix(".json").read_text())["int8"] is True
    matrices = [[t for t in onnx.load(str(f)).graph.initializer if len(t.dims) == 2] for f in (full, small)]
    eight_bits = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)  # the embedding's Gather gets uint8
    assert len(matrices[1]) == len(matrices[0]) and all(t.data_type in eight_bits for t in matrices[1])
    assert sum(len(t.raw_data) for t in matrices[1]) == sum(len(t.raw_data) for t in matrices[0]) // 4  # a byte each
    assert small.stat().st_size < full.stat().st_size  # (the graph itself is the same size: for the tiny model, much)
    model = tinyllm.load_checkpoint(bpe_run)["model"]
    x = torch.randint(0, model.config.vocab_size, (4, model.config.block_size), generator=torch.Generator().manual_seed(0))
    ours = model(x)[0].detach().numpy()
    theirs = onnxruntime.InferenceSession(str(small)).run(None, {"idx": x.numpy()})[0]
    assert np.abs(theirs - ours).max() < 0.1 * np.abs(ours).max()  # close, though not float-exact
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() > 0.9


def test_cli_int8_is_for_onnx_and_web(tmp_path, char_run):
    result = run_cli("export", "--ckpt", char_run, "--hf", tmp_path / "hf", "--int8")
    assert result.returncode == 1 and result.stderr.startswith("error: --int8 is for --onnx and --web")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "hf").exists()
    result = run_cli("export", "--ckpt", char_run, "--onnx", tmp_path / "m.onnx", "--int8")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "m.json").read_text())["int8"] is True


@pytest.mark.slow
def test_int8_page_generates_what_onnxruntime_generates(chromium, serve, char_run, tmp_path):
    """The page runs the 8-bit model too, and its greedy text is onnxruntime's (Python) for that model."""
    import numpy as np

    site = tmp_path / "site"
    assert run_cli("export", "--ckpt", char_run, "--web", site, "--int8").returncode == 0
    session = onnxruntime.InferenceSession(str(site / "model.onnx"))
    info = json.loads((site / "model.json").read_text(encoding="utf-8"))
    tok, block = tinyllm.load_checkpoint(char_run)["tokenizer"], info["config"]["block_size"]
    k = v = np.zeros(info["cache_shape"], np.float32)
    feed, seen, new = tok.encode(PROMPT)[-block:], 0, []
    for _ in range(2 * block):
        logits, k, v = session.run(None, {"idx": np.array([feed]), "seen": np.array(seen), "k_cache": k, "v_cache": v})
        seen += len(feed)
        feed = [int(logits[0, -1].argmax())]
        new += feed
    assert open_page(chromium, page_url(serve(site), PROMPT, 2 * block), tmp_path) == ("done", PROMPT + tok.decode(new))
