"""Shared fixtures: databases (real SQLite files and a real PostgreSQL server), data paths, CUDA gating."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from atomscreen.store import make_engine
from atomscreen.store import migrate

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PG_ENV = "ATOMSCREEN_TEST_POSTGRES_URL"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'atomscreen.db'}"


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database on the server named by $ATOMSCREEN_TEST_POSTGRES_URL, dropped afterwards."""
    admin_url = os.environ.get(PG_ENV)
    if not admin_url:
        pytest.skip(f"no PostgreSQL: set {PG_ENV}=postgresql+psycopg://USER:PASSWORD@HOST/DB to run the PostgreSQL tests")
    name = f"atomscreen_test_{uuid.uuid4().hex[:12]}"
    admin = make_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin.url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request) -> str:
    """Each database test runs once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def engine(db_url):
    """An engine on a database migrated to head."""
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def _shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"{path} not found (shared/ data must sit beside the checkout)")
    return path


@pytest.fixture
def carbon24_csv() -> Path:
    return _shared_file("carbon_24/val.csv")


@pytest.fixture
def perov5_csv() -> Path:
    return _shared_file("perov_5/val.csv")


@pytest.fixture(scope="session")
def trained_checkpoint():
    """A small RM potential trained for a few seconds on crystals (C, Si) and molecules (CH4, H2O, NH3, C2H6, CH3OH)."""
    import torch
    from ase.build import bulk, molecule

    from atomscreen.potentials.responses import ResponseConfig
    from atomscreen.potentials.rm import RMConfig
    from atomscreen.potentials.train import TrainConfig, train

    torch.set_num_threads(2)
    reference = [bulk("C", "diamond"), bulk("Si", "diamond", a=5.43), bulk("Si", "diamond", a=5.43, cubic=True),
                 molecule("CH4"), molecule("H2O"), molecule("NH3"), molecule("C2H6"), molecule("CH3OH")]
    return train(
        reference,
        RMConfig(cutoff=4.0, l_max=2, nu_max=2, n_embedding=2, n_radial=6, hidden=(16, 16)),
        ResponseConfig(max_displacement=0.3, max_strain=0.05),
        TrainConfig(epochs=60, batch_size=16, steps_per_epoch=2, seed=0),
        source="tests: C, Si, small molecules",
    ), reference
