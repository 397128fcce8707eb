"""ASE Calculator around any energy model of the engine (RM potential, ...)."""

from __future__ import annotations

import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from atomscreen.atoms.batch import from_ase
from atomscreen.potentials.forces import EnergyModel, compute


class RMCalculator(Calculator):
    """energy, free_energy, forces and (for periodic cells) stress from a torch energy model."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: EnergyModel, device: str = "cpu", dtype: torch.dtype = torch.float64, **kwargs):
        super().__init__(**kwargs)
        self.model, self.device, self.dtype = model, device, dtype

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        batch = from_ase([self.atoms], device=self.device, dtype=self.dtype)
        response = compute(self.model, batch, stress=bool(self.atoms.pbc.all()))
        energy = float(response.energy[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": response.forces.cpu().double().numpy(),
        }
        if self.atoms.pbc.all():
            self.results["stress"] = full_3x3_to_voigt_6_stress(response.stress[0].cpu().double().numpy())
