"""The project's shape: tinyllm.py is the chapter, the toolkit one concern a module, short functions everywhere.

tests/test_notebook.py checks that the notebook mirrors tinyllm.py; these check the rest of the
layout that the README promises: the toolkit's names reached through `import tinyllm`, the shared
command-line options declared once, an installable package, and no function over a screen.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import tomllib

import pytest

import tinyllm
from conftest import REPO, cli_env

MAX_FUNCTION_LINES = 60
SOURCES = ["tinyllm.py", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "tinyllm_toolkit").glob("*.py")),
           *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "bench").glob("*.py")),
           *sorted(p.relative_to(REPO).as_posix() for p in (REPO / ".ci").glob("*.py"))]
TOOLKIT_MODULES = ["files", "runs", "cli", "export_hf", "export_onnx"]


def functions(path: str):
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            yield node.name, node.end_lineno - start + 1


@pytest.mark.parametrize("path", SOURCES)
def test_no_function_is_longer_than_a_screen(path):
    long = {name: lines for name, lines in functions(path) if lines > MAX_FUNCTION_LINES}
    assert not long, f"{path}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_toolkit_is_a_package_of_one_concern_a_module():
    for name in TOOLKIT_MODULES:
        source = (REPO / "tinyllm_toolkit" / f"{name}.py").read_text(encoding="utf-8")
        assert ast.get_docstring(ast.parse(source)), f"tinyllm_toolkit/{name}.py says what it holds"
        assert "# Part" not in source
    assert set(tinyllm.TOOLKIT_MODULES) == set(TOOLKIT_MODULES)


@pytest.mark.parametrize("name", ["fit", "load_checkpoint", "save_checkpoint", "export_hf", "export_onnx",
                                  "export_web", "main", "build_parser", "TrainingDiverged"])
def test_import_tinyllm_reaches_the_toolkit(name):
    import importlib

    found = getattr(tinyllm, name)
    homes = [m for m in TOOLKIT_MODULES if getattr(importlib.import_module(f"tinyllm_toolkit.{m}"), name, None) is found]
    assert homes, f"tinyllm.{name} is not the toolkit's"


def test_an_unknown_name_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        tinyllm.no_such_thing  # noqa: B018


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = tinyllm.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("option, commands", [
    ("--device", ["train", "sample", "chat-train", "chat"]), ("--dtype", ["train", "chat-train"]),
    ("--ckpt", ["sample", "chat", "export"]), ("--top-p", ["sample", "chat"]),
    ("--max-time", ["train", "chat-train"]), ("--out", ["train", "chat-train"]), ("--quiet", ["train", "chat-train"])])
def test_a_shared_option_is_declared_once(option, commands):
    """argparse's parents= gives every command the same Action object: one declaration, one help text."""
    actions = {name: next(a for a in p._actions if option in a.option_strings)
               for name, p in subcommands().items() if name in commands}
    assert set(actions) == set(commands)
    assert len({id(a) for a in actions.values()}) == 1, f"{option} is declared more than once"


def test_pyproject_installs_the_module_the_toolkit_and_a_command():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["scripts"]["tinyllm"] == "tinyllm_toolkit.cli:main"
    assert project["tool"]["setuptools"]["py-modules"] == ["tinyllm"]
    assert "tinyllm_toolkit" in project["tool"]["setuptools"]["packages"]
    assert any(m.startswith("slow:") for m in project["tool"]["pytest"]["ini_options"]["markers"])


def test_the_console_command_runs_the_cli(tmp_path):
    """`python -m tinyllm_toolkit.cli` is what the `tinyllm` command runs, from any folder."""
    result = subprocess.run([sys.executable, "-m", "tinyllm_toolkit.cli", "sample", "--help"], cwd=tmp_path,
                            env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--top-p" in result.stdout


def test_no_sys_path_insert_in_tests_or_bench():
    for path in [*(REPO / "tests").glob("*.py"), *(REPO / "bench").glob("*.py")]:
        assert not re.search(r"sys\.path\.(insert|append)", path.read_text(encoding="utf-8")), path.name
