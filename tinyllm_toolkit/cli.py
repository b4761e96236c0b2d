"""The command line: `python tinyllm.py train|sample|chat-train|chat|export ...` (or `tinyllm ...`).

Each command is a short function over the chapter's code and the toolkit's; a mistake in the
input is one line that says what to do, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from tinyllm import (
    BPETokenizer, CHAT_TOKENS, CharTokenizer, ModelConfig, PRESETS, TinyLLM, Tokenizer, TrainConfig,
    assistant_loss, chat, chat_batch, chat_data, chat_eval, chat_tokenizer, check_preset, choose_precision,
    complete, fit_context, grow_vocab, held_out_sums, make_conversations, pick_device,
    prepare_data, sample_token, seed_everything, split_train_val)
from tinyllm_toolkit.export_hf import export_hf
from tinyllm_toolkit.export_onnx import ORT_WEB_FILES, export_onnx, export_web
from tinyllm_toolkit.files import load_checkpoint, remove_stale_temp_files
from tinyllm_toolkit.inputs import load_text_checked as load_text  # a clear error for each bad input
from tinyllm_toolkit.runs import (fit, finish_together, is_distributed, is_main_process, load_once_per_machine,
                                  same_on_all_ranks, start_distributed)


CHAT_MAX_TIME = 120.0  # chat-train's default budget in seconds (bench/README.md, "Chat": what it buys on 2 CPU cores)


class CLIParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line that points at --help."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see: python {self.prog} --help)\n")  # prog: "tinyllm.py train"


def options(*specs: tuple[tuple[str, ...], dict]) -> argparse.ArgumentParser:
    """A parent parser: options that several commands share, declared once (argparse's parents=)."""
    parent = argparse.ArgumentParser(add_help=False)
    for flags, kwargs in specs:
        parent.add_argument(*flags, **kwargs)
    return parent


DEVICE = options((("--device",), dict(default="auto", help="auto, cpu, cuda, cuda:N or mps")))
CKPT = options((("--ckpt",), dict(required=True, help="a checkpoint file, or a run directory (its best.pt)")))
SAMPLING = options(
    (("--top-k",), dict(type=int, help="sample only from the k most likely tokens")),
    (("--top-p",), dict(type=float, help="sample only from the most likely tokens that make up probability p")))
RUN = options(
    (("--preset",), dict(help=f"model and training settings: {', '.join(PRESETS)} (default: 9m on a GPU, cpu otherwise)")),
    (("--max-steps",), dict(type=int, help="stop after this many optimizer steps")),
    (("--max-time",), dict(type=float, help="stop after this many seconds of training (train's default: the preset's; "
                                            f"chat-train's: {CHAT_MAX_TIME:.0f} s without --max-steps)")),
    (("--batch-size",), dict(type=int, help="sequences per step (default: the preset's)")),
    (("--lr",), dict(type=float, help="peak learning rate (of AdamW, with --optimizer muon; default: the preset's)")),
    (("--optimizer",), dict(choices=("adamw", "muon"), help="adamw, or muon for the blocks' weight matrices "
                                                           "(default: the preset's; cpu: muon)")),
    (("--eval-interval",), dict(type=int, help="steps between evaluations (default: the preset's)")),
    (("--dtype",), dict(default="auto", help="auto, fp32, bf16 or fp16 (auto: bf16 on CUDA GPUs that have it and on "
                                             "CPUs with bf16 instructions, fp16 on older GPUs, fp32 elsewhere)")),
    (("--out",), dict(help="run directory for last.pt and best.pt (default: a new runs/<date-time>)")),
    (("--seed",), dict(type=int, default=1337, help="random seed of the run (and of chat-train's conversations; "
                                                    "default 1337)")),
    (("--quiet",), dict(action="store_true", help="no progress bar or loss lines")))


def add_train(sub) -> None:
    t = sub.add_parser("train", parents=[RUN, DEVICE], help="train a model (default: TinyShakespeare, char tokenizer)",
                       description="Train a model. On a CPU the default run takes about two minutes; "
                                   "on a GPU it trains the 9m preset.")
    t.add_argument("--data", default="shakespeare", help="a built-in dataset (shakespeare) or a UTF-8 text file")
    t.add_argument("--tokenizer", default="char", help="char (one token per character) or bpe (byte-level BPE)")
    t.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size, at least 256 (default 512)")
    t.add_argument("--compile", action="store_true", help="use torch.compile (slow to start, faster per step)")
    t.add_argument("--ckpt-interval", type=int, default=0, help="steps between saves of last.pt (0: at evaluations)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out (default: the newest run)")
    t.add_argument("--data-dir", help="where built-in datasets are cached (default: $TINYLLM_DATA_DIR or data/)")
    t.add_argument("--sample-tokens", type=int, default=400, help="length of the sample printed at the end")
    t.set_defaults(func=cmd_train)


def add_sample(sub) -> None:
    s = sub.add_parser("sample", parents=[CKPT, SAMPLING, DEVICE], help="generate text from a trained model",
                       description="Generate text from a checkpoint.")
    s.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    s.add_argument("--max-new-tokens", type=int, default=500, help="how many tokens to generate (default 500)")
    s.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more surprising (default 0.8)")
    s.add_argument("--stop", help="stop before this string appears")
    s.add_argument("--seed", type=int, help="random seed, for a repeatable sample")
    s.add_argument("--no-cache", action="store_true", help="recompute the whole context for every token")
    s.set_defaults(func=cmd_sample)


def add_chat_train(sub) -> None:
    c = sub.add_parser("chat-train", parents=[RUN, DEVICE],
                       help="fine-tune a chat model on generated conversations (Tilly the tortoise)",
                       description="Fine-tune a model into a chat model on conversations generated in code "
                                   "(section 14): small talk in Tilly the tortoise's persona and sums of two "
                                   "numbers, with the loss on the assistant's tokens only. Ends with the exact-match "
                                   "accuracy on held-out sums and the share of replies that end with <|end|>.")
    c.add_argument("--init", metavar="CKPT|DIR", help="start from this model, e.g. a `train` run (default: a new one)")
    c.add_argument("--conversations", type=int, default=20_000, help="conversations to generate (default 20000)")
    c.add_argument("--no-mask", action="store_true",
                   help="train on every token (full-sequence loss), not only on the assistant's")
    c.set_defaults(func=cmd_chat_train)


def add_chat(sub) -> None:
    h = sub.add_parser("chat", parents=[CKPT, SAMPLING, DEVICE], help="talk to a chat model",
                       description="Talk to a model from chat-train. At a terminal, an interactive prompt; "
                                   "otherwise one user message per input line and one reply per output line.")
    h.add_argument("--max-new-tokens", type=int, default=64, help="the longest reply, in tokens (default 64)")
    h.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, the default; e.g. 0.8 for variety")
    h.add_argument("--seed", type=int, help="random seed, for repeatable replies when sampling")
    h.set_defaults(func=cmd_chat)


INT8_HELP = ("with --onnx or --web: weights in 8 bits (onnxruntime's quantize_dynamic), a quarter of the file, "
             "measured at +0.001 nats/char of validation loss; no faster in a browser (README: Your model in a web page)")


def add_export(sub) -> None:
    e = sub.add_parser("export", parents=[CKPT], help="export a checkpoint for Hugging Face transformers, ONNX or a web page",
                       description="Write a checkpoint as a folder that Hugging Face transformers loads as "
                                   "LlamaForCausalLM, or Qwen3ForCausalLM with QK-norm (--hf; needs: pip install "
                                   "transformers safetensors), as an "
                                   "ONNX file (--onnx), or as a static web page that runs it in the browser, a chat "
                                   "page for a chat-train model (--web; both need: pip install onnx). The folder of "
                                   "--hf and --web must be new, empty or an earlier export, unless --overwrite; --onnx "
                                   "writes its two files into any folder, replacing files of those names only with "
                                   "--overwrite.")
    to = e.add_mutually_exclusive_group(required=True)
    to.add_argument("--hf", metavar="DIR", help="the Hugging Face folder to write (created if needed)")
    to.add_argument("--onnx", metavar="FILE", help="the ONNX file to write (FILE.onnx, and FILE.json beside it)")
    to.add_argument("--web", metavar="DIR", help="the folder to write the web page into (created if needed)")
    e.add_argument("--overwrite", action="store_true",
                   help="write into a folder that holds other files, or over an ONNX file (files of the same names "
                        "are replaced)")
    e.add_argument("--int8", action="store_true", help=INT8_HELP)
    e.set_defaults(func=cmd_export)


def build_parser() -> CLIParser:
    parser = CLIParser(prog="tinyllm.py", description="Train a tiny language model and sample from it.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CLIParser)
    for add in (add_train, add_sample, add_chat_train, add_chat, add_export):
        add(sub)
    return parser


def new_run_dir(root: Path = Path("runs")) -> Path:
    """runs/<date-time>, with a suffix if that exists already, so that every run has its own."""
    base = root / time.strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    return path


def find_run_to_resume(out: Optional[str]) -> Path:
    if out is None:
        runs = sorted(Path("runs").glob("*/last.pt"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise FileNotFoundError("nothing to resume: no runs/*/last.pt here; start a run without --resume")
        return runs[-1].parent
    if not (Path(out) / "last.pt").is_file():
        raise FileNotFoundError(f"nothing to resume in {out}: it has no last.pt; start a fresh run without --resume")
    return Path(out)


def check_run_dir(out: Path) -> None:
    """Refuse a run directory that cannot be written before training, not when the first checkpoint is saved."""
    existing = next(p for p in (out, *out.parents) if p.exists())  # out itself, or the folder it would be made in
    if not existing.is_dir():
        raise NotADirectoryError(f"--out {out} cannot hold a run: {existing} is a file, not a folder; choose another "
                                 "--out, e.g. runs/my-run")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out} cannot hold a run: {existing} is not writable for you; choose an --out "
                              "folder you can write to")


def train_overrides(args, default_max_time: Optional[float] = None) -> dict:
    """The preset's training settings that train's and chat-train's options replace.

    --max-steps alone means no clock, --max-time alone no step limit; with neither, the preset's
    budget, or default_max_time seconds if given. A new --lr moves the cosine's floor to a tenth of it.
    """
    overrides = {k: v for k, v in dict(batch_size=args.batch_size, lr=args.lr, eval_interval=args.eval_interval,
                                         max_steps=args.max_steps, max_time=args.max_time,
                                         optimizer=args.optimizer).items() if v is not None}
    if args.max_steps is None and args.max_time is None and default_max_time is not None:
        overrides["max_time"] = default_max_time
    if args.max_steps is not None and args.max_time is None:
        overrides["max_time"] = None  # a step budget alone: no clock
    if "max_time" in overrides and args.max_steps is None:
        overrides["max_steps"] = 10**9  # a time budget alone: no step limit
    if args.lr is not None:
        overrides["min_lr"] = args.lr / 10  # the cosine ends at a tenth of the peak, as in every preset
    return overrides


@dataclass
class TrainJob:
    """What `train` runs: a model, its tokenizer and settings, the data, and the run directory."""

    model: TinyLLM
    tokenizer: Tokenizer
    config: TrainConfig
    meta: dict
    train_ids: list[int]
    val_ids: list[int]
    out: Path
    resume: Optional[dict] = None  # the checkpoint a resumed run continues from


def budget(config: TrainConfig) -> str:
    """The limits that stop a run, both when both are set: whichever comes first ends it."""
    limits = [f"{config.max_steps:,} steps" if config.max_steps < 10**9 else "",
              f"{config.max_time:.0f} s" if config.max_time else ""]
    return " or ".join(limit for limit in limits if limit) + (", whichever comes first" if all(limits) else "")


def resume_job(args) -> Optional[TrainJob]:
    """The run in --out (or the newest one) as it was saved in last.pt; None if it had already finished."""
    out = Path(same_on_all_ranks(str(find_run_to_resume(args.out))))
    check_run_dir(out)
    if is_main_process():
        remove_stale_temp_files(out)  # a crash mid-save leaves one; gone even if there is nothing to resume
    state = load_checkpoint(out / "last.pt")
    model, tokenizer, config, meta = state["model"], state["tokenizer"], state["train_config"], state["meta"]
    if (meta or {}).get("chat"):
        raise ValueError(f"{out} is a chat-train run, which train --resume cannot continue: start a new chat-train "
                         f"run, e.g. with --init {out}")
    if state.get("done"):
        run = state["train_state"]
        print(f"the run in {out} already finished at step {run.step} (best val loss {run.best_val:.4f}); "
              f"nothing to resume. Train longer with a new run, e.g. python tinyllm.py train --max-time 600")
        return None
    config.device, config.progress = args.device, not args.quiet
    text = load_once_per_machine(lambda: load_text(meta["data"], args.data_dir))
    train_ids, val_ids, _ = prepare_data(text, tokenizer)
    print(f"resuming {out} at step {state['train_state'].step}")
    return TrainJob(model, tokenizer, config, meta, train_ids, val_ids, out, state)


def new_job(args, device: torch.device) -> TrainJob:
    """A new model of the preset's shape, with a tokenizer made from --data, and a new run directory."""
    if args.tokenizer not in ("char", "bpe"):
        raise ValueError(f"unknown tokenizer {args.tokenizer!r}: use char or bpe")
    preset = args.preset or ("9m" if device.type == "cuda" else "cpu")
    check_preset(preset)
    out = Path(same_on_all_ranks(args.out or str(new_run_dir())))
    if (out / "last.pt").exists() or (out / "best.pt").exists():
        raise FileExistsError(f"{out} already holds a run: continue it with --resume, or choose another --out")
    check_run_dir(out)
    text = load_once_per_machine(lambda: load_text(args.data, args.data_dir))
    if args.tokenizer == "char":
        tokenizer = CharTokenizer.from_text(text)
    else:
        print(f"training a BPE tokenizer with {args.vocab_size} tokens ...")
        tokenizer = BPETokenizer.train(split_train_val(text)[0], args.vocab_size)
    train_ids, val_ids, chars_per_token = prepare_data(text, tokenizer)
    config = TrainConfig.from_preset(preset, **train_overrides(args), device=args.device, dtype=args.dtype,
                                     compile=args.compile, seed=args.seed, out_dir=str(out),
                                     ckpt_interval=args.ckpt_interval, chars_per_token=chars_per_token,
                                     progress=not args.quiet)
    seed_everything(args.seed)
    model = TinyLLM(ModelConfig.from_preset(preset, tokenizer.vocab_size))
    amp = choose_precision(device, config.dtype)
    print(f"tinyllm | {model.num_params() / 1e6:.2f}M parameters ({preset} preset) | device {device} | "
          f"{str(amp or torch.float32).replace('torch.', '')} | {config.optimizer} | {tokenizer.kind} tokenizer, vocab {tokenizer.vocab_size} | "
          f"{len(train_ids):,} train + {len(val_ids):,} val tokens | budget {budget(config)} | out {out}")
    return TrainJob(model, tokenizer, config, {"data": str(args.data), "preset": preset}, train_ids, val_ids, out)


def run_job(job: TrainJob, device: torch.device) -> Optional[list[dict]]:
    """fit the job; None after a Ctrl-C (last.pt is saved). A failed save says how to resume."""
    job.config.out_dir, job.config.device = str(job.out), str(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        c = job.config
        print(f"DDP: {world} processes ({torch.distributed.get_backend()}), each {c.batch_size} sequences x "
              f"{c.grad_accum} micro-batches per step: {c.batch_size * c.grad_accum * world} in all")
    try:
        return fit(job.model, job.train_ids, job.val_ids, job.config, tokenizer=job.tokenizer, resume=job.resume,
                   meta=job.meta)
    except KeyboardInterrupt:
        if is_main_process():
            print(f"\ninterrupted: last.pt saved in {job.out}. Resume with: python tinyllm.py train --resume "
                  f"--out {job.out}", file=sys.stderr)
        return None
    except OSError as e:  # e.g. the disk filled up while saving: last.pt, if there is one, is whole
        if not (job.out / "last.pt").is_file():
            raise
        raise type(e)(f"{e}. Then resume with: python tinyllm.py train --resume --out {job.out}") from None


def report(job: TrainJob, history: list[dict], device: torch.device, sample_tokens: int, seed: int) -> None:
    """The final evaluation, a sample from best.pt, and what to do next."""
    final, out = (history[-1] if history else None), job.out
    best = load_checkpoint(out / "best.pt", device)
    if final:
        print(f"done: step {final['step']}, val loss {final['val_loss']:.4f} ({final['val_bpc']:.3f} bits/char), "
              f"best {best['best_val']:.4f}, {final['seconds']:.0f} s")
    print("--- sample (best.pt, temperature 0.8) ---")
    prompt = "\n"
    print(prompt + complete(best["model"], job.tokenizer, prompt, sample_tokens, temperature=0.8, seed=seed))
    print("---")
    print(f"saved {out}/best.pt and {out}/last.pt. More text: python tinyllm.py sample --ckpt {out}")
    if job.config.max_time and device.type == "cpu":
        print("train longer for better text: python tinyllm.py train --max-time 600 (or on a GPU: --device cuda)")


def cmd_train(args) -> int:
    if args.sample_tokens < 0:  # checked now, not after the whole run
        raise ValueError(f"--sample-tokens must be >= 0, got {args.sample_tokens}")
    device = start_distributed(args.device)
    if not is_main_process():
        sys.stdout = open(os.devnull, "w")  # under torchrun only rank 0 prints; errors still reach stderr
    job = resume_job(args) if args.resume else new_job(args, device)
    if job is None:
        return 0
    history = run_job(job, device)
    if history is None:
        return 130
    if is_main_process():  # rank 0 reports and samples
        report(job, history, device, args.sample_tokens, args.seed)
    finish_together()
    return 0


def cmd_sample(args) -> int:
    if args.max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {args.max_new_tokens}")
    sample_token(torch.zeros(1, 2), args.temperature, args.top_k, args.top_p)  # bad settings fail now, not after loading
    device = pick_device(args.device)
    ckpt = load_checkpoint(args.ckpt, device)
    if ckpt["tokenizer"] is None:
        raise ValueError(f"{args.ckpt} holds no tokenizer, so text cannot be encoded: use a checkpoint from tinyllm.py train")
    ckpt["tokenizer"].encode(args.prompt)  # an unknown character fails here, before any output

    def show(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    show(args.prompt)
    complete(ckpt["model"], ckpt["tokenizer"], args.prompt, args.max_new_tokens, args.temperature, args.top_k,
             args.top_p, args.seed, args.stop, not args.no_cache, on_text=show)
    show("\n")
    return 0


def chat_start(args, device: torch.device) -> tuple[TinyLLM, Tokenizer, str]:
    """chat-train's model, its chat tokenizer and the preset for its training settings: new, or grown from --init."""
    if not args.init:
        preset = args.preset or ("9m" if device.type == "cuda" else "cpu")
        check_preset(preset)
        tokenizer = chat_tokenizer()
        seed_everything(args.seed)
        return TinyLLM(ModelConfig.from_preset(preset, tokenizer.vocab_size)), tokenizer, preset
    ckpt = load_checkpoint(args.init, device)
    model, base = ckpt["model"], ckpt["tokenizer"]
    if base is None:
        raise ValueError(f"--init {args.init} holds no tokenizer, so its token ids mean nothing known: use a run of "
                         "tinyllm.py train")
    if base.vocab_size != model.config.vocab_size:
        raise ValueError(f"--init {args.init}: its model has {model.config.vocab_size} token rows but its tokenizer "
                         f"{base.vocab_size} tokens, so it was trained with another tokenizer: use a run of "
                         "tinyllm.py train")
    try:
        tokenizer = chat_tokenizer(base)
        model = grow_vocab(model, base, tokenizer, args.seed)
    except ValueError as e:
        raise ValueError(f"--init {args.init}: cannot add the chat tokens to its tokenizer ({e})") from None
    same = [name for name in PRESETS if ModelConfig.from_preset(name, model.config.vocab_size) == model.config]
    preset = args.preset or (ckpt.get("meta") or {}).get("preset") or (same[0] if same else "cpu")
    check_preset(preset)
    return model, tokenizer, preset


def cmd_chat_train(args) -> int:
    if args.conversations < 1:
        raise ValueError(f"--conversations must be at least 1, got {args.conversations}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("chat-train runs as one process (its conversations fit any one GPU): start it with "
                         "python tinyllm.py chat-train, not torchrun")
    device = pick_device(args.device)
    out = Path(args.out or str(new_run_dir()))
    if (out / "last.pt").exists() or (out / "best.pt").exists():
        raise FileExistsError(f"{out} already holds a run: choose another --out")
    check_run_dir(out)
    model, tokenizer, preset = chat_start(args, device)
    block = model.config.block_size
    train_data = chat_data(tokenizer, make_conversations(args.conversations, args.seed), block)
    val_data = chat_data(tokenizer, make_conversations(500, args.seed + 1, held_out=True), block)
    config = TrainConfig.from_preset(preset, **train_overrides(args, CHAT_MAX_TIME), device=str(device), dtype=args.dtype,
                                     seed=args.seed, out_dir=str(out), progress=not args.quiet)
    masked = not args.no_mask
    print(f"tinyllm chat-train | {model.num_params() / 1e6:.2f}M parameters, from {args.init or 'scratch'} "
          f"({preset} settings) | device {device} | {tokenizer.kind} tokenizer, vocab {tokenizer.vocab_size} | "
          f"{args.conversations:,} conversations, {len(train_data.ids):,} tokens | loss on "
          f"{'the assistant tokens' if masked else 'every token'} | budget {budget(config)} | out {out}")

    def batch_source(generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return chat_batch(train_data, config.batch_size, block, generator, device, masked)

    meta = {"chat": True, "persona": "Tilly", "init": str(args.init) if args.init else None, "masked": masked,
            "preset": preset, "conversations": args.conversations}
    try:
        history = fit(model, None, None, config, tokenizer=tokenizer, meta=meta, batch_source=batch_source,
                      val_loss=lambda m, whole: assistant_loss(m, val_data, 256 if whole else 64))
    except KeyboardInterrupt:
        print(f"\ninterrupted: last.pt saved in {out}", file=sys.stderr)
        return 130
    best = load_checkpoint(out / "best.pt", device)
    final = history[-1]
    print(f"done: step {final['step']}, loss on the assistant's tokens of held-out conversations "
          f"{final['val_loss']:.4f}, best {best['best_val']:.4f}, {final['seconds']:.0f} s. "
          f"Talk to it: python tinyllm.py chat --ckpt {out}")
    question, expected = min(held_out_sums(20), key=lambda qa: len(qa[0]))  # a short one fits any context
    with contextlib.suppress(ValueError):  # unless the context is tiny
        reply = chat(best["model"], tokenizer, [{"role": "user", "content": question}])
        print(f"you> {question}\ntilly> {reply}   (expected: {expected})")
    result = chat_eval(best["model"], tokenizer, held_out_sums(200))
    print(f"held-out accuracy: {100 * result['accuracy']:.1f}% (n={result['n']}); "
          f"replies ending with <|end|>: {100 * result['stop_rate']:.1f}%")
    return 0


def cmd_chat(args) -> int:
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    sample_token(torch.zeros(1, 2), args.temperature, args.top_k, args.top_p)  # bad settings fail before loading
    ckpt = load_checkpoint(args.ckpt, pick_device(args.device))
    model, tokenizer = ckpt["model"], ckpt["tokenizer"]
    if tokenizer is None or not all(t in getattr(tokenizer, "special_tokens", {}) for t in CHAT_TOKENS):
        raise ValueError(f"{args.ckpt} is a text model, not a chat model: its tokenizer has no <|user|>, <|assistant|> "
                         f"and <|end|> tokens. Fine-tune it first: python tinyllm.py chat-train --init {args.ckpt}")
    interactive, name = sys.stdin.isatty(), (ckpt.get("meta") or {}).get("persona", "assistant").lower()
    if interactive:
        print(f"Talking to {args.ckpt} (context {model.config.block_size} tokens: the oldest turns are dropped to "
              "fit). Ctrl-D to leave.")
    messages: list[dict] = []
    for number in itertools.count(1):
        try:
            line = input("you> ") if interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not interactive and not line:
            return 0  # the end of the input
        turn = messages + [{"role": "user", "content": line.rstrip("\r\n")}]
        try:
            if not turn[-1]["content"].strip():
                raise ValueError("the message is empty: " + ("type some text (Ctrl-D to leave)" if interactive else
                                                              "give one user message per line"))
            fit_context(tokenizer, turn, model.config.block_size, model.config.block_size // 4)  # a bad turn fails here
            if interactive:
                print(f"{name}> ", end="", flush=True)
            reply = chat(model, tokenizer, turn, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                         None if args.seed is None else args.seed + number,
                         on_text=(lambda piece: print(piece, end="", flush=True)) if interactive else None)
        except ValueError as e:
            if not interactive:
                raise ValueError(f"line {number}: {e}") from None
            print(f"error: {e}", file=sys.stderr)
            continue
        print() if interactive else print(" ".join(reply.split("\n")), flush=True)
        messages = turn + [{"role": "assistant", "content": reply}]
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # every failure is one line; TINYLLM_DEBUG=1 shows the traceback
        if os.environ.get("TINYLLM_DEBUG"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1
    finally:
        if is_distributed():
            torch.distributed.destroy_process_group()  # a torchrun process leaves its group, also after an error


def cmd_export(args) -> int:
    if args.hf is None:
        return cmd_export_onnx_or_web(args)
    if args.int8:
        raise ValueError("--int8 is for --onnx and --web: a Hugging Face export keeps its weights in float32")
    out = export_hf(args.ckpt, args.hf, overwrite=args.overwrite)
    print(f"exported {args.ckpt} to {out}. In Python: from transformers import AutoModelForCausalLM, "
          f"AutoTokenizer; model = AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


def cmd_export_onnx_or_web(args) -> int:
    if args.onnx:
        out = export_onnx(args.ckpt, args.onnx, overwrite=args.overwrite, int8=args.int8)
        print(f"exported {args.ckpt} to {out} and {out.with_suffix('.json')}. In Python: import onnxruntime; "
              f"session = onnxruntime.InferenceSession({str(out)!r}); "
              "logits = session.run(None, {'idx': ids})[0]  # ids: (1, T) int64, T <= block_size")
        return 0
    out = export_web(args.ckpt, args.web, overwrite=args.overwrite, int8=args.int8)
    offline = (out / ORT_WEB_FILES[0]).is_file()
    page = "a chat page" if (out / "chat.js").is_file() else "a web page"
    print(f"exported {args.ckpt} as {page} in {out} ("
          + ("onnxruntime-web included, works offline" if offline else
             "onnxruntime-web loads from a CDN; run `npm ci --prefix web` first to include it") +
          f"). See it: python -m http.server -d {out}, then open http://localhost:8000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
