"""The generated references (``docs/cli.md``, ``docs/config.md``, the roles table of
``docs/security.md``) match the code, and the docs index and links hold.

Adding a verb, a flag, a setting or an op without running ``python -m zriver.reference`` fails
here; so does a doc that ``docs/README.md`` does not list, or a relative link to nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from zriver import config as cfg
from zriver import reference
from zriver.client.commands import REGISTRY
from zriver.client.registry import arg, command

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


@pytest.mark.parametrize("name", sorted(reference.OUTPUTS))
def test_committed_file_is_what_the_code_generates(name):
    committed = (DOCS / name).read_text()
    assert committed == reference.OUTPUTS[name](committed), (
        f"docs/{name} is out of date: run python -m zriver.reference and commit it")


def test_check_passes_whatever_the_terminal_width_home_or_directory(tmp_path):
    """``--check`` in a narrow terminal, another HOME/ZRIVER_HOME and cwd: same bytes."""
    env = {**os.environ, "COLUMNS": "37", "HOME": str(tmp_path), "ZRIVER_HOME": str(tmp_path),
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "zriver.reference", "--check"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_check_names_the_stale_file_and_writes_nothing(tmp_path, capsys):
    for name in reference.OUTPUTS:
        shutil.copy(DOCS / name, tmp_path / name)
    stale = (tmp_path / "config.md").read_text().replace("| `retention` |", "| `retained` |")
    (tmp_path / "config.md").write_text(stale)
    assert reference.main(["--check", "--docs", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "docs/config.md is out of date" in err and "cli.md" not in err
    assert (tmp_path / "config.md").read_text() == stale
    assert reference.main(["--docs", str(tmp_path)]) == 0  # writes it
    assert reference.main(["--check", "--docs", str(tmp_path)]) == 0
    assert (tmp_path / "config.md").read_text() == (DOCS / "config.md").read_text()


def test_a_new_verb_changes_the_reference_and_a_hidden_one_does_not():
    before = reference.render_cli()
    try:
        command("zz-probe", "a verb made by this test", arg("--depth", type=int, default=3,
                help="how deep"), needs_cluster=False)(lambda ctx, args: 0)
        command("_zz-internal", "an internal verb", needs_cluster=False)(lambda ctx, args: 0)
        after = reference.render_cli()
    finally:
        REGISTRY.pop("zz-probe", None)
        REGISTRY.pop("_zz-internal", None)
    assert after != before
    assert "## zriver zz-probe" in after and "| `--depth DEPTH` | `3` | how deep |" in after
    assert "zz-internal" not in after
    assert reference.render_cli() == before


def sections(text: str) -> dict[str, str]:
    """``## heading`` -> the text below it, up to the next one."""
    parts = text.split("\n## ")[1:]
    return {part.split("\n", 1)[0]: part.split("\n", 1)[1] for part in parts}


def test_every_verb_and_flag_appears():
    cli = sections((DOCS / "cli.md").read_text())
    verbs = reference.public_verbs()
    assert len(verbs) >= 40 and "submit" in verbs and "init config" in verbs
    for name, cmd in verbs.items():
        body = cli[f"zriver {name}"]
        assert f"```\nzriver {name}" in body, name
        for item in cmd.args:
            for flag in item.flags:
                if flag.startswith("-"):
                    assert f"`{flag}" in body or f", {flag}" in body, (name, flag)
            if item.options.get("help"):
                assert " ".join(item.options["help"].split())[:30] in body, (name, item.flags)
    for flag in ("--host", "--key", "--host-key", "--timeout", "--log-json", "--version"):
        assert f"| `{flag}" in cli["Global flags"]


def test_every_setting_appears_with_its_meaning_range_and_choices():
    config = sections((DOCS / "config.md").read_text())
    for cls, name, _, ranges, choices in reference.SETTINGS:
        body = config[name]
        docs = reference.field_docs(cls)
        for item in fields(cls):
            assert docs.get(item.name), f"{cls.__name__}.{item.name} has no docstring"
            row = next(line for line in body.splitlines()
                       if line.startswith(f"| `{item.name}` |"))
            assert docs[item.name][:40] in row
            if item.name in ranges:
                assert reference.range_text(ranges[item.name]) in row
            for word in choices.get(item.name, ()):
                assert f"`{word}`" in row
        assert set(ranges) | set(choices) <= {item.name for item in fields(cls)}
    assert "a port, -1 to 65535 (-1: off)" in config["host.toml"]


def test_choices_are_enforced_from_the_same_table():
    """The words the reference lists are exactly what ``check`` accepts."""
    for key, words in cfg.HOST_CHOICES.items():
        for word in words:
            cfg.from_mapping({key: word}, cfg.HostSettings)
        with pytest.raises(cfg.InvalidArgument, match=f"{key} must be "):
            cfg.from_mapping({key: "neither"}, cfg.HostSettings)


def test_the_roles_table_is_every_op_with_its_roles():
    text = (DOCS / "security.md").read_text()
    table = text.split(reference.ROLES_BEGIN, 1)[1].split(reference.ROLES_END, 1)[0]
    rows = {}
    for line in table.strip().splitlines()[2:]:
        names, *marks = [part.strip() for part in line.strip("|").split("|")]
        for name in re.findall(r"`([^`]+)`", names):
            rows[name] = {role for role, mark in zip(("runner", "user", "admin"), marks)
                          if mark == "yes"}
    ops = {op.name: set(op.roles) for op in reference.op_table()}
    assert rows == ops
    assert rows["node.drain"] == {"admin"} and rows["task.update"] == {"runner"}
    with pytest.raises(LookupError, match="roles table"):
        reference.render_security(text.replace(reference.ROLES_END, ""))


# ---- the docs index and links ----------------------------------------------------------------

HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def anchors(path: Path) -> set[str]:
    """The anchors GitHub makes for the headings of ``path`` (a repeated one gets -1, -2...)."""
    seen: dict[str, int] = {}
    found = set()
    for title in HEADING.findall(FENCE.sub("", path.read_text())):
        title = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", title)
        slug = reference.anchor(title)
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def test_every_doc_is_listed_in_the_index():
    index = (DOCS / "README.md").read_text()
    linked = {target.split("#")[0] for target in LINK.findall(index)}
    missing = [path.name for path in sorted(DOCS.glob("*.md"))
               if path.name != "README.md" and path.name not in linked]
    assert not missing, f"add a line for each to docs/README.md: {missing}"
    if (DOCS / "examples").is_dir():
        assert "examples/" in linked or "examples/README.md" in linked


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.name)
def test_relative_links_point_at_files_and_headings_that_exist(path):
    broken = []
    for target in LINK.findall(FENCE.sub("", path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file, _, fragment = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(target)
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: links to nothing: {broken}"


SHELL_FENCE = re.compile(r"^```(?:sh|bash|shell|console)[ \t]*\n(.*?)^```", re.M | re.S)
CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
GLOBAL_WITH_VALUE = {"--host", "--key", "--host-key", "--timeout"}


def zriver_commands(text: str):
    """Each ``zriver ...`` command in ``text``'s shell blocks (a line, or each part of a line
    joined by ``;``, ``&&``, ``|``) and in its inline code spans."""
    for block in SHELL_FENCE.findall(text):
        for line in block.splitlines():
            for part in re.split(r"\s*(?:;|&&|\|\||\|)\s*", line.strip()):
                part = part.removeprefix("$ ").strip()
                if part.startswith("zriver "):
                    yield part
    for span in CODE.findall(FENCE.sub("", text)):
        if span.startswith("zriver "):
            yield span


def verb_of(command: str) -> tuple[str, str]:
    """The two words after ``zriver`` and its global flags (``zriver --host H tasks`` ->
    ``("tasks", "")``)."""
    words = command.split()[1:]
    while words and words[0].startswith("-"):
        words = words[2:] if words[0] in GLOBAL_WITH_VALUE else words[1:]
    words = [w.rstrip(":,.") for w in words]
    return (words[0] if words else "", words[1] if len(words) > 1 else "")


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.name)
def test_commands_the_docs_show_are_verbs(path):
    """A ``zriver WORD`` the docs show is a registered verb (or ``WORD SUBWORD`` a two-word
    one): a verb renamed or removed fails here. Placeholders (``VERB``, ``<verb>``), bare
    global flags and internal names (``_keeper``, ``__complete``) are let through."""
    groups = {name.split()[0] for name in REGISTRY if " " in name}
    unknown = []
    for command in zriver_commands(path.read_text()):
        first, second = verb_of(command)
        if not first or first.startswith(("_", "<")) or first.isupper():
            continue
        if first in groups and f"{first} {second}" not in REGISTRY and first not in REGISTRY:
            if second and not second.startswith("-") and not second.isupper():
                unknown.append(command)
        elif first not in REGISTRY and first not in groups:
            unknown.append(command)
    assert not unknown, f"{path.relative_to(ROOT)} shows commands that are no verbs: {unknown}"
