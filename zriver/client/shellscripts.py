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

SHELLS = ("bash", "zsh", "fish")
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
    if [[ -n ${_zriver_live[$cmd]+x} ]]; then
        _zriver_ask "$prog" "${_zriver_w[@]:1}"
        if (( ${#COMPREPLY[@]} == 0 )) && [[ -z $cur ]]; then
            _zriver_static "${_zriver_flags[$cmd]}" "$cur"
        fi
    elif [[ -z $cur ]]; then _zriver_static "${_zriver_flags[$cmd]}" "$cur"
    else _zriver_files; fi
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
ZSH_FUNCTIONS = r"""
# Live values: `zriver __complete WORD...` prints WORD<TAB>DESCRIPTION lines.
_zriver_ask() {
    local -a lines items
    local line word
    lines=("${(@f)$("$@" 2>/dev/null)}")
    for line in $lines; do
        [[ -n $line ]] || continue
        word=${line%%$'\t'*}
        word=${word//:/\\:}
        if [[ $line == *$'\t'* ]]; then items+=("$word:${line#*$'\t'}"); else items+=("$word"); fi
    done
    (( $#items )) && _describe -t values 'value' items
}

_zriver_offer() {
    local -a items
    items=("${(@f)2}")
    _describe -t "$1" "$1" items
}

_zriver() {
    local -a ws items
    ws=("${(@Q)words[1,CURRENT]}")
    local n=$#ws cur=${(Q)words[CURRENT]} i=2 w cmd prev key prog=${(Q)words[1]}
    while (( i < n )); do
        w=${ws[i]}
        [[ $w == -* ]] || break
        if [[ $w != *=* && $_zriver_global_values == *" $w "* ]]; then (( i++ )); fi
        (( i++ ))
    done
    if (( i > n )); then _files; return; fi
    if (( i == n )); then
        if [[ $cur == -* ]]; then _zriver_offer options "$_zriver_globals"
        else _zriver_offer verbs "$_zriver_verbs"; fi
        return
    fi
    cmd=${ws[i]}
    (( i++ ))
    if (( ${+_zriver_groups[$cmd]} )); then
        if (( i == n )); then _zriver_offer verbs "${_zriver_groups[$cmd]}"; return; fi
        cmd="$cmd ${ws[i]}"
        (( i++ ))
    fi
    (( ${+_zriver_flags[$cmd]} )) || return 1
    for w in "${(@)ws[i,n-1]}"; do
        if [[ $w == -- ]]; then _files; return; fi
    done
    if (( n - 1 >= i )); then prev=${ws[n-1]}; fi
    if [[ -n $prev && $prev != *=* && ${_zriver_values[$cmd]} == *" $prev "* ]]; then
        key="$cmd $prev"
        if (( ${+_zriver_choices[$key]} )); then
            items=(${=_zriver_choices[$key]})
            compadd -a items
        elif (( ${+_zriver_live[$key]} )); then _zriver_ask "$prog" __complete "${(@)ws[2,n]}"
        else _files; fi
        return
    fi
    if [[ $cur == -*=* ]]; then
        key="$cmd ${cur%%=*}"
        if (( ${+_zriver_choices[$key]} || ${+_zriver_live[$key]} )); then
            _zriver_ask "$prog" __complete "${(@)ws[2,n]}"
        fi
        return
    fi
    if [[ $cur == -* ]]; then _zriver_offer options "${_zriver_flags[$cmd]}"; return; fi
    if (( ${+_zriver_live[$cmd]} )); then
        _zriver_ask "$prog" __complete "${(@)ws[2,n]}" && return
        [[ -z $cur ]] && _zriver_offer options "${_zriver_flags[$cmd]}"
    elif [[ -z $cur ]]; then _zriver_offer options "${_zriver_flags[$cmd]}"
    else _files; fi
}

# From a file in $fpath (autoloaded): complete now; sourced: register with compinit.
if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then
    _zriver "$@"
else
    compdef _zriver zriver
fi
"""


def _described(items: list[tuple[str, str]]) -> str:
    """``word:description`` lines, as ``_describe`` reads them (``:`` in a word escaped)."""
    return "\n".join(f"{word.replace(':', chr(92) + ':')}:{_one_line(help)}" if help else word
                     for word, help in items)


def zsh_script(data: Spec) -> str:
    """A ``#compdef`` file: put it in a directory of ``$fpath`` as ``_zriver`` (compinit
    autoloads it), or ``source`` it after ``compinit``. Descriptions are shown."""
    tables = _tables(data)
    tables["flags"] = {name: _described([(f.name, f.help) for f in verb.flags])
                       for name, verb in data.commands.items()}
    lines = ["#compdef zriver\n", _header("zsh"),
             "typeset -gA _zriver_groups _zriver_flags _zriver_values _zriver_choices "
             "_zriver_live\n",
             f"typeset -g _zriver_verbs={sh_quote(_described(list(data.verbs.items())))}\n",
             "typeset -g _zriver_globals=" + sh_quote(_described(
                 [(f.name, f.help) for f in data.global_flags])) + "\n",
             "typeset -g _zriver_global_values=" + sh_quote(" " + " ".join(
                 form for f in data.global_flags if f.takes_value for form in f.forms) + " ")
             + "\n",
             _assoc("_zriver_groups", {g: _described(list(subs.items()))
                                       for g, subs in data.groups.items()})]
    lines += [_assoc(f"_zriver_{key}", table) for key, table in tables.items()]
    return "".join(lines) + ZSH_FUNCTIONS


# ---- fish ---------------------------------------------------------------------------------
FISH_FUNCTIONS = r"""
# Live values: `zriver __complete WORD...` prints WORD<TAB>DESCRIPTION lines.
function __zriver_ask
    $argv[1] __complete $argv[2..-1] 2>/dev/null
end

function __zriver_complete
    set -l ws (commandline -opc)
    set -l cur (commandline -ct)
    set -l n (math (count $ws) + 1)
    set -l i 2
    while test $i -lt $n
        set -l w $ws[$i]
        string match -q -- '-*' $w; or break
        if not string match -q -- '*=*' $w; and contains -- $w $__zriver_global_values
            set i (math $i + 1)
        end
        set i (math $i + 1)
    end
    if test $i -gt $n
        __fish_complete_path $cur
        return
    end
    if test $i -eq $n
        if string match -q -- '-*' $cur
            printf '%s\n' $__zriver_globals
        else
            printf '%s\n' $__zriver_verbs
        end
        return
    end
    set -l cmd $ws[$i]
    set i (math $i + 1)
    if set -l subs (__zriver_group $cmd)
        if test $i -eq $n
            printf '%s\n' $subs
            return
        end
        set cmd "$cmd $ws[$i]"
        set i (math $i + 1)
    end
    set -l flags (__zriver_flags $cmd); or return
    set -l last (math $n - 1)
    if test $i -le $last; and contains -- -- $ws[$i..$last]
        __fish_complete_path $cur
        return
    end
    set -l prev
    test $i -le $last; and set prev $ws[$last]
    if test -n "$prev"; and not string match -q -- '*=*' $prev; and contains -- $prev (__zriver_values $cmd)
        set -l key "$cmd $prev"
        if set -l values (__zriver_choices $key)
            printf '%s\n' $values
        else if __zriver_live $key
            __zriver_ask $ws $cur
        else
            __fish_complete_path $cur
        end
        return
    end
    if string match -q -- '-*=*' $cur
        set -l key "$cmd "(string split -m 1 = -- $cur)[1]
        if __zriver_choices $key >/dev/null; or __zriver_live $key
            __zriver_ask $ws $cur
        end
        return
    end
    if string match -q -- '-*' $cur
        printf '%s\n' $flags
        return
    end
    if __zriver_live $cmd
        set -l found (__zriver_ask $ws $cur)
        if set -q found[1]
            printf '%s\n' $found
        else if test -z "$cur"
            printf '%s\n' $flags
        end
    else if test -z "$cur"
        printf '%s\n' $flags
    else
        __fish_complete_path $cur
    end
end

complete -c zriver -e
complete -c zriver -f -k -a '(__zriver_complete)'
"""


def _fish_described(items: list[tuple[str, str]]) -> str:
    """Words ``WORD<TAB>DESCRIPTION`` (fish shows the description), one fish word each."""
    return " ".join(fish_quote(word) + (r"\t" + fish_quote(_one_line(help)) if help else "")
                    for word, help in items)


def _fish_switch(name: str, cases: dict[str, str], found: str) -> str:
    """A function ``name KEY`` that runs ``found`` with each case's words (status 1: none)."""
    body = "".join(f"        case {fish_quote(key)}\n            {found} {words}\n"
                   for key, words in cases.items())
    return (f"function {name}\n    switch $argv[1]\n{body}        case '*'\n"
            f"            return 1\n    end\nend\n")


def fish_script(data: Spec) -> str:
    """Put it in ``~/.config/fish/completions/zriver.fish`` (or ``source`` it)."""
    tables = _tables(data)
    flags = {name: _fish_described([(f.name, f.help) for f in verb.flags])
             for name, verb in data.commands.items()}
    values = {name: " ".join(fish_quote(w) for w in forms.split()) or "''"
              for name, forms in tables["values"].items()}
    choices = {key: " ".join(fish_quote(w) for w in words.split())
               for key, words in tables["choices"].items()}
    groups = {g: _fish_described(list(subs.items())) for g, subs in data.groups.items()}
    lines = [_header("fish"),
             f"set -g __zriver_verbs {_fish_described(list(data.verbs.items()))}\n",
             "set -g __zriver_globals "
             + _fish_described([(f.name, f.help) for f in data.global_flags]) + "\n",
             "set -g __zriver_global_values " + " ".join(
                 fish_quote(form) for f in data.global_flags if f.takes_value
                 for form in f.forms) + "\n",
             _fish_switch("__zriver_group", groups, "printf '%s\\n'"),
             _fish_switch("__zriver_flags", flags, "printf '%s\\n'"),
             _fish_switch("__zriver_values", values, "printf '%s\\n'"),
             _fish_switch("__zriver_choices", choices, "printf '%s\\n'"),
             _fish_switch("__zriver_live", {key: "" for key in tables["live"]}, "return 0")]
    return "".join(lines) + FISH_FUNCTIONS
