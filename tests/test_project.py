"""The project's own promises: CI runs the very test command README gives, over every test."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def readme_test_command() -> str:
    """The command in the README block that follows "run the whole test suite"."""
    text = (REPO / "README.md").read_text()
    after = text[text.index("run the whole test suite"):]
    return re.search(r"```sh\n(.+?)\n```", after, re.S).group(1).strip()


def test_ci_runs_the_readme_test_command():
    command = readme_test_command()
    assert command == "bash tests/run.sh"
    ci = [line.strip() for line in (REPO / ".ci/run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert ci[-1] == f"exec {command}"


def test_the_test_command_runs_the_whole_suite():
    script = (REPO / "tests/run.sh").read_text()
    [pytest_line] = [line for line in script.splitlines() if "-m pytest" in line]
    assert re.search(r' -m pytest (--durations=\d+ )?"\$@"', pytest_line)  # nothing filtered out
    assert " -k " not in pytest_line
    assert " -m " not in pytest_line.replace(" -m pytest", "")  # no marker filter
    assert "testpaths = [\"tests\"]" in (REPO / "pyproject.toml").read_text()


def test_every_module_is_in_the_architecture_module_map():
    """docs/architecture.md names every module of the package: by its path (under zriver/ or
    with it), or by its file name on a line that names its package directory."""
    text = (REPO / "docs/architecture.md").read_text()
    lines = text.splitlines()
    missing = []
    for path in sorted((REPO / "zriver").rglob("*.py")):
        relative = path.relative_to(REPO / "zriver").as_posix()
        if (path.name in ("__init__.py", "__main__.py") or f"`{relative}`" in text
                or f"`zriver/{relative}`" in text):
            continue
        folder = f"`{path.parent.relative_to(REPO / 'zriver').as_posix()}/`"
        if not any(folder in line and f"`{path.name}`" in line for line in lines):
            missing.append(relative)
    assert not missing, f"add these to the module map of docs/architecture.md: {missing}"
