#!/usr/bin/env python3
"""Build tiny_llm.ipynb, the course chapter, from the chapter text in chapter/*.md and tinyllm.py.

Colab opens only the .ipynb, so the notebook defines every function itself, and each definition must
stay identical to Part I of tinyllm.py. The notebook is therefore never edited by hand: the prose and
the cell layout live in chapter/NN-*.md, read in file-name order, where

    ```python            a code cell, verbatim
    ```tinyllm           a code cell made of these tinyllm.py definitions (names separated by spaces),
                         copied from the *current* tinyllm.py
    ```tinyllm-imports   a code cell with tinyllm.py's Part I imports, then these lines
    ```python-form       a Colab form cell, verbatim: its first line is `#@title Short description`
    ```tinyllm-form      a Colab form cell: the `#@title ...` line, then tinyllm.py definitions as in ```tinyllm
    <!-- cell -->        ends one markdown cell and starts the next

Form cells are for plumbing (downloads, checks of files, plot helpers, the exercise checker): Colab
shows them as one titled line, and every code cell whose first line is `#@title` gets
`cellView: form` in its metadata. A heading that ends in `(optional)` starts optional depth, which
the core path does not need (tests/test_notebook.py measures the core path).

and everything else is markdown ({{COLAB_URL}} becomes the badge's link). Commands:

    python .ci/build_notebook.py            # rebuild tiny_llm.ipynb (cells only, no outputs)
    python .ci/build_notebook.py --execute  # rebuild and run it top to bottom, keeping the outputs
    python .ci/build_notebook.py --check    # exit 1 if tiny_llm.ipynb is not what this would build
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE_PATH = ROOT / "tinyllm.py"
CHAPTER_DIR = ROOT / "chapter"
NOTEBOOK_PATH = ROOT / "tiny_llm.ipynb"
MAX_BYTES = 2_000_000

# The one place that says where the "Open in Colab" badge points (the README's badge is checked against it).
GITHUB_REPO = "tinyllm/tinyllm"
COLAB_URL = f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/main/tiny_llm.ipynb"

# The module caches data next to tinyllm.py; the notebook caches it next to itself.
NOTEBOOK_DATA_DIR = '''\
# Where the dataset is cached: a data/ folder next to this notebook (tinyllm.py uses the data/
# folder next to itself). TINYLLM_DATA_DIR in the environment overrides both.
DATA_DIR = Path("data")'''

FOOTER = re.compile(r"# Footer\b")  # the line in tinyllm.py where its module-only footer begins

# The core path: what every student reads and runs. Optional depth starts at a heading that ends in
# "(optional)" and lasts until the next heading of the same or a higher level that does not; folded
# form cells (plumbing) are not counted as code. Study time: prose at 150 words, code at 20 lines a minute.
HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$", re.M)
WORDS_PER_MINUTE, LINES_PER_MINUTE = 150, 20


def is_form(source: str) -> bool:
    """A Colab form cell: its first line is `#@title ...`, and Colab shows it folded, as that title."""
    return source.startswith("#@title")


def core_flags(cells: list[tuple[str, str]]) -> list[bool]:
    """For each (cell_type, source), whether it is on the core path (outside every optional section)."""
    flags, level = [], None
    for kind, text in cells:
        if kind == "markdown":
            for hashes, title in HEADING.findall(text):
                optional = title.endswith("(optional)")
                if level is not None and len(hashes) <= level and not optional:
                    level = None
                elif optional and (level is None or len(hashes) <= level):
                    level = len(hashes)
        flags.append(level is None)
    return flags


def code_lines(source: str) -> int:
    return sum(1 for line in source.splitlines() if line.strip())


def core_size(cells: list[tuple[str, str]]) -> tuple[int, int, int]:
    """The core path's words of markdown, non-blank code lines (form cells excluded), and study minutes."""
    words = lines = 0
    for (kind, text), core in zip(cells, core_flags(cells)):
        if core and kind == "markdown":
            words += len(text.split())
        elif core and not is_form(text):
            lines += code_lines(text)
    return words, lines, round(words / WORDS_PER_MINUTE + lines / LINES_PER_MINUTE)


class Module:
    """tinyllm.py (less its footer) taken apart: its imports and its top-level definitions, by name."""

    def __init__(self, path: Path = MODULE_PATH):
        lines = path.read_text(encoding="utf-8").splitlines()
        cut = next((i for i, line in enumerate(lines) if FOOTER.match(line)), len(lines))
        self.lines = lines[:cut]
        self.imports: list[str] = []
        self.defs: dict[str, str] = {}
        for node in ast.parse("\n".join(self.lines)).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self.imports.append(self.text(node.lineno, node.end_lineno))
                continue
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
                names, start = [t.id for t in node.targets], node.lineno
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names, start = [node.target.id], node.lineno
            else:
                continue  # the docstring
            while start > 1 and self.lines[start - 2].startswith("#") and not self.lines[start - 2].startswith("# ---"):
                start -= 1  # the comment lines right above a definition belong to it
            for name in names:
                self.defs[name] = self.text(start, node.end_lineno)

    def text(self, start: int, end: int) -> str:
        return "\n".join(self.lines[start - 1:end])


def read_chapter(directory: Path = CHAPTER_DIR) -> list[tuple[str, str]]:
    """The chapter's cells as (kind, text): kind is markdown, python, tinyllm, tinyllm-imports or a -form."""
    cells: list[tuple[str, str]] = []
    for path in sorted(directory.glob("[0-9]*.md")):
        markdown: list[str] = []
        lines = iter(path.read_text(encoding="utf-8").splitlines())

        def flush() -> None:
            text = "\n".join(markdown).strip("\n")
            if text:
                cells.append(("markdown", text.replace("{{COLAB_URL}}", COLAB_URL)))
            markdown.clear()

        for line in lines:
            fence = re.fullmatch(r"```(python|tinyllm|tinyllm-imports|python-form|tinyllm-form)\s*", line)
            if fence:
                flush()
                body = []
                for inner in lines:
                    if inner.strip() == "```":
                        break
                    body.append(inner)
                else:
                    raise SystemExit(f"build_notebook: {path.name}: a ```{fence.group(1)} block is never closed")
                kind, source = fence.group(1), "\n".join(body).strip("\n")
                if kind.endswith("-form") and not source.startswith("#@title "):
                    raise SystemExit(f"build_notebook: {path.name}: a ```{kind} block must start with '#@title ...'")
                cells.append((kind, source))
            elif line.strip() == "<!-- cell -->":
                flush()
            else:
                markdown.append(line)
        flush()
    return cells


def build(module: Module, chapter: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The notebook's cells as (cell_type, source); every Part I definition must be placed exactly once."""
    placed: list[str] = []
    cells = []
    for kind, text in chapter:
        title = ""
        if kind == "tinyllm-form":
            title, _, text = text.partition("\n")
            kind, title = "tinyllm", title + "\n"
        if kind == "tinyllm":
            names = text.split()
            unknown = [n for n in names if n not in module.defs]
            if unknown:
                raise SystemExit(f"build_notebook: the chapter names {unknown}, which Part I of tinyllm.py does not define")
            placed += names
            text = title + "\n\n\n".join(NOTEBOOK_DATA_DIR if n == "DATA_DIR" else module.defs[n] for n in names)
        elif kind == "tinyllm-imports":
            if is_form(text):  # a form cell: the title first, then the imports
                title, _, text = text.partition("\n")
                title += "\n"
            text = title + "\n".join(module.imports) + ("\n\n" + text.strip("\n") if text.strip() else "")
        cells.append(("markdown" if kind == "markdown" else "code", text))
    twice = sorted({n for n in placed if placed.count(n) > 1})
    missing = [n for n in module.defs if n not in placed]
    if twice or missing:
        raise SystemExit(f"build_notebook: every Part I definition goes in the chapter once; placed twice: {twice}; "
                         f"missing: {missing} (add them to a ```tinyllm block in chapter/)")
    words, lines, minutes = core_size(cells)  # the introduction states them (each placeholder is one word)
    kind, first = cells[0]
    first = first.replace("{{CORE_WORDS}}", f"{words:,}").replace("{{CORE_LINES}}", f"{lines:,}")
    cells[0] = (kind, first.replace("{{CORE_MINUTES}}", str(minutes)))
    return cells


def make_notebook(cells: list[tuple[str, str]]):
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    nb = new_notebook()
    for i, (kind, text) in enumerate(cells):
        cell = new_code_cell(text) if kind == "code" else new_markdown_cell(text)
        cell.id = f"cell-{i:03d}"  # stable ids, so that rebuilding gives the same file
        if kind == "code" and is_form(text):
            cell.metadata["cellView"] = "form"  # Colab shows the title and hides the code until clicked
        nb.cells.append(cell)
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "accelerator": "GPU",  # Colab opens the notebook with a GPU runtime
        "colab": {"provenance": [], "gpuType": "T4"},
    }
    nbformat.validate(nb)
    return nb


def clean_outputs(nb) -> None:
    """Keep what a reader on GitHub should see: no widget state, no timing, progress bars as their last frame."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        outputs = []
        for out in cell.outputs:
            if "application/vnd.jupyter.widget-view+json" in out.get("data", {}):
                continue  # a widget: without its state it would show nothing useful
            if out.output_type == "stream":
                out.text = "\n".join(line.rsplit("\r", 1)[-1] for line in out.text.split("\n"))
                if outputs and outputs[-1].output_type == "stream" and outputs[-1].name == out.name:
                    outputs[-1].text += out.text
                    continue
            outputs.append(out)
        cell.outputs = [o for o in outputs if not (o.output_type == "stream" and not o.text.strip())]


def execute(nb, timeout: int = 1800):
    from nbclient import NotebookClient

    if not os.environ.get("TINYLLM_DATA_DIR") and (ROOT.parent / "shared" / "data").is_dir():
        os.environ["TINYLLM_DATA_DIR"] = str(ROOT.parent / "shared" / "data")  # the offline copy, as in CI
    mode = "TINYLLM_FAST=1" if os.environ.get("TINYLLM_FAST") == "1" else "full"
    print(f"executing the notebook ({mode} mode, cwd {ROOT}) ...", flush=True)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    print(f"executed in {time.perf_counter() - t0:.0f} s")
    clean_outputs(nb)
    return nb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--execute", action="store_true", help="run the notebook and keep its outputs")
    parser.add_argument("--check", action="store_true", help="exit 1 if the notebook's cells are out of date")
    parser.add_argument("--out", type=Path, default=NOTEBOOK_PATH, help="where to write (default: tiny_llm.ipynb)")
    args = parser.parse_args()

    import nbformat

    cells = build(Module(), read_chapter())
    if args.check:
        have = [(c.cell_type, c.source) for c in nbformat.read(args.out, as_version=4).cells]
        if have != cells:
            print(f"{args.out.name} is out of date: run python .ci/build_notebook.py --execute", file=sys.stderr)
            return 1
        print(f"{args.out.name} is up to date")
        return 0
    nb = make_notebook(cells)
    if args.execute:
        execute(nb)
    nbformat.write(nb, args.out)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({len(cells)} cells, {size / 1e6:.2f} MB)")
    if size > MAX_BYTES:
        print(f"error: {args.out.name} is over {MAX_BYTES / 1e6:.0f} MB: lower the figures' dpi", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
