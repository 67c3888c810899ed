"""The `submodel` console script: one subcommand per job, each registered by its package."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Each module exposes register(subparsers); its parsers set `func(args) -> int`.
COMMAND_MODULES = (
    "submodel.pruning.cli",  # prune, remove-language, info
    "submodel.server.cli",  # serve, generate
    "submodel.router.cli",  # route
    "submodel.bench.cli",  # bench
)


class CLIError(Exception):
    """A user error: printed as one line, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="submodel",
        description="Per-language pruned sub-models of one code LLM, served from one copy "
        "of its dense weights.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before torch's first allocation (it reads this once): allocations of 2 MiB and more are
    # aligned and madvised for transparent huge pages, where the kernel leaves THP to madvise.
    # A decode step streams every weight once; with 4 KiB pages each 4 KiB of it costs a TLB
    # walk (int8 Linears of a step from DRAM, AMD EPYC at ~79 GB/s: 7.2 -> 6.3 ms).
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"submodel {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"submodel {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # `python -m submodel.cli`: use the importable module's classes
    from submodel.cli import main as package_main

    sys.exit(package_main())
