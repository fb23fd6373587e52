"""The `evalloop` command line.

Each subcommand lives in its own module under `evalloop.commands` and exposes
``register(subparsers)``; the module adds its parser and sets ``func`` to a callable that takes the
parsed namespace and returns the process exit code. Modules are discovered, so adding a command
never means editing this file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

from evalloop import commands
from evalloop.failures import describe_failure


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every discovered subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="evalloop",
        description="Stream-native eval loop for LLM-powered recommender systems.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        register = getattr(module, "register", None)
        if callable(register):
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run the chosen subcommand.

    A failure prints one line (``evalloop.failures``) and a non-zero exit code, never a
    traceback; ``EVALLOOP_DEBUG=1`` re-raises instead.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        exit_code: int = func(args)
    except KeyboardInterrupt:
        print(f"evalloop {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if os.environ.get("EVALLOOP_DEBUG") == "1":
            raise
        failure = describe_failure(error)
        print(f"evalloop {args.command}: {failure.line}", file=sys.stderr)
        return failure.exit_code
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
