"""Dedupe, ranking and pseudo hulls against independent references: hand-computed hull geometry, pymatgen, symmetry."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

from atomscreen.analysis import pseudo_hulls, rank, representatives
from atomscreen.analysis.plots import hull_plot

E_LI, E_S = -1.9, -4.1  # eV/atom of the elemental ground states
# formula -> formation energy per atom (eV/atom) of a hand-made Li-S-like set.
# Hull: Li (x_S=0) -> Li2S (1/3, -1.5) -> LiS (1/2, -1.2) -> S (1, 0).
FORMATION = {"Li": 0.0, "S": 0.0, "Li2S": -1.5, "LiS": -1.2, "Li3S": -1.0, "LiS2": -0.6, "Li2S3": -0.9}
# e_above_hull by hand: Li3S (x=1/4) on Li-Li2S: -1.5*(1/4)/(1/3) = -1.125;
# LiS2 (x=2/3) on LiS-S: -1.2*(1/3)/(1/2) = -0.8; Li2S3 (x=3/5) on LiS-S: -1.2*(2/5)/(1/2) = -0.96
EXPECTED_ABOVE = {"Li": 0.0, "S": 0.0, "Li2S": 0.0, "LiS": 0.0, "Li3S": 0.125, "LiS2": 0.2, "Li2S3": 0.06}


def _energy_per_atom(formula: str, formation: float) -> float:
    x = Composition(formula).get_atomic_fraction("S")
    return formation + (1 - x) * E_LI + x * E_S


def li_s_set():
    formulas, energies = [], []
    for formula, formation in FORMATION.items():
        formulas.append(formula)
        energies.append(_energy_per_atom(formula, formation))
    formulas += ["Li", "S", "Li2S"]  # metastable polymorphs
    energies += [E_LI + 0.05, E_S + 0.02, _energy_per_atom("Li2S", -1.45)]
    return formulas, energies


def test_li_s_hull_matches_hand_computed_geometry_and_pymatgen():
    formulas, energies = li_s_set()
    points, skipped = pseudo_hulls(formulas, energies)
    assert skipped == [] and len(points) == len(formulas)
    for p in points[: len(FORMATION)]:
        formula = formulas[p.index]
        assert p.formation_energy_per_atom == pytest.approx(FORMATION[formula], abs=1e-9)
        assert p.e_above_hull == pytest.approx(EXPECTED_ABOVE[formula], abs=1e-9)
        assert p.is_stable == (EXPECTED_ABOVE[formula] == 0.0)
    polymorphs = points[len(FORMATION):]
    assert [round(p.e_above_hull, 9) for p in polymorphs] == [0.05, 0.02, 0.05]
    assert not any(p.is_stable for p in polymorphs)
    # and against pymatgen used directly
    entries = [PDEntry(Composition(f), e * Composition(f).num_atoms) for f, e in zip(formulas, energies)]
    diagram = PhaseDiagram(entries)
    for p, entry in zip(points, entries):
        assert p.e_above_hull == pytest.approx(diagram.get_e_above_hull(entry), abs=1e-9)
        assert p.formation_energy_per_atom == pytest.approx(diagram.get_form_energy_per_atom(entry), abs=1e-9)
    assert ({formulas[p.index] for p in points if p.is_stable}
            == {e.composition.reduced_formula for e in diagram.stable_entries})


def test_missing_elemental_reference_skips_that_system_and_names_the_element():
    formulas, energies = li_s_set()
    formulas += ["Li2O", "LiO"]
    energies += [-3.0, -2.5]
    points, skipped = pseudo_hulls(formulas, energies)
    assert [(s.chemsys, s.missing_elements) for s in skipped] == [("Li-O", ("O",))]
    assert "no structure of pure O" in str(skipped[0])
    assert {formulas[p.index] for p in points} == set(FORMATION)  # Li-S complete; Li2O and LiO left out


def test_single_element_hull_is_energy_above_the_lowest():
    points, skipped = pseudo_hulls(["C2", "C8", "C4"], [-7.0, -7.2, -7.15])
    assert skipped == []
    assert [round(p.e_above_hull, 9) for p in points] == [0.2, 0.0, 0.05]
    assert [p.is_stable for p in points] == [False, True, False]


def test_rank_within_composition_and_overall():
    within, overall = rank(["C2", "C4", "C2", "C4", "C2"], [-1.0, -3.0, -2.0, -3.0, -1.0])
    assert overall == [4, 1, 3, 2, 5]  # ties keep input order
    assert within == [2, 1, 1, 2, 3]


def test_dedupe_finds_the_same_crystal_in_other_cells_and_keeps_the_lowest_energy():
    rng = np.random.default_rng(0)
    diamond = bulk("C", "diamond")
    rotated = diamond.copy()
    rotated.rotate(37, "z", rotate_cell=True)
    rotated.rattle(0.01, rng=rng)
    long_c = bulk("C", "diamond").repeat((1, 1, 2))  # C4 diamond, two different supercells
    long_a = bulk("C", "diamond").repeat((2, 1, 1))
    simple_cubic = bulk("C", "sc", a=1.6).repeat((2, 2, 1))  # a different C4 crystal
    structures = [diamond, rotated, long_c, long_a, simple_cubic]
    energies = [-7.000, -7.001, -6.999, -7.003, -7.002]
    assert representatives(structures, energies) == [1, 1, 3, 3, 4]  # per composition; the lowest energy represents
    # outside the energy window the same crystal counts as a different minimum
    assert representatives([diamond, rotated], [-7.0, -7.5]) == [0, 1]
    # per composition: the C8 cubic cell is not compared with the C2 cell
    assert representatives([diamond, bulk("C", "diamond", cubic=True)], [-7.0, -7.0]) == [0, 1]


def test_hull_plots_are_written(tmp_path):
    formulas, energies = li_s_set()
    points, _ = pseudo_hulls(formulas, energies)
    rows = [{"chemsys": p.chemsys, "formula": formulas[p.index],
             "reduced_formula": Composition(formulas[p.index]).reduced_formula,
             "structure_id": p.index, "energy_per_atom": energies[p.index],
             "formation_energy_per_atom": p.formation_energy_per_atom,
             "e_above_hull": p.e_above_hull, "is_stable": p.is_stable, "volume_per_atom": 10.0 + p.index}
            for p in points]
    written = hull_plot(rows, tmp_path / "hull.png", title="Li-S")
    assert written == [tmp_path / "hull.png"] and written[0].stat().st_size > 10_000
    carbon = [dict(r, chemsys="C", formula="C2") for r in rows[:3]]
    written = hull_plot(rows + carbon, tmp_path / "h.png")
    assert sorted(p.name for p in written) == ["h-C.png", "h-Li-S.png"]


def test_side_by_side_hulls_of_two_methods_and_a_ternary(tmp_path):
    """One figure per chemical system with a panel per method; a ternary system draws its composition triangle."""
    import matplotlib.image

    formulas = ["Sr", "V", "O2", "SrO", "VO2", "SrVO3", "Sr2VO4"]
    energies = [-1.6, -9.0, -4.9, -6.0, -8.0, -7.9, -7.2]
    points, skipped = pseudo_hulls(formulas, energies)
    assert not skipped and {p.chemsys for p in points} == {"O-Sr-V"}
    rows = [{"chemsys": p.chemsys, "formula": formulas[p.index],
             "reduced_formula": Composition(formulas[p.index]).reduced_formula,
             "structure_id": p.index, "energy_per_atom": energies[p.index],
             "formation_energy_per_atom": p.formation_energy_per_atom,
             "e_above_hull": p.e_above_hull, "is_stable": p.is_stable, "volume_per_atom": 12.0}
            for p in points]
    one = hull_plot({"rm_pseudo": rows}, tmp_path / "one.png")
    two = hull_plot({"rm_pseudo": rows, "chgnet": rows}, tmp_path / "two.png")
    assert one == [tmp_path / "one.png"] and two == [tmp_path / "two.png"]
    width_one = matplotlib.image.imread(one[0]).shape[1]
    width_two = matplotlib.image.imread(two[0]).shape[1]
    assert width_two == 2 * width_one  # two panels of the same size side by side


def test_dedupe_compares_only_the_lowest_top_k_per_composition_and_reads_only_those():
    """dedupe.top_k bounds the StructureMatcher work; the structures above it are ranked as unique, with a note."""
    from atomscreen.campaign import DedupeSpec
    from atomscreen.compute.finalize import analyse_method
    from atomscreen.store import AnalysisRow

    diamond = bulk("C", "diamond")
    copies = []
    for k in range(4):  # the same crystal four times, rotated, within the energy window
        a = diamond.copy()
        a.rotate(10 * k, "z", rotate_cell=True)
        a.info["structure_id"] = 10 + k
        copies.append(a)
    energies = [-7.000, -7.004, -7.001, -7.003]  # ids 11, 13, 12, 10 in energy order
    rows = [AnalysisRow(10 + k, "C2", "rss", None, True, True, {"rm_pseudo": e}) for k, e in enumerate(energies)]
    asked = []

    def load(ids):
        asked.append(list(ids))
        return [copies[i - 10] for i in ids]

    everything, notes = analyse_method("rm_pseudo", rows, [False] * 4, load, DedupeSpec(top_k=None))
    assert everything.duplicates == {10: 11, 12: 11, 13: 11}
    assert not any("not compared" in n for n in notes)
    bounded, notes = analyse_method("rm_pseudo", rows, [False] * 4, load, DedupeSpec(top_k=2))
    assert asked[-1] == [11, 13]  # only the two lowest were read and compared
    assert bounded.duplicates == {13: 11}
    assert [(sid, rank) for sid, scope, rank, _ in bounded.rankings if scope == "composition"] == [(10, 3), (11, 1),
                                                                                                  (12, 2)]
    assert any("2 crystals above the lowest 2 of their composition were not compared" in n for n in notes)


def test_compositions_compared_on_dask_workers_and_the_driver_give_the_serial_result():
    """map_with_driver: one composition here, the others on a real Dask cluster; same duplicates as serially."""
    from functools import partial

    from distributed import Client, LocalCluster

    from atomscreen.campaign import DedupeSpec
    from atomscreen.compute.dispatch import map_with_driver
    from atomscreen.compute.finalize import analyse_method
    from atomscreen.store import AnalysisRow

    crystals = {}
    rows = []
    for k, (formula, base) in enumerate([("C2", bulk("C", "diamond")), ("C4", bulk("C", "diamond").repeat((1, 1, 2))),
                                         ("Si2", bulk("Si", "diamond", a=5.43))] * 3):
        a = base.copy()
        a.rotate(7 * k, "z", rotate_cell=True)
        a.info["structure_id"] = 100 + k
        crystals[100 + k] = a
        rows.append(AnalysisRow(100 + k, formula, "rss", None, True, True, {"rm_pseudo": -7.0 - 0.001 * k}))

    def load(ids):
        return [crystals[i] for i in ids]

    serial, _ = analyse_method("rm_pseudo", rows, [False] * len(rows), load, DedupeSpec())
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        spread, _ = analyse_method("rm_pseudo", rows, [False] * len(rows), load, DedupeSpec(),
                                   partial(map_with_driver, client))
    assert serial.duplicates == spread.duplicates == {100: 106, 103: 106, 101: 107, 104: 107, 102: 108, 105: 108}
    assert serial.rankings == spread.rankings
