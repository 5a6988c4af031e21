"""The ``zriver`` executable: parse the command line with the registry and run the verb.

Exit status: the verb's own (``submit --wait`` passes the task's through), 1 for a zriver
error (printed as ``zriver: <code>: <message>`` on stderr; a role refused because its data
directory is in use prints ``zriver: <message>``), 2 for a usage error, 130 on Ctrl-C.
"""

from __future__ import annotations

import sys

SERVER_VERBS = {"up", "host", "runner"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_keeper"]:  # the node's task keeper, started by a runner (not a verb)
        from zriver.runner.keeper import main as keeper_main

        return keeper_main(argv[1:])
    if argv[:1] == ["__complete"]:  # live values for the completion scripts (not a verb)
        from zriver.client.verbs_completion import hidden_complete

        return hidden_complete(argv[1:])
    if argv == ["--version"]:  # what the parser's version action prints, without building it
        from zriver import __version__

        print(f"zriver {__version__}")
        return 0
    # Imported here, not at the top: the keeper and `--version` need none of it.
    from zriver import logsetup
    from zriver.client.commands import build_parser
    from zriver.client.registry import Context
    from zriver.dirlock import DirectoryInUse
    from zriver.errors import ZriverError

    parser = build_parser()
    args = parser.parse_args(argv)
    command = getattr(args, "_command", None)
    if command is None:
        parser.print_help()
        return 2
    if command.name in SERVER_VERBS:
        logsetup.configure(args.log_json, "info")
    else:  # most client verbs never log: structlog is imported only by those that do
        logsetup.configure_when_imported(args.log_json, "warning")
    ctx = Context(host=args.host, timeout=args.timeout, log_json=args.log_json, key=args.key,
                  host_key=args.host_key)
    try:
        return command.run(ctx, args)
    except DirectoryInUse as exc:
        print(f"zriver: {exc}", file=sys.stderr)
        return 1
    except ZriverError as exc:
        print(f"zriver: {exc.code}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    finally:
        ctx.close()
