"""Re-scoring with real calculators: CHGNet, GFN2-xTB and a factory by dotted path; failures stay per structure."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule

from atomscreen.evaluate import CalculatorError, make_calculator, method_name
from atomscreen.relax.ase_relax import CalcSettings, calculate


def test_method_names():
    assert method_name("chgnet") == "chgnet"
    assert method_name("xtb") == "xtb_gfn2"
    assert method_name("ase.calculators.emt:EMT") == "ase.calculators.emt:EMT"


def test_bad_factories_say_what_is_wrong():
    with pytest.raises(CalculatorError, match="cannot import module 'no_such_module'"):
        make_calculator("no_such_module:f")
    with pytest.raises(CalculatorError, match="has no attribute 'Nope'"):
        make_calculator("ase.calculators.emt:Nope")
    with pytest.raises(CalculatorError, match="not an ASE calculator"):
        make_calculator("builtins:object")


def test_factory_calculator_relaxes_cell_like_ase():
    """EMT copper by dotted path: our cell relaxation reaches the lattice constant ASE's own EOS fit gives."""
    from ase.calculators.emt import EMT
    from ase.eos import EquationOfState

    atoms = bulk("Cu", "fcc", a=3.8)
    atoms.rattle(0.02, seed=1)
    result = calculate(atoms, make_calculator("ase.calculators.emt:EMT"),
                       CalcSettings(fmax=1e-4, max_steps=500, optimizer="bfgs"))
    assert result.status == "converged", result.error
    volumes, energies = [], []
    for a in np.linspace(3.5, 3.7, 9):
        cu = bulk("Cu", "fcc", a=a)
        cu.calc = EMT()
        volumes.append(cu.get_volume())
        energies.append(cu.get_potential_energy())
    v0, e0, _ = EquationOfState(volumes, energies).fit()
    assert result.atoms.get_volume() == pytest.approx(v0, rel=2e-3)
    assert result.energy == pytest.approx(e0, abs=2e-4)
    assert result.trajectory is not None and result.trajectory.steps[-1] == result.n_steps


def test_chgnet_relaxation_agrees_with_chgnets_own_optimizer():
    """Our relaxation with the CHGNet calculator against chgnet's StructOptimizer (FIRE + cell filter) on rattled
    diamond."""
    from chgnet.model import StructOptimizer
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = bulk("C", "diamond", a=3.65)
    atoms.rattle(0.03, seed=0)
    ours = calculate(atoms, make_calculator("chgnet"), CalcSettings(fmax=0.02, max_steps=300))
    assert ours.status == "converged", ours.error
    theirs = StructOptimizer().relax(AseAtomsAdaptor.get_structure(atoms), fmax=0.02, steps=300, verbose=False)
    e_theirs = float(theirs["trajectory"].energies[-1]) / len(atoms)
    assert ours.energy / len(atoms) == pytest.approx(e_theirs, abs=2e-3)
    assert (ours.atoms.get_volume() / len(atoms)
            == pytest.approx(theirs["final_structure"].volume / len(atoms), rel=5e-3))


def test_atoms_on_top_of_each_other_fail_that_structure_only():
    """Coinciding atoms give CHGNet a non-finite energy: recorded as a failure with the reason, nothing raised."""
    calc = make_calculator("chgnet")
    bad = bulk("C", "diamond", a=3.57, cubic=True)
    bad.positions[1] = bad.positions[0]
    result = calculate(bad, calc, CalcSettings(max_steps=20))
    assert result.status == "failed" and result.energy is None
    assert "non-finite" in result.error
    good = calculate(bulk("C", "diamond", a=3.57), calc, CalcSettings(relax=False))
    assert good.status == "single_point" and np.isfinite(good.energy)


def test_xtb_single_point_equals_the_xtb_calculator():
    from xtb.ase.calculator import XTB

    water = molecule("H2O")
    result = calculate(water, make_calculator("xtb"), CalcSettings(relax=False))
    direct = water.copy()
    direct.calc = XTB(method="GFN2-xTB")
    assert result.energy == pytest.approx(direct.get_potential_energy(), abs=1e-6)
