"""Checked inputs: what the chapter's lean definitions leave out, for the command line and real runs.

The chapter's `load_text` (tinyllm.py, section 2) reads a built-in dataset or a UTF-8 file in a few
lines. `load_text_checked` adds a clear error, saying what to do, for every way that can fail (no
such file, a folder, a file that is empty or not UTF-8); the command line reads its text with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import tinyllm


def load_text_checked(source: str | Path, data_dir: Optional[str | Path] = None) -> str:
    """`tinyllm.load_text`, with one error that says what to do for each way reading the text can fail."""
    name = str(source)
    path = None
    if name not in tinyllm.DATASETS:
        path = Path(name).expanduser()
        if not path.exists():
            names = ", ".join(tinyllm.DATASETS)
            raise FileNotFoundError(f"no such file: {name} (give a path to a UTF-8 text file, or one of: {names})")
        if path.is_dir():
            raise ValueError(f"{name} is a directory: give the path of a UTF-8 text file inside it")
    try:
        text = tinyllm.load_text(name if path is None else path, data_dir)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path} is not UTF-8 text (bad byte at offset {e.start}): re-save it as UTF-8 in your editor, "
            f"or convert it, e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}-utf8.txt"
        ) from None
    if not text:
        raise ValueError(f"{path or name} is empty: give a file with some text in it")
    return text
