"""The README's Python example runs as written (on the tiny preset, for speed), so the docs cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO, cli_env


def readme_api_example() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_api_example_runs(tmp_path, corpus_file):
    code = readme_api_example()
    assert 'tl.load_text("shakespeare")' in code and "tl.fit(" in code and "tl.load_checkpoint(" in code
    # Same calls, smaller: the tiny preset for a few seconds on the generated corpus.
    code = code.replace('"cpu"', '"tiny"').replace("max_time=60", "max_time=3")
    code = code.replace('tl.load_text("shakespeare")', f"tl.load_text({str(corpus_file)!r})")
    code = code.replace('"ROMEO:"', '"The king"').replace('"JULIET:"', '"A fool"')
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=cli_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"val loss \d+\.\d{3} nats = \d+\.\d{3} bits/char", result.stdout)
    assert (tmp_path / "runs" / "api-demo" / "best.pt").is_file()
    assert (tmp_path / "runs" / "api-demo" / "last.pt").is_file()
    assert "A fool" in result.stdout  # the greedy continuation printed after loading best.pt


def test_readme_badge_opens_the_repository_the_notebook_names():
    """GITHUB_REPO in .ci/build_notebook.py is the one place: the README's badge must point where the notebook's does."""
    builder = (REPO / ".ci" / "build_notebook.py").read_text(encoding="utf-8")
    repo = re.search(r'^GITHUB_REPO = "([^"]+)"', builder, re.M).group(1)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    badges = re.findall(r"colab\.research\.google\.com/github/([^)\s]+)/blob/main/tiny_llm\.ipynb", readme)
    assert badges and set(badges) == {repo}
