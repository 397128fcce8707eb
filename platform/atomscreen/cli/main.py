"""`platform`: the parser (each command group adds its own commands) and the one place errors are printed."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

import atomscreen
from atomscreen.cli import campaigns, report, results, tools
from atomscreen.cli.common import err
from atomscreen.errors import AtomscreenError

GROUPS = (campaigns, tools, results, report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="platform", description="atomscreen: high-throughput screening of molecules "
                                                                  "and crystals")
    parser.add_argument("--version", action="version", version=f"atomscreen {atomscreen.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (and Dask's INFO lines)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(commands)
    return parser


def _quiet_dask(verbose: bool) -> None:
    """Dask logs every connection at INFO: keep the terminal for progress unless -v. Its loggers are configured when
    distributed is imported (here and in worker processes), so the level goes through its config variable too."""
    level = "info" if verbose else "warning"
    os.environ["DASK_LOGGING__DISTRIBUTED"] = level
    for name in ("distributed", "dask"):
        logging.getLogger(name).setLevel(level.upper())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    _quiet_dask(args.verbose)
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from atomscreen.campaign import CampaignError

    try:
        return args.func(args)
    except CampaignError as exc:
        err.print(str(exc), markup=False)
    except AtomscreenError as exc:
        err.print(f"error: {exc}", markup=False)
    except (OperationalError, ProgrammingError) as exc:
        err.print(f"database error: {exc.orig or exc}", markup=False)
    return 1


if __name__ == "__main__":
    sys.exit(main())
