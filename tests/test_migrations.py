"""Migrations run up to head and down to base on SQLite and PostgreSQL, and agree with the ORM models."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from atomscreen.store import make_engine, migrate
from atomscreen.store.models import Base

TABLES = {"campaign", "campaign_model", "composition", "model", "task", "structure", "trajectory", "energy",
          "hull_entry", "ranking", "calculation_failure", "structure_match", "molecule_check"}
VIEWS = {"structure_energies", "best_candidates", "hull", "ranked_candidates", "rescored_pairs"}


def _schema(engine) -> tuple[set[str], set[str]]:
    inspector = inspect(engine)
    return set(inspector.get_table_names()) - {"alembic_version"}, set(inspector.get_view_names())


def test_upgrade_creates_every_table_and_view(engine):
    tables, views = _schema(engine)
    assert tables == TABLES == set(Base.metadata.tables)
    assert views == VIEWS
    assert migrate.current_revision(engine) == migrate.head_revision()


def test_downgrade_to_base_removes_everything_and_upgrade_again_works(engine):
    migrate.downgrade(engine, "base")
    assert _schema(engine) == (set(), set())
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert _schema(engine) == (TABLES, VIEWS)


def test_upgrade_from_0001_keeps_rows_and_downgrade_restores_it(engine):
    """0002 rebuilds structure and campaign on SQLite (batch mode): rows and the old views survive both ways."""
    from ase.build import bulk

    from atomscreen.store import add_structures, transaction

    migrate.downgrade(engine, "0001")
    assert _schema(engine)[1] == {"structure_energies", "best_candidates", "hull"}
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO composition (formula, reduced_formula, chemsys, n_atoms) "
                          "VALUES ('C2', 'C', 'C', 2)"))
        conn.execute(text("INSERT INTO campaign (name, spec, spec_hash, status, created_at, updated_at) "
                          "VALUES ('old', 'name: old', 'x', 'done', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    migrate.upgrade(engine)
    with transaction(engine) as session:
        add_structures(session, [bulk("C", "diamond")], origin="import")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name, model_id FROM campaign")).all() == [("old", None)]
        assert conn.execute(text("SELECT task_index, representative_id FROM structure")).all() == [(None, None)]
    migrate.downgrade(engine, "0001")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT origin, n_atoms FROM structure")).all() == [("import", 2)]
    migrate.upgrade(engine)
    assert _schema(engine) == (TABLES, VIEWS)


def _diff(engine, metadata) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, metadata)


def test_orm_models_and_migrations_agree(engine):
    assert _diff(engine, Base.metadata) == []


def test_model_migration_comparison_detects_drift(engine):
    """The agreement check above can fail: a column the migrations lack shows up as a difference."""
    drifted = sa.MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["structure"].append_column(sa.Column("new_property", sa.Double()))
    diff = _diff(engine, drifted)
    assert [d[0] for d in diff] == ["add_column"] and diff[0][3].name == "new_property"


def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_url):
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_foreign_keys_are_enforced(engine):
    with pytest.raises(sa.exc.IntegrityError):
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO task (campaign_id, kind, key, seed, payload, status, attempts, created_at) "
                     "VALUES (12345, 'rss', 'k', 0, '{}', 'pending', 0, CURRENT_TIMESTAMP)")
            )


def test_failed_migration_leaves_no_half_written_schema(sqlite_url, monkeypatch):
    """DDL is transactional on both backends: an error mid-upgrade rolls every table back."""
    from alembic.operations import Operations

    engine = make_engine(sqlite_url)
    original = Operations.execute

    def failing_execute(self, sql, *args, **kwargs):
        if "CREATE VIEW hull" in str(sql):
            raise RuntimeError("simulated failure while creating the last view")
        return original(self, sql, *args, **kwargs)

    monkeypatch.setattr(Operations, "execute", failing_execute)
    with pytest.raises(RuntimeError, match="simulated failure"):
        migrate.upgrade(engine)
    assert _schema(engine) == (set(), set())
    assert migrate.current_revision(engine) is None


def test_two_drivers_migrating_one_empty_database_at_once_both_succeed(db_url):
    """Drill PC2: both run the first migration at the same moment; one waits for the other (a PostgreSQL advisory
    lock, SQLite's BEGIN IMMEDIATE) and then finds the schema at head."""
    import threading

    engines = [make_engine(db_url), make_engine(db_url)]
    barrier, errors = threading.Barrier(2), []

    def upgrade(engine):
        barrier.wait()
        try:
            migrate.upgrade(engine)
        except Exception as exc:  # the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert migrate.current_revision(engines[0]) == migrate.head_revision()
    for e in engines:
        e.dispose()
