"""Run Alembic migrations from Python: upgrade, downgrade, current and head revisions."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

import atomscreen
from atomscreen.errors import AtomscreenError


def migrations_dir() -> Path:
    """The Alembic script directory: inside a built wheel, else the repository's migrations/."""
    packaged = resources.files(atomscreen) / "_migrations"
    if packaged.is_dir():
        return Path(str(packaged))
    repo = Path(atomscreen.__file__).resolve().parents[2] / "migrations"
    if (repo / "env.py").is_file():
        return repo
    raise FileNotFoundError(f"atomscreen migrations not found (looked in {packaged} and {repo})")


def alembic_config() -> Config:
    """An Alembic config pointing at the project's migrations, independent of the working directory."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def head_revision() -> str:
    """The newest revision in the migration scripts."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for a database never migrated."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


MIGRATION_LOCK = 0x61746F6D  # PostgreSQL advisory lock key ('atom'): one migration at a time per database


def _run(engine: Engine, action, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":  # two drivers migrating an empty database at once (SQLite's
            # BEGIN IMMEDIATE already serialises them): the second waits, then finds the schema at head
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        action(config, revision)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema to ``revision``, in one transaction."""
    _run(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the schema to ``revision`` (``base`` removes everything)."""
    _run(engine, command.downgrade, revision)


class SchemaError(AtomscreenError, RuntimeError):
    """The database is not at the schema this atomscreen needs."""


def require_head(engine: Engine) -> None:
    """Raise SchemaError unless the database is at the newest revision."""
    current, head = current_revision(engine), head_revision()
    if current is None:
        raise SchemaError("this database holds no atomscreen tables (nothing was recorded in it, e.g. a run stopped "
                          "before its first write): submit the campaign file, or run platform db upgrade to create "
                          "the tables")
    if current != head:
        raise SchemaError(f"the database is at revision {current} but this atomscreen needs {head}: "
                          "run platform db upgrade")
