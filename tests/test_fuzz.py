"""Fuzzing (hypothesis, a bounded number of examples): mutated campaign files and mutated data files end in success
or a named error, never another exception or a hang; validation never touches a database."""

from __future__ import annotations

import copy
import signal

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atomscreen.campaign import CampaignError, load_yaml, parse_campaign
from atomscreen.data import DataError, read_dataset

VALID = {
    "name": "fuzz",
    "seed": 3,
    "cluster": {"n_workers": 2},
    "compositions": {"formulas": ["C2", "C4"], "max_atoms": 8},
    "model": {"train": {"dataset": {"format": "ase-collection", "name": "dcdft"},
                        "hyperparameters": {"cutoff": 3.0, "epochs": 2}}},
    "generators": {"rss": {"samples_per_composition": 6, "volume_per_atom": 5.7, "volume_factor": [0.9, 1.1],
                           "min_separation": 1.2, "batch_size": 3}},
    "relaxation": {"fmax": 0.05, "max_steps": 150, "trajectory_every": 20, "pressure_gpa": 0.0},
    "rescore": {"calculator": "ase.calculators.emt:EMT", "top_k": 2, "timeout_s": 10,
                "options": {"asap_cutoff": False}},
}

LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=4),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
    st.recursive(st.integers(), lambda inner: st.lists(inner, max_size=3), max_leaves=20),
)


def paths(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from paths(v, prefix + (i,))


ALL_PATHS = [p for p in paths(VALID) if p]


def mutate(tree, path, action, value):
    tree = copy.deepcopy(tree)
    node = tree
    for key in path[:-1]:
        node = node[key]
    leaf = path[-1]
    if action == "replace":
        node[leaf] = value
    elif action == "delete" and isinstance(node, dict):
        del node[leaf]
    elif action == "add" and isinstance(node, dict):
        node[f"extra_{leaf}"] = value
    return tree


class _Hang(Exception):
    pass


def bounded(call, seconds: int = 10):
    """call() with a wall-clock bound: a hang is a failure, not a stalled suite."""
    def alarm(signum, frame):
        raise _Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        return call()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(ALL_PATHS), st.sampled_from(["replace", "delete", "add"]), LEAVES),
                min_size=1, max_size=4))
def test_mutated_campaigns_validate_or_name_their_problem(mutations):
    data = VALID
    for path, action, value in mutations:
        try:
            data = mutate(data, path, action, value)
        except (KeyError, IndexError, TypeError):  # an earlier mutation removed or replaced the path
            continue
    try:
        bounded(lambda: parse_campaign(data))
    except CampaignError as exc:
        assert exc.problems and all(str(p) for p in exc.problems)
        assert len(str(exc)) < 20_000  # values in messages are cut short


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=40), st.integers(min_value=0, max_value=2000), st.integers(min_value=0, max_value=20))
def test_mutated_campaign_text_loads_or_names_its_problem(inserted, at, removed):
    text = yaml.safe_dump(VALID)
    at = at % len(text)
    mutated = (text[:at].encode() + inserted + text[at + removed:].encode()).decode("utf-8", "replace")
    try:
        data = bounded(lambda: load_yaml(mutated, "fuzz.yaml"))
        bounded(lambda: parse_campaign(data))
    except CampaignError:
        pass


GOOD_XYZ = """2
Lattice="3.567 0 0 0 3.567 0 0 0 3.567" Properties=species:S:1:pos:R:3 pbc="T T T"
C 0.0 0.0 0.0
C 0.89 0.89 0.89
"""


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet="0123456789.-e CXnaif\"=TF\n", max_size=12), st.integers(min_value=0, max_value=400),
       st.integers(min_value=0, max_value=6))
def test_mutated_data_files_read_or_name_file_and_row(tmp_path, inserted, at, removed):
    at = at % len(GOOD_XYZ)
    path = tmp_path / "fuzz.extxyz"
    path.write_text(GOOD_XYZ[:at] + inserted + GOOD_XYZ[at + removed:])
    try:
        structures = bounded(lambda: read_dataset("extxyz", path))
    except DataError as exc:
        assert str(path) in str(exc)
    else:
        assert structures and all(len(a) for a in structures)
