"""What every command shares: the consoles, the --db and cluster options, opening the database, the CLI's error.

Imports of heavy modules (torch, Dask, pymatgen) stay inside the commands that need them, so `platform --help` and
`platform validate` start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import re

from rich.console import Console

from atomscreen.errors import AtomscreenError
from atomscreen.store.engine import make_engine, resolve_url, sqlite_path, transaction

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DB_HELP = "database URL (default: $ATOMSCREEN_DB, else sqlite:///atomscreen.db); a plain path means a SQLite file"


class CLIError(AtomscreenError):
    """An error to print as one clear line, with exit code 1."""


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text}")
    return value


def add_db_option(parser: argparse.ArgumentParser, extra: str = "") -> None:
    parser.add_argument("--db", help=DB_HELP + extra)


def scheduler_address(text: str) -> str:
    """argparse type: a Dask scheduler address, checked as a campaign's cluster.scheduler is."""
    if not re.fullmatch(r"(tcp|tls|inproc|ucx|ws|wss)://\S+:\d+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a scheduler address such as tcp://host:8786 (schemes: tcp, "
                                         "tls, ws, wss, ucx, inproc; the port is required)")
    return text


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scheduler", type=scheduler_address,
                        help="address of a running Dask scheduler, e.g. tcp://host:8786 (default: a LocalCluster)")
    parser.add_argument("--dashboard-address", default=":8787",
                        help="LocalCluster dashboard address (default :8787, on 127.0.0.1 only; give a host, e.g. "
                             "0.0.0.0:8787, to listen elsewhere)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def open_engine(url: str, *, must_exist: bool):
    """An engine on ``url``; a SQLite file that must exist and does not is an error naming the fix."""
    path = sqlite_path(url)
    if path is not None:
        if must_exist and not path.exists():
            raise CLIError(f"no database at {path}; create it with: platform db upgrade --db {url}")
        path.parent.mkdir(parents=True, exist_ok=True)
    return make_engine(url)


def redact(url: str) -> str:
    """The URL with its password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def require_head(engine) -> None:
    from atomscreen.store import migrate

    migrate.require_head(engine)


def campaign_engine(args: argparse.Namespace):
    """The engine of ``--db`` at the newest schema, holding campaign ``args.name`` (else a CLIError)."""
    from atomscreen.store import get_campaign

    engine = open_engine(resolve_url(args.db), must_exist=True)
    require_head(engine)
    with transaction(engine) as session:
        if get_campaign(session, args.name) is None:
            raise CLIError(f"no campaign named {args.name!r} in {redact(str(engine.url))}")
    return engine


def wide(width: int) -> Console:
    """The output console, or one ``width`` columns wide when piped (rich would wrap tables at 80)."""
    return out if out.is_terminal else Console(highlight=False, width=width)
