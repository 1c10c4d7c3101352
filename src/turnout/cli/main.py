"""``turnout`` command line: the only place that reads argv.

Each command lives in its own module exposing ``register(subparsers)``; the
module is imported lazily so that ``turnout --help`` stays fast and a missing
optional extra only breaks the command that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from turnout import __version__
from turnout.errors import TurnoutError

#: command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("turnout.cli.data", "inspect and convert routing tables"),
    "eval": ("turnout.cli.eval", "train and compare routers on a routing table"),
    "train": ("turnout.cli.train", "fit a router and save the artifact a route points at"),
    "add-model": ("turnout.cli.add_model", "add a model to a trained profile router from a few probe outcomes"),
    "serve": ("turnout.cli.serve", "run the OpenAI-compatible routing server"),
    "logs": ("turnout.cli.logs", "tail, filter and export the request log"),
    "guards": ("turnout.cli.guards", "measure the guards (domain, jailbreak, pii, cache) on labelled data"),
    "signals": ("turnout.cli.signals", "train the learned request signals (domain, jailbreak)"),
}
#: sub-commands with a module of their own, which then registers the whole command (``turnout eval offpolicy``)
SUBCOMMANDS: dict[tuple[str, str], str] = {("eval", "offpolicy"): "turnout.cli.offpolicy"}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turnout", description="Send every LLM request to the right model.")
    parser.add_argument("--version", action="version", version=f"turnout {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only import the module of the command actually asked for; list the others by name.
    wanted = next((a for a in argv if not a.startswith("-")), None)
    nested = SUBCOMMANDS.get((argv[0], argv[1])) if len(argv) >= 2 else None
    for name, (module, help_text) in COMMANDS.items():
        if name == wanted:
            importlib.import_module(nested if nested is not None and name == argv[0] else module).register(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


@contextmanager
def _plain_warnings(command: str) -> Iterator[None]:
    """Warnings that turnout itself raises (bad rows skipped, costs estimated) print as one line a user reads:
    ``turnout eval: warning: ...``, not Python's file-and-source-line format. Others are left as they are."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if str(Path(filename).resolve()).startswith(_PACKAGE_DIR) and issubclass(category, UserWarning):
            print(f"turnout {command}: warning: {message}", file=sys.stderr if file is None else file)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = default


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if not argv else 2
    try:
        with _plain_warnings(args.command):
            return int(args.func(args) or 0)
    except TurnoutError as exc:
        print(f"turnout {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
