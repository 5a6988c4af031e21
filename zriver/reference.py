"""The generated references: ``docs/cli.md`` from the command registry, ``docs/config.md``
from the settings classes of ``zriver.config``, and the roles table of ``docs/security.md``
(between its marker lines) from the host's op table.

``python -m zriver.reference`` writes them; ``--check`` writes nothing and exits 1 naming each
file that differs from what the code gives now (CI runs it through ``tests/test_reference.py``).

The output depends on the code only: no dates, no paths of the machine, verbs and keys in a
fixed order, and usage lines wrapped here at ``WIDTH`` (argparse would wrap at the terminal's
width), so two machines always produce the same bytes.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import sys
import textwrap
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Callable, Iterable

from zriver import config as cfg

WIDTH = 88
"""Where usage lines are wrapped."""
DOCS = Path(__file__).resolve().parent.parent / "docs"
"""The docs directory of a source checkout."""


# ---------------------------------------------------------------- docs/cli.md

def is_hidden(name: str, command: Any) -> bool:
    """Whether verb ``name`` is left out of the reference: internal names start with ``_``;
    a command may also say ``hidden`` (or a summary of ``argparse.SUPPRESS``)."""
    return (name.startswith("_") or bool(getattr(command, "hidden", False))
            or command.summary == argparse.SUPPRESS)


def public_verbs() -> dict[str, Any]:
    """Every registered verb that users see, by name (all verbs loaded)."""
    from zriver.client.commands import REGISTRY

    return {name: cmd for name, cmd in sorted(REGISTRY.items()) if not is_hidden(name, cmd)}


def verb_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``"init config"`` -> its sub-parser, for every verb of ``build_parser()``'s parser."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(node: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
        for action in node._actions:
            if isinstance(action, argparse._SubParsersAction):
                for word, sub in action.choices.items():
                    walk(sub, words + (word,))
        if words:
            found[" ".join(words)] = node

    walk(parser, ())
    return found


def metavar(action: argparse.Action) -> str:
    """What stands for an option's or a positional's value in a usage line."""
    if action.metavar is not None:
        return action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def positional_usage(action: argparse.Action) -> str:
    name = metavar(action)
    return {None: name, "?": f"[{name}]", "*": f"[{name} ...]", "+": f"{name} [{name} ...]",
            argparse.REMAINDER: f"[-- {name.upper()} ...]"}.get(action.nargs, name)


def invocation(action: argparse.Action) -> str:
    """``--cores CORES``, ``--output, -o FILE``, ``ID [ID ...]``: the argument as the reference
    shows it (its value named once)."""
    if not action.option_strings:
        return positional_usage(action)
    value = f" {metavar(action)}" if takes_value(action) else ""
    return ", ".join(action.option_strings) + value


def documented_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's arguments the reference lists: all but ``-h`` and sub-verb choosers."""
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
            and a.help != argparse.SUPPRESS]


def usage_line(prog: str, parser: argparse.ArgumentParser) -> str:
    """``prog [--flag VALUE] ... POSITIONAL``, wrapped at ``WIDTH`` (options first, then the
    positionals, as argparse shows them)."""
    options, positionals = [], []
    for action in documented_actions(parser):
        if action.option_strings:
            text = action.option_strings[0] + (f" {metavar(action)}" if takes_value(action) else "")
            options.append(text if action.required else f"[{text}]")
        else:
            positionals.append(positional_usage(action))
    return wrap_words([prog] + options + positionals)


def wrap_words(parts: list[str], indent: str = "    ") -> str:
    """``parts`` joined by spaces into lines of at most ``WIDTH`` (a part is never split;
    lines after the first are indented)."""
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 1 + len(part) > WIDTH:
            lines.append(indent + part)
        else:
            lines[-1] += " " + part
    return "\n".join(lines)


CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def cell(text: str) -> str:
    """Text fit for one Markdown table cell: ``prose`` on one line, with ``|`` escaped."""
    return prose(" ".join(str(text).split()).replace("|", "\\|"))


def prose(text: str) -> str:
    """``text`` with ``<`` and ``>`` escaped outside code spans (``<role>`` would otherwise
    vanish as an HTML tag)."""
    parts, end = [], 0
    for span in CODE_SPAN.finditer(text):
        parts += [_escape_angles(text[end:span.start()]), span.group(0)]
        end = span.end()
    return "".join(parts + [_escape_angles(text[end:])])


def code_cell(text: str) -> str:
    """``text`` as a code span in a table cell (only ``|`` escaped)."""
    return "`" + " ".join(text.split()).replace("|", "\\|") + "`"


def _escape_angles(text: str) -> str:
    return text.replace("<", "&lt;").replace(">", "&gt;")


def default_text(action: argparse.Action) -> str:
    """The default worth showing (none for switches, empty values and lists)."""
    value = action.default
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                           argparse._StoreConstAction, argparse._VersionAction)):
        return ""
    if value is None or value == "" or value == [] or value is argparse.SUPPRESS:
        return ""
    return f"`{value}`"


def flag_table(actions: Iterable[argparse.Action]) -> list[str]:
    rows = ["| Argument | Default | Meaning |", "|---|---|---|"]
    expand = argparse.HelpFormatter("zriver")._expand_help  # %(default)s, %%, as -h shows
    for action in actions:
        meaning = expand(action) if action.help else ""
        if action.choices is not None and not isinstance(action.choices, dict):
            meaning += " (one of: " + ", ".join(f"`{c}`" for c in action.choices) + ")"
        if isinstance(action, argparse._AppendAction) and "repeatable" not in meaning:
            meaning += " (repeatable)"
        rows.append(f"| {code_cell(invocation(action))} | {cell(default_text(action))} | "
                    f"{cell(meaning)} |")
    return rows


def anchor(title: str) -> str:
    """The anchor GitHub makes of a heading (lower case, spaces to dashes, most punctuation
    dropped)."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def render_cli() -> str:
    """The text of ``docs/cli.md``."""
    from zriver import cli
    from zriver.client.commands import build_parser

    parser = build_parser()
    parsers = verb_parsers(parser)
    verbs = public_verbs()
    out = ["# Command-line reference", "",
           "<!-- Generated by `python -m zriver.reference` from the command registry; do not "
           "edit. -->", "",
           f"{parser.description} Every verb below also works inside `zriver shell`, without "
           "the leading `zriver`; `zriver VERB -h` prints the same help.", "",
           "```", usage_line("zriver", _globals_only(parser)) + " VERB ...", "```", "",
           "| Verb | What it does |", "|---|---|"]
    out += [f"| [`{name}`](#{anchor('zriver ' + name)}) | {cell(cmd.summary)} |"
            for name, cmd in verbs.items()]
    out += ["", "## Global flags", "",
            "They go before the verb (`zriver --host HOST tasks`).", ""]
    out += flag_table(documented_actions(_globals_only(parser)))
    out += ["", "## Exit status", "", prose(_docstring_paragraph(cli.__doc__, "Exit status")), ""]
    for name, cmd in verbs.items():
        out += render_verb(name, cmd, parsers[name])
    return "\n".join(out).rstrip("\n") + "\n"


def _globals_only(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A copy of the top parser's global flags, without the verbs."""
    copy = argparse.ArgumentParser(prog=parser.prog, add_help=False)
    for action in parser._actions:
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            copy._add_action(action)
    return copy


def _docstring_paragraph(doc: str | None, starts: str) -> str:
    """The paragraph of ``doc`` that begins with ``starts``, unwrapped."""
    for paragraph in inspect.cleandoc(doc or "").split("\n\n"):
        if paragraph.startswith(starts):
            return " ".join(paragraph.split())
    raise LookupError(f"no paragraph starting {starts!r}")


def render_verb(name: str, cmd: Any, parser: argparse.ArgumentParser) -> list[str]:
    out = [f"## zriver {name}", "", cmd.summary[:1].upper() + cmd.summary[1:] + ".", ""]
    description = inspect.cleandoc(cmd.description or "")
    if description and description.rstrip(".") != cmd.summary.rstrip("."):
        out += [prose(description), ""]
    if not cmd.needs_cluster:
        out += ["Works without a running cluster.", ""]
    out += ["```", usage_line(f"zriver {name}", parser), "```", ""]
    actions = documented_actions(parser)
    if actions:
        out += flag_table(actions) + [""]
    return out


# ---------------------------------------------------------------- docs/config.md

SETTINGS = (
    (cfg.HostSettings, "host.toml", "`zriver host --config FILE` and `zriver up`",
     cfg.HOST_RANGES, cfg.HOST_CHOICES),
    (cfg.RunnerSettings, "runner.toml", "`zriver runner --config FILE` and `zriver up`",
     cfg.RUNNER_RANGES, {}),
    (cfg.ClientSettings, "client.toml", "every client verb", {}, {}),
)
"""Each settings class, its default file under ``$ZRIVER_HOME``, who reads it, its ranges
and its choices."""


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal right below it in the class body)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def toml_value(value: Any) -> str:
    """``value`` as TOML writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def range_text(bounds: tuple) -> str:
    """What ``check_ranges`` accepts for ``bounds``, in words."""
    if bounds == cfg.POSITIVE:
        return "more than 0"
    low, high = bounds
    if bounds is cfg.PORT_OR_OFF:
        return f"a port, {low} to {high} (-1: off)"
    if bounds == cfg.PORT:
        return f"a port, {low} to {high}"
    return f"{low} to {high}" if high is not None else f"at least {low}"


def default_of(item: Any) -> Any:
    return item.default_factory() if item.default is MISSING else item.default


def render_config() -> str:
    """The text of ``docs/config.md``."""
    out = ["# Configuration reference", "",
           "<!-- Generated by `python -m zriver.reference` from zriver/config.py; do not "
           "edit. -->", "",
           prose(" ".join(inspect.cleandoc(cfg.__doc__ or "").split("\n\n")[1].split())), "",
           "`zriver init config --host` (`--runner`, `--client`) writes a commented file with "
           "every key at its default. Durations are seconds unless a key says otherwise.", ""]
    out += [f"* [`{name}`](#{anchor(name)}): {who}" for _, name, who, _, _ in SETTINGS]
    out.append("")
    for cls, name, who, ranges, choices in SETTINGS:
        out += render_settings(cls, name, who, ranges, choices)
    return "\n".join(out).rstrip("\n") + "\n"


def render_settings(cls: type, name: str, who: str, ranges: dict, choices: dict) -> list[str]:
    docs = field_docs(cls)
    out = [f"## {name}", "", prose(" ".join(inspect.cleandoc(cls.__doc__ or "").split())), "",
           f"Read by {who}; default file `$ZRIVER_HOME/{name}`.", "",
           "| Key | Type | Default | Allowed | Meaning |", "|---|---|---|---|---|"]
    for item in fields(cls):
        allowed = []
        if item.name in ranges:
            allowed.append(range_text(ranges[item.name]))
        if item.name in choices:
            allowed.append(", ".join(f"`{c}`" for c in choices[item.name]))
        default = code_cell(toml_value(default_of(item)))
        out.append(f"| `{item.name}` | {cell(item.type)} | {default} "
                   f"| {cell('; '.join(allowed))} | {cell(docs.get(item.name, ''))} |")
    return out + [""]


# ---------------------------------------------------------------- docs/security.md, roles

ROLES_BEGIN = ("<!-- roles table: generated by `python -m zriver.reference` from the host's op "
               "table; do not edit -->")
ROLES_END = "<!-- end of the roles table -->"


def op_table() -> Any:
    """The op table a host builds (core ops, ``task.follow``, every extension's), made by
    constructing a ``Host`` that is never started (it opens and writes nothing)."""
    from zriver.host.service import Host

    return Host(cfg.HostSettings(data_dir="unused")).ops


def role_rows(ops: Iterable[Any]) -> list[str]:
    """One row per (op family, roles): the ops of a family the same roles may call."""
    from zriver.principal import ADMIN, RUNNER, USER

    groups: dict[tuple[frozenset, str], list[str]] = {}
    for op in ops:
        groups.setdefault((op.roles, op.name.split(".")[0]), []).append(op.name)

    def order(key: tuple[frozenset, str]) -> tuple:
        roles, family = key
        return (RUNNER in roles and len(roles) == 1, USER not in roles, len(roles) < 3, family)

    rows = ["| ops | runner | user | admin |", "|---|---|---|---|"]
    for key in sorted(groups, key=order):
        names = ", ".join(f"`{name}`" for name in sorted(groups[key]))
        marks = " | ".join("yes" if role in key[0] else "no" for role in (RUNNER, USER, ADMIN))
        rows.append(f"| {names} | {marks} |")
    return rows


def render_security(current: str | None) -> str:
    """``docs/security.md`` with the roles table between its markers made anew."""
    if current is None or ROLES_BEGIN not in current or ROLES_END not in current:
        raise LookupError(f"docs/security.md needs the lines {ROLES_BEGIN!r} and {ROLES_END!r}")
    head, rest = current.split(ROLES_BEGIN, 1)
    _, tail = rest.split(ROLES_END, 1)
    return "\n".join([head + ROLES_BEGIN, *role_rows(op_table()), ROLES_END]) + tail


# ---------------------------------------------------------------- writing and checking

OUTPUTS: dict[str, Callable[[str | None], str]] = {
    "cli.md": lambda current: render_cli(),
    "config.md": lambda current: render_config(),
    "security.md": render_security,
}
"""Each generated file under ``docs/`` and what renders it from the file's current text (a
file generated only in part keeps the rest)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zriver.reference",
                                     description="write (or --check) the generated docs")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming each file that is out of date")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the docs directory")
    args = parser.parse_args(argv)
    stale = []
    for name, render in OUTPUTS.items():
        path = args.docs / name
        current = path.read_text() if path.exists() else None
        text = render(current)
        if current == text:
            continue
        if args.check:
            stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote docs/{name}")
    for name in stale:
        print(f"docs/{name} is out of date: run python -m zriver.reference", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
