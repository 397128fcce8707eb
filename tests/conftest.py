"""Shared fixtures: databases (real SQLite files and a real PostgreSQL server), data paths, CUDA gating."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.engine import make_url

from atomscreen.store import make_engine, migrate

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
        pytest.skip(f"no PostgreSQL: set {PG_ENV}=postgresql+psycopg://USER:PASSWORD@HOST/DB "
                    "to run the PostgreSQL tests")
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


def store_job(engine, campaign_id: int, key: str, job) -> int:
    """Record ``job`` as a task of the campaign (as the runner does) and return the task's id."""
    from atomscreen.compute.plan import PlannedTask
    from atomscreen.store import add_tasks, transaction

    with transaction(engine) as session:
        (task_id,) = add_tasks(session, campaign_id, [PlannedTask(key, 0, job).new_task()])
    return task_id


def store_result(engine, task_id: int, result, method: str | None = None) -> int:
    """Write a task's result as the runner does."""
    from atomscreen.store import transaction, write_task_result

    with transaction(engine) as session:
        return write_task_result(session, task_id, result, method=method)


@pytest.fixture(scope="module")
def checkpoint_file(trained_checkpoint, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "rm.pt"
    trained_checkpoint[0].save(path)
    return path


def write_campaign(folder: Path, checkpoint: Path, name: str = "carbon", **changes) -> Path:
    spec = {
        "name": name,
        "seed": 3,
        "cluster": {"n_workers": 2},
        "compositions": ["C2", "C4"],
        "model": {"checkpoint": str(checkpoint)},
        "generators": {"rss": {"samples_per_composition": 6, "volume_per_atom": 5.7, "volume_factor": [0.9, 1.1],
                               "min_separation": 1.2, "batch_size": 3}},
        "relaxation": {"fmax": 0.05, "max_steps": 150, "trajectory_every": 20},
    }
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = spec
        for key in parents:
            node = node[key]
        node[leaf] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def random_systems(seed: int, n: int = 30):
    """Random triclinic cells (some tiny, so atoms see many images), partly periodic cells and molecules."""
    import numpy as np
    from ase import Atoms

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        n_atoms = int(rng.integers(1, 14))
        cell = rng.normal(size=(3, 3)) * 1.5 + np.eye(3) * rng.uniform(2.0, 6.0)
        pbc = [[True] * 3, [False] * 3, [True, False, True]][k % 3]
        numbers = rng.integers(1, 30, n_atoms)
        out.append(Atoms(numbers=numbers, positions=rng.normal(size=(n_atoms, 3)) * 3, cell=cell, pbc=pbc))
    return out


def well_conditioned_starts(reference, n=50, seed=0):
    """Known crystals and molecules rattled by 0.1 Å; crystals also strained by up to 5%."""
    import numpy as np

    rng = np.random.default_rng(seed)
    starts = []
    for k in range(n):
        atoms = reference[k % len(reference)].copy()
        atoms.rattle(0.1, seed=k)
        if atoms.pbc.all():
            strain = rng.uniform(-0.05, 0.05, (3, 3))
            atoms.set_cell(atoms.cell.array @ (np.eye(3) + (strain + strain.T) / 2), scale_atoms=True)
        starts.append(atoms)
    return starts
