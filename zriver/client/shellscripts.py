"""The scripts of ``zriver completion bash|zsh|fish``, generated from the command registry.

``spec()`` reads the registry (and the global options of ``build_parser``) into plain data:
the verbs and sub-verbs with their summaries, each verb's flags with their help, which flags
take a value, the fixed values of flags with ``choices`` (or completion kind ``state``), and
which values are live: task ids, nodes and envs, which only the host knows.

``script(shell)`` bakes the static part into a script for that shell, so completing a verb or
a flag starts no Python. For a live value the script runs ``zriver __complete WORD...`` (the
words after ``zriver`` up to the cursor; see ``verbs_completion``), which answers with the
shell's own completion logic (``completion.candidates``), one ``WORD<TAB>DESCRIPTION`` a line,
within a second, and prints nothing when no host answers. Where nothing completes a word (a
path, a flag's free value, the task's own command after ``--``) the shell completes file names.
"""

from __future__ import annotations

from dataclasses import dataclass

from zriver import __version__
from zriver import lifecycle as lc
from zriver.client.registry import REGISTRY, Arg, build_parser, takes_value

SHELLS = ("bash",)
#: Completion kinds whose values are fixed (baked in); every other kind asks the host.
STATIC_KINDS = {"state": lc.ALL_STATES}
HELP_FLAG_HELP = "show this command's help"


@dataclass(frozen=True)
class Flag:
    """One option: every spelling (``forms``), the one offered (``name``: the longest)."""

    forms: tuple[str, ...]
    name: str
    help: str
    takes_value: bool
    choices: tuple[str, ...] = ()
    live: bool = False


@dataclass(frozen=True)
class Verb:
    """A verb (``"node drain"``): its flags, and whether a positional argument completes
    (from the host, or from ``choices``: ``zriver __complete`` works out which one it is)."""

    name: str
    summary: str
    flags: tuple[Flag, ...]
    positional: bool


@dataclass(frozen=True)
class Spec:
    """What the scripts know without a host."""

    verbs: dict[str, str]            # first word -> summary (a group: "node commands")
    groups: dict[str, dict[str, str]]  # group -> sub-verb -> summary
    commands: dict[str, Verb]        # full name -> verb
    global_flags: tuple[Flag, ...]


def _flag(item: Arg) -> Flag:
    choices = item.options.get("choices") or STATIC_KINDS.get(item.complete or "", ())
    value = takes_value(item)
    return Flag(item.flags, max(item.flags, key=len), str(item.options.get("help") or ""),
                value, tuple(str(c) for c in choices) if value else (),
                value and bool(item.complete) and item.complete not in STATIC_KINDS)


def _verb(name: str) -> Verb:
    cmd = REGISTRY[name]
    flags = [_flag(item) for item in cmd.args if item.flags[0].startswith("-")]
    flags.append(Flag(("-h", "--help"), "--help", HELP_FLAG_HELP, False))
    positional = any(item.complete or item.options.get("choices") for item in cmd.args
                     if not item.flags[0].startswith("-"))
    return Verb(name, cmd.summary, tuple(flags), positional)


def global_flags() -> tuple[Flag, ...]:
    """The options before the verb (``--host``, ``--timeout``...), from ``build_parser``."""
    found = []
    for action in build_parser()._actions:  # argparse has no public list of its options
        if action.option_strings:
            found.append(Flag(tuple(action.option_strings), max(action.option_strings, key=len),
                              str(action.help or ""), action.nargs != 0))
    return tuple(found)


def spec() -> Spec:
    """The registry as the scripts see it (every verb loaded)."""
    import zriver.client.commands  # noqa: F401  (it imports this module: loaded at call time)

    verbs: dict[str, str] = {}
    groups: dict[str, dict[str, str]] = {}
    for name, cmd in sorted(REGISTRY.items()):
        words = name.split()
        verbs[words[0]] = cmd.summary if len(words) == 1 else f"{words[0]} commands"
        if len(words) == 2:
            groups.setdefault(words[0], {})[words[1]] = cmd.summary
    return Spec(verbs, groups, {name: _verb(name) for name in sorted(REGISTRY)},
                global_flags())


def script(shell: str) -> str:
    """The completion script for ``shell`` (one of ``SHELLS``)."""
    makers = {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}
    if shell not in makers:
        raise ValueError(f"no completion for {shell!r}: choose one of {', '.join(SHELLS)}")
    return makers[shell](spec())


# ---- quoting ------------------------------------------------------------------------------
def sh_quote(text: str) -> str:
    """``text`` as one single-quoted bash/zsh word (``'`` becomes ``'\\''``)."""
    return "'" + text.replace("'", "'\\''") + "'"


def fish_quote(text: str) -> str:
    """``text`` as one single-quoted fish word (fish escapes ``\\`` and ``'`` inside)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _assoc(name: str, items: dict[str, str]) -> str:
    """A bash/zsh associative array assignment, one entry a line."""
    body = "".join(f"    [{sh_quote(key)}]={sh_quote(value)}\n" for key, value in items.items())
    return f"{name}=(\n{body})\n"


def _tables(data: Spec) -> dict[str, dict[str, str]]:
    """The per-verb lookups every script uses, as strings: flags offered, flags that take a
    value (every spelling, space-padded), choices and live values by ``"VERB FLAG"``, and
    ``live[VERB]`` when a positional argument completes."""
    flags, values, choices, live = {}, {}, {}, {}
    for name, verb in data.commands.items():
        flags[name] = " ".join(flag.name for flag in verb.flags)
        values[name] = " " + " ".join(form for flag in verb.flags if flag.takes_value
                                      for form in flag.forms) + " "
        for flag in verb.flags:
            for form in flag.forms:
                if flag.choices:
                    choices[f"{name} {form}"] = " ".join(flag.choices)
                if flag.live:
                    live[f"{name} {form}"] = "1"
        if verb.positional:
            live[name] = "1"
    return {"flags": flags, "values": values, "choices": choices, "live": live}


def _header(shell: str) -> str:
    return (f"# {shell} completion for zriver {__version__}, written by "
            f"`zriver completion {shell}` from its command registry.\n"
            f"# Verbs, flags and choices are baked in below; task ids, node names and envs\n"
            f"# come from the host through `zriver __complete` (at most about a second;\n"
            f"# nothing when no host answers).\n")


# ---- bash ---------------------------------------------------------------------------------
BASH_FUNCTIONS = r'''
# The words up to the cursor, split on blanks only (bash's own COMP_WORDS splits at : and =).
_zriver_line_words() {
    local line
    if [[ -n ${COMP_LINE+x} && -n ${COMP_POINT+x} ]]; then
        line=${COMP_LINE:0:COMP_POINT}
        read -ra _zriver_w <<<"$line"
        if [[ -z $line || $line == *[[:space:]] ]]; then _zriver_w+=(""); fi
    else
        _zriver_w=("${COMP_WORDS[@]:0:COMP_CWORD+1}")
    fi
}

# Live values: `zriver __complete WORD...` prints WORD<TAB>DESCRIPTION lines.
_zriver_ask() {
    local prog=$1 line
    shift
    while IFS= read -r line; do
        [[ -n $line ]] && COMPREPLY+=("${line%%$'\t'*}")
    done < <("$prog" __complete "$@" 2>/dev/null)
}

_zriver_static() {
    local IFS=$' \t\n'
    COMPREPLY+=($(compgen -W "$1" -- "$2"))
}

_zriver_files() {
    compopt -o default 2>/dev/null
}

_zriver_dispatch() {
    local prog=$1 cur=$2 n=$3 i=1 w cmd prev key
    while (( i < n )); do
        w=${_zriver_w[i]}
        [[ $w == -* ]] || break
        if [[ $w != *=* && $_zriver_global_values == *" $w "* ]]; then (( i++ )); fi
        (( i++ ))
    done
    if (( i > n )); then _zriver_files; return; fi
    if (( i == n )); then
        if [[ $cur == -* ]]; then _zriver_static "$_zriver_globals" "$cur"
        else _zriver_static "$_zriver_verbs" "$cur"; fi
        return
    fi
    cmd=${_zriver_w[i]}
    (( i++ ))
    if [[ -n ${_zriver_groups[$cmd]+x} ]]; then
        if (( i == n )); then _zriver_static "${_zriver_groups[$cmd]}" "$cur"; return; fi
        cmd="$cmd ${_zriver_w[i]}"
        (( i++ ))
    fi
    [[ -n ${_zriver_flags[$cmd]+x} ]] || return
    for w in "${_zriver_w[@]:i:n-i}"; do
        if [[ $w == -- ]]; then _zriver_files; return; fi
    done
    if (( n - 1 >= i )); then prev=${_zriver_w[n-1]}; fi
    if [[ -n $prev && $prev != *=* && ${_zriver_values[$cmd]} == *" $prev "* ]]; then
        key="$cmd $prev"
        if [[ -n ${_zriver_choices[$key]+x} ]]; then _zriver_static "${_zriver_choices[$key]}" "$cur"
        elif [[ -n ${_zriver_live[$key]+x} ]]; then _zriver_ask "$prog" "${_zriver_w[@]:1}"
        else _zriver_files; fi
        return
    fi
    if [[ $cur == -*=* ]]; then
        key="$cmd ${cur%%=*}"
        if [[ -n ${_zriver_choices[$key]+x} || -n ${_zriver_live[$key]+x} ]]; then
            _zriver_ask "$prog" "${_zriver_w[@]:1}"
        fi
        return
    fi
    if [[ $cur == -* ]]; then _zriver_static "${_zriver_flags[$cmd]}" "$cur"; return; fi
    if [[ -n ${_zriver_live[$cmd]+x} ]]; then _zriver_ask "$prog" "${_zriver_w[@]:1}"; fi
    if (( ${#COMPREPLY[@]} == 0 )); then
        if [[ -z $cur ]]; then _zriver_static "${_zriver_flags[$cmd]}" "$cur"; else _zriver_files; fi
    fi
}

# complete -F calls this with the command's name as $1.
_zriver() {
    local -a _zriver_w
    local cur bcur n i
    COMPREPLY=()
    _zriver_line_words
    n=$(( ${#_zriver_w[@]} - 1 ))
    cur=${_zriver_w[n]}
    _zriver_dispatch "${1:-zriver}" "$cur" "$n"
    # bash replaces only its own last word (after a : or =): drop what comes before it.
    bcur=${COMP_WORDS[COMP_CWORD]-$cur}
    if [[ $cur != "$bcur" && $cur == *"$bcur" ]]; then
        local prefix=${cur%"$bcur"}
        for i in "${!COMPREPLY[@]}"; do COMPREPLY[i]=${COMPREPLY[i]#"$prefix"}; done
    fi
}

complete -F _zriver zriver
'''


def bash_script(data: Spec) -> str:
    """Bash 4.2 or later (associative arrays); ``source`` it or put it in bash-completion's
    directory under the name ``zriver``."""
    tables = _tables(data)
    lines = [_header("bash"),
             "declare -gA _zriver_groups _zriver_flags _zriver_values _zriver_choices "
             "_zriver_live\n",
             f"_zriver_verbs={sh_quote(' '.join(data.verbs))}\n",
             f"_zriver_globals={sh_quote(' '.join(f.name for f in data.global_flags))}\n",
             "_zriver_global_values=" + sh_quote(" " + " ".join(
                 form for f in data.global_flags if f.takes_value for form in f.forms) + " ")
             + "\n",
             _assoc("_zriver_groups", {g: " ".join(subs) for g, subs in data.groups.items()})]
    lines += [_assoc(f"_zriver_{key}", table) for key, table in tables.items()]
    return "".join(lines) + BASH_FUNCTIONS


# ---- zsh ----------------------------------------------------------------------------------
def zsh_script(data: Spec) -> str:
    raise NotImplementedError


def fish_script(data: Spec) -> str:
    raise NotImplementedError
