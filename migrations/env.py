"""Alembic environment: runs revisions on a connection handed in by atomscreen, or on a resolved URL."""

from __future__ import annotations

from alembic import context

from atomscreen.store.arrays import NDArray
from atomscreen.store.engine import make_engine, resolve_url
from atomscreen.store.models import Base

config = context.config
target_metadata = Base.metadata


def _render_item(type_, obj, _autogen_context):
    # Revisions are frozen snapshots: write array columns as their plain SQL type.
    if type_ == "type" and isinstance(obj, NDArray):
        return "sa.LargeBinary()"
    return False


def _configure(**kwargs) -> None:
    context.configure(target_metadata=target_metadata, compare_type=True, render_item=_render_item, **kwargs)


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or resolve_url(context.get_x_argument(as_dictionary=True).get("db"))


def run_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection) -> None:
    # Batch mode lets later revisions ALTER tables on SQLite (copy-and-move).
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _run_on(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
