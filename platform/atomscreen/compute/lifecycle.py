"""A campaign's record across runs: recorded, resumed with the same spec, replaced while it has no results yet,
marked interrupted so that `platform resume` continues it."""

from __future__ import annotations

from pathlib import Path

import yaml
from sqlalchemy.engine import Engine

from atomscreen.compute.progress import Reporter, RunnerError
from atomscreen.store import (
    add_campaign,
    campaign_summaries,
    delete_campaign,
    get_campaign,
    reset_running,
    retry,
    spec_hash,
    transaction,
)


def same_spec(stored: str, submitted: str) -> bool:
    """Equal as YAML documents: comments and layout may change, content may not."""
    return stored == submitted or yaml.safe_load(stored) == yaml.safe_load(submitted)


def without_password(text: str) -> str:
    """The campaign text with the password of its ``database:`` URL replaced by *** (never stored in the record)."""
    from sqlalchemy.engine import make_url

    try:
        url = (yaml.safe_load(text) or {}).get("database")
        if not isinstance(url, str) or make_url(url).password is None:
            return text
        return text.replace(url, make_url(url).render_as_string(hide_password=True))
    except Exception:  # not a URL SQLAlchemy parses: validation has refused it already
        return text


def record_campaign(session, name: str, text: str, path: Path, reporter: Reporter) -> tuple[int, bool]:
    """The campaign's id, and whether it was recorded now: new, or replacing one whose first run stopped before any
    result (a bad checkpoint, data set or scheduler, then a corrected file); else already recorded with this spec
    (resumed). The text is stored without the database password."""
    text = without_password(text)
    row = get_campaign(session, name)
    if row is not None and not same_spec(row.spec, text):
        summary = campaign_summaries(session, name)[0]
        if summary.n_structures or summary.tasks.get("done"):
            raise RunnerError(
                f"a campaign named {name!r} already exists in this database with a different spec (stored sha256 "
                f"{row.spec_hash[:12]}, submitted {spec_hash(text)[:12]}): continue it with `platform resume {name}`, "
                f"give this file a new `name:`, or remove the old one with `platform delete {name}`")
        delete_campaign(session, row.id)
        reporter.message(f"campaign {name!r} had no results yet (its first run stopped early): replaced by this file")
        row = None
    if row is None:
        return add_campaign(session, name, text, source=str(path.resolve())).id, True
    reporter.message(f"campaign {name!r} already recorded with this spec: resuming it")
    return row.id, False


def forget_campaign(engine: Engine, campaign_id: int) -> None:
    """Remove a campaign recorded by this submit whose preparation failed on bad input (its training data, say),
    before any task: the corrected file is then a fresh submit, and nothing is left behind."""
    with transaction(engine) as session:
        delete_campaign(session, campaign_id)


def mark_interrupted(engine: Engine, campaign_id: int, name: str, reporter: Reporter) -> None:
    """Put the tasks in flight back to pending and say how to resume (waiting a little for the database)."""
    def reset() -> None:
        with transaction(engine) as session:
            reset_running(session, campaign_id, f"interrupted: continue with `platform resume {name}`")

    try:
        retry(reset, "marking the interrupted campaign", budget_s=30.0, log=reporter.message)
    except Exception as exc:  # the run's own error is the one to show; resume resets running tasks anyway
        reason = str(getattr(exc, "orig", None) or exc).strip()
        reporter.message(f"campaign {name!r} is still shown as running: marking it interrupted failed too ({reason})")
