"""Crash-safe files: atomic writes, checked tokenizers and checkpoints, export folders.

The chapter's format (tinyllm.py, section 13: save_model / load_model), written so that a crash
never leaves half a file, and read back as untrusted input.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import tempfile
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Iterator, Optional

import torch

from tinyllm import (
    BPETokenizer, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CharTokenizer, SPLIT_PATTERN, TOKENIZER_FORMAT,
    TOKENIZER_VERSION, TinyLLM, Tokenizer, TrainConfig, TrainState, checkpoint_dict, model_from_checkpoint)


# Section 13's format, written so that a crash never leaves half a file, and read as untrusted input.

def write_failed(path: Path, error: OSError) -> OSError:
    """`error` from writing `path` (a full disk, say) as one line that names the file and what to do.

    The write was atomic, so an old file at `path` is still whole: the message says so.
    """
    message = f"cannot write {path} ({error.strerror or error})"
    if path.is_file():
        message += f"; the previous {path.name} is intact"
    in_the_way = next((p for p in path.parents if p.is_file()), None)  # e.g. README.md, for README.md/run/last.pt
    if in_the_way:
        message += f": {in_the_way} is a file, not a folder"
    elif error.errno in (errno.ENOSPC, errno.EDQUOT):
        message += ": free some space"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        message += ": choose a folder you can write to"
    failure = type(error)(message)  # without "[Errno 28]" in front, which tells a user nothing
    failure.errno = error.errno
    return failure


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half of one.

    The bytes go to a temporary file in the same directory, are flushed and fsync'ed to disk, and
    the temporary file is then renamed over `path` (a rename within one filesystem is atomic).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_failed(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; give the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_failed(path, e) from None
        raise


def remove_stale_temp_files(directory: Path) -> None:
    """Delete temporary files left by a write that was cut short (a crash between write and rename)."""
    for tmp in Path(directory).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def tokenizer_from_dict(data: dict) -> Tokenizer:
    """Rebuild a tokenizer from its saved form, checking it as untrusted data.

    A tokenizer file may come from anyone, so it is read as plain JSON (never executed) and every
    field is checked: a bad id caught here would otherwise surface much later as a wrong token or an
    IndexError deep inside encode or the model.
    """
    if not isinstance(data, dict) or data.get("type") not in ("char", "bpe"):
        raise ValueError("not a tinyllm tokenizer (expected a 'type' of 'char' or 'bpe')")
    if data.get("version", TOKENIZER_VERSION) != TOKENIZER_VERSION:
        raise ValueError(f"tokenizer format version {data.get('version')!r}; this tinyllm reads version "
                         f"{TOKENIZER_VERSION}: use the tinyllm release that wrote it, or train a new tokenizer")
    if data["type"] == "char":
        chars = data.get("chars")
        if not isinstance(chars, str) or not chars or list(chars) != sorted(set(chars)):
            raise ValueError("malformed char tokenizer: 'chars' must be a non-empty string of distinct, sorted characters")
        specials = data.get("special_tokens", [])
        if not isinstance(specials, list):
            raise ValueError("malformed char tokenizer: 'special_tokens' must be a list of distinct, non-empty strings")
        try:
            return CharTokenizer(chars, specials)
        except ValueError as e:  # a special token that is not a string, empty, or twice
            raise ValueError(f"malformed char tokenizer: {e}") from None
    merges, specials, pattern = data.get("merges"), data.get("special_tokens", {}), data.get("pattern", SPLIT_PATTERN)
    if not isinstance(merges, list) or not isinstance(specials, dict) or not isinstance(pattern, str):
        raise ValueError("malformed BPE tokenizer: 'merges' must be a list, 'special_tokens' a dict and 'pattern' a string")
    seen: set[tuple[int, int]] = set()
    for i, m in enumerate(merges):
        # Merge i makes id 256 + i, so it can only join ids that already exist: bytes or earlier merges.
        ok = isinstance(m, list) and len(m) == 2 and all(type(x) is int and 0 <= x < 256 + i for x in m)
        if not ok:
            raise ValueError(f"malformed BPE tokenizer: merge {i} is {m!r}, expected two ids below {256 + i}")
        if tuple(m) in seen:
            raise ValueError(f"malformed BPE tokenizer: merge {i} {m!r} repeats an earlier merge")
        seen.add(tuple(m))
    n = 256 + len(merges)
    ids = list(specials.values())
    if (not all(type(i) is int for i in ids) or sorted(ids) != list(range(n, n + len(ids)))
            or not all(s for s in specials)):
        raise ValueError(f"malformed BPE tokenizer: special tokens must be non-empty strings with the ids "
                         f"{n}..{n + len(specials) - 1}, one each")
    # A pattern is a program for the regex engine, and a hostile one (say "(a+)+$") can take hours over one
    # line of text. So a file may only name the patterns tinyllm writes: today's, and the one before "_" was
    # counted as punctuation. Another pattern can still be given in code: BPETokenizer(merges, specials, pattern).
    if pattern not in (SPLIT_PATTERN, r"'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+"):
        raise ValueError("bad split pattern in BPE tokenizer: tinyllm reads only its own (SPLIT_PATTERN, or the one "
                         "before it), since a regex from a file could make encoding hang; for another pattern, build "
                         "BPETokenizer(merges, special_tokens, pattern) in code")
    return BPETokenizer([tuple(m) for m in merges], specials, pattern)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer saved with `.save(path)`, whichever kind it is."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}: give the path of a JSON file written by Tokenizer.save")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # RecursionError: absurdly nested JSON
        raise ValueError(f"{path} is not a tokenizer file (not valid JSON: {e})") from None
    if not isinstance(data, dict) or data.get("format") != TOKENIZER_FORMAT:
        raise ValueError(f"{path} is not a tinyllm tokenizer file (no \"format\": \"{TOKENIZER_FORMAT}\" in it)")
    if "version" not in data:
        raise ValueError(f"{path} has no format version: it was not written by Tokenizer.save")
    try:
        return tokenizer_from_dict(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None  # which file, too


def save_checkpoint(path: str | Path, model: TinyLLM, tokenizer: Optional[Tokenizer] = None, **extra) -> None:
    """Write `checkpoint_dict` (section 13) with any training state (`extra`) to one file, atomically.

    Objects in `extra` become plain data: an optimizer or GradScaler its state dict, a TrainConfig
    or TrainState a dict (a TrainState's fields go in at the top level), so that the file still loads
    with torch.load(weights_only=True).
    """
    payload = {}
    for key, value in extra.items():
        if key == "optimizer" and value is not None:
            value = value.state_dict()
        elif key == "scaler" and value is not None:
            value = value.state_dict() if value.is_enabled() else None
        elif key == "train_config" and value is not None:
            value = asdict(value)
        elif key == "train_state":
            payload.update(asdict(value))
            continue
        payload[key] = value
    buffer = io.BytesIO()
    torch.save(checkpoint_dict(model, tokenizer, **payload), buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def why_not_loaded(path: Path, error: Exception) -> str:
    """Why torch.load refused `path`, in words that say what to do.

    torch.save writes a zip archive (before PyTorch 1.6, a pickle that starts with a magic number), so
    the first bytes tell a file that is no checkpoint at all from one that was cut short or damaged.
    """
    if "GLOBAL" in str(error):  # torch's weights_only unpickler met a class or function: maybe code to run
        return "it holds objects other than tensors and plain data, which tinyllm never unpickles"
    if isinstance(error, OSError) and error.errno != errno.EINVAL:  # EINVAL: torch reading past the end of a cut file
        return error.strerror or str(error)  # e.g. "Permission denied"
    with open(path, "rb") as f:
        head = f.read(4)
    if not (b"PK\x03\x04".startswith(head) or b"\x80\x02\x8a\x0a".startswith(head)):
        return ("it is not a PyTorch checkpoint (torch.save did not write it): give a .pt file or a run directory "
                "from `tinyllm.py train`")
    return (f"the file is truncated or corrupt ({path.stat().st_size:,} bytes; was a copy cut short?): copy it again, "
            "or use the run's other checkpoint (best.pt or last.pt)")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file (or a run directory's best.pt) as a dict with a ready "model" and "tokenizer".

    The other keys are whatever training saved: "optimizer", "step", "history", "train_config", ...
    Files that are missing, cut short, not checkpoints, of another format version, or that try to
    unpickle anything but tensors and plain data are refused with a ValueError or FileNotFoundError.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").is_file() else path / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: give a .pt file or a run directory from `tinyllm.py train`")
    try:
        with warnings.catch_warnings():  # torch warns about a plain pickle before refusing it: one line is enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            data = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot load checkpoint {path}: {why_not_loaded(path, e)}") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a tinyllm checkpoint")
    if data.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} has checkpoint format version {data.get('version')}; this tinyllm reads "
                         f"version {CHECKPOINT_VERSION}: use the tinyllm release that wrote it")
    try:
        model = model_from_checkpoint(data, device)
    except (TypeError, KeyError, RuntimeError, ValueError) as e:  # ValueError: a config ModelConfig refuses
        raise ValueError(f"{path} is damaged: its model does not match its config ({str(e).splitlines()[0]})") from None
    data["model"], data["model_config"] = model, model.config
    try:
        data["tokenizer"] = tokenizer_from_dict(data["tokenizer"]) if data.get("tokenizer") else None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None  # which file, too
    if data.get("train_config"):
        data["train_config"] = TrainConfig(**data["train_config"])
    if "step" in data:  # a training checkpoint: where the run stands, as one object
        data["train_state"] = TrainState(**{f.name: data[f.name] for f in fields(TrainState) if f.name in data})
    return data


EXPORT_MARKER = "tinyllm_export.json"  # what marks a folder as a tinyllm export, and lists its files


def export_files_owned(out: Path) -> Optional[set[str]]:
    """The files a previous export listed in out's marker, or None if out holds no (valid) marker."""
    try:
        files = json.loads((out / EXPORT_MARKER).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # Plain names only: a marker is data from disk, and "../x" would reach outside the folder.
    if not isinstance(files, list) or not all(isinstance(f, str) and f and Path(f).name == f != ".." for f in files):
        return None
    return set(files) | {EXPORT_MARKER}


@contextlib.contextmanager
def export_folder(out_dir: str | Path, kind: str, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder to write an export into; when the block ends without error, its files replace out_dir's.

    out_dir may be new, empty, or a previous tinyllm export (whose files are then replaced); a folder
    holding anything else is refused unless `overwrite`, and even then only files of the same
    names are replaced, never the others. Everything is written into a sibling folder first and then
    moved in by renames (undone if one fails), so a failure halfway leaves out_dir as it was.
    """
    import shutil

    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file, not a folder: give a new or empty folder to export into")
    present = {p.name for p in out.iterdir()} if out.is_dir() else set()
    owned = export_files_owned(out) or set()
    foreign = sorted(present - owned)
    if foreign and not overwrite:
        names = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise FileExistsError(f"refusing to export into {out}: it holds files that no tinyllm export wrote ({names}); "
                              "choose a new or empty folder, or add --overwrite (overwrite=True in Python) to write "
                              "into it anyway, replacing only the files of the same names")
    out.parent.mkdir(parents=True, exist_ok=True)
    new = out.parent / f".{out.name}.{os.urandom(4).hex()}.tmp"  # not mkdtemp: its mode 0700 would stick
    new.mkdir()
    aside = new.with_suffix(".old")  # out's replaced files wait here until the new ones are in
    try:
        yield new
        files = sorted(p.name for p in new.iterdir())
        marker = {"format": "tinyllm-export", "version": 1, "kind": kind, "files": files}
        (new / EXPORT_MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
        if not present:  # a new or empty folder: one rename puts the whole export in place
            if out.is_dir():
                out.rmdir()
            new.rename(out)
            return
        aside.mkdir()
        moves: list[tuple[Path, Path]] = []
        try:
            for name in sorted((owned | set(files) | {EXPORT_MARKER}) & present):  # the old export's, and same names
                moves.append((out / name, aside / name))
                os.replace(*moves[-1])
            for name in files + [EXPORT_MARKER]:
                moves.append((new / name, out / name))
                os.replace(*moves[-1])
        except BaseException:
            for src, dst in reversed(moves):  # put everything back where it was
                if dst.exists() or dst.is_symlink():
                    os.replace(dst, src)
            with contextlib.suppress(OSError):
                aside.rmdir()  # empty again (if not, it keeps what could not be put back)
            raise
        shutil.rmtree(aside)  # the replaced files
    finally:
        shutil.rmtree(new, ignore_errors=True)


def export_source(checkpoint: str | Path | TinyLLM, tokenizer: Optional[Tokenizer]) -> tuple[TinyLLM, Optional[Tokenizer]]:
    """The model and tokenizer to export: a TinyLLM as given, or a checkpoint's (file or run directory)."""
    if isinstance(checkpoint, TinyLLM):
        model = checkpoint
    else:
        ckpt = load_checkpoint(checkpoint)
        model, tokenizer = ckpt["model"], tokenizer or ckpt["tokenizer"]
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}: "
                         "pass the tokenizer the model was trained with")
    return model, tokenizer
