"""`platform`: the parser (each command group adds its own commands) and the one place errors are printed."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
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


USAGE_ERROR = 2  # bad input or a named error before or instead of running; 1 is a campaign that ran and failed


INTERRUPTED = 130


def _terminate(signum, frame) -> None:
    """SIGTERM (timeout, systemd, a batch scheduler) stops a run as Ctrl-C does: cleanly, resumable."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    _quiet_dask(args.verbose)
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import DatabaseError

    from atomscreen.campaign import CampaignError

    try:
        return args.func(args)
    except CampaignError as exc:
        err.print(str(exc), markup=False)
    except AtomscreenError as exc:
        err.print(f"error: {exc}", markup=False)
        return getattr(exc, "exit_code", USAGE_ERROR)
    except DatabaseError as exc:  # connection refused, locked, not a database, a bad LIMIT, ...
        err.print(f"database error: {str(exc.orig or exc).strip()}", markup=False)
    except CommandError as exc:  # alembic: e.g. an unknown revision
        err.print(f"error: {exc}", markup=False)
    except OSError as exc:  # a path that cannot be read or written
        err.print(f"error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", markup=False)
    except KeyboardInterrupt as exc:
        err.print(f"interrupted ({exc or 'Ctrl-C'}): tasks in flight are pending again; `platform status` shows the "
                  "campaign and `platform resume NAME` continues it", markup=False)
        return INTERRUPTED
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
