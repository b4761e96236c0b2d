"""Shared test fixtures: a small corpus made on the spot, the real TinyShakespeare if present, and a CLI runner.

Most tests train the "tiny" preset on `corpus_text` (a few KB of structured English), so they need
neither the network nor the 1 MB TinyShakespeare file. Tests that want the real file use
`shakespeare_path`, found through TINYLLM_DATA_DIR, and are skipped when it is absent.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest

REPO = Path(__file__).resolve().parent.parent
if os.environ.get("TINYLLM_DATA_DIR"):  # CI gives a relative path; tests that change directory still find it
    os.environ["TINYLLM_DATA_DIR"] = str(Path(os.environ["TINYLLM_DATA_DIR"]).resolve())


def make_corpus(n_sentences: int = 200, seed: int = 0) -> str:
    """Simple, regular English: a model learns its patterns in a few dozen steps."""
    rng = random.Random(seed)
    subjects = ["The king", "A fool", "My lord", "The queen", "Good sir", "The old man", "Her brother"]
    verbs = ["speaks of", "dreams of", "fights for", "weeps for", "laughs at", "waits for"]
    objects = ["the crown", "his love", "the night", "a horse", "the sea", "her honour", "the war"]
    lines = []
    for _ in range(n_sentences):
        lines.append(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}.")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def corpus_text() -> str:
    """About 5 KB of structured English, the same on every run."""
    return make_corpus()


@pytest.fixture
def corpus_file(tmp_path: Path, corpus_text: str) -> Path:
    """`corpus_text` written to a UTF-8 file, for --data."""
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """The real TinyShakespeare file from TINYLLM_DATA_DIR; skips the test if it is not there."""
    path = Path(os.environ.get("TINYLLM_DATA_DIR") or REPO / "data") / "tinyshakespeare.txt"
    if not path.is_file():
        pytest.skip("TinyShakespeare not found: set TINYLLM_DATA_DIR to the folder holding tinyshakespeare.txt")
    return path


def cli_env() -> dict:
    """The environment for CLI subprocesses: one thread each (the test machine's cores are shared)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # import tinyllm anywhere
    env.pop("TINYLLM_DEBUG", None)  # errors must be one line, as users see them
    return env


def run_cli(*args: str, cwd: Path | str = REPO, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python tinyllm.py ARGS...` as a user would, and return its exit code, stdout and stderr."""
    return subprocess.run([sys.executable, str(REPO / "tinyllm.py"), *map(str, args)], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    """The `run_cli` helper as a fixture: cli("train", "--data", path, ...)."""
    return run_cli


@pytest.fixture
def single_thread():
    """Run torch on one thread during a test: on shared cores, two threads fighting over them are slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- helpers shared by the test files (import them: from conftest import tiny_model, ...) ----------

def tiny_model(vocab: int, seed: int = 0, **overrides):
    """The "tiny" preset's model, initialised from a fixed seed."""
    import torch

    import tinyllm

    torch.manual_seed(seed)
    return tinyllm.TinyLLM(tinyllm.ModelConfig.from_preset("tiny", vocab, **overrides))


def tiny_config(**overrides):
    """The "tiny" preset's training settings, on the CPU, quiet, and in float32: "auto" would pick bf16 on a
    CPU with bf16 instructions, and the tests that compare numbers must not depend on the machine."""
    import tinyllm

    return tinyllm.TrainConfig.from_preset("tiny", **{"device": "cpu", "progress": False, "dtype": "fp32",
                                                      **overrides})


def assert_same_weights(a, b) -> None:
    """Every tensor of two models' state dicts is bit-identical, and they have the same keys."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs"


def without_seconds(history: list[dict]) -> list[dict]:
    """A history without its wall-clock column, for comparing runs."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def call_main(argv: list, capsys) -> tuple[int, str, str]:
    """Run the CLI in this process (what `python tinyllm.py` calls); returns (exit code, stdout, stderr)."""
    import tinyllm

    try:
        code = tinyllm.main([str(a) for a in argv])
    except SystemExit as e:  # --help and argparse's usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def run_without(modules: Sequence[str], statement: str) -> subprocess.CompletedProcess:
    """Run `import tinyllm`, make a tiny model, then `statement`, in a Python where `modules` are not installed.

    An ImportError from the statement is printed to stdout, so a test can check what it tells the user.
    """
    code = ("import sys\n"
            f"for name in {tuple(modules)!r}: sys.modules[name] = None  # not installed\n"
            "import tinyllm\n"
            "model = tinyllm.TinyLLM(tinyllm.ModelConfig.from_preset('tiny', 10))\n"
            "try:\n"
            f"    {statement}\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    return subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=120)
