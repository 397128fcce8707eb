"""A 3D start from a SMILES: RDKit ETKDG (v3) embedding with explicit hydrogens, then MMFF94 optimisation, the
force-field geometry Rothchild et al. (2024, §4.2.1) polish by diffusion before the quantum-chemical relaxation."""

from __future__ import annotations

from ase import Atoms


def mmff_conformer(smiles: str, *, seed: int = 0, max_iters: int = 2000) -> Atoms:
    """The ETKDG + MMFF94 geometry of ``smiles`` (heavy atoms in SMILES order, then hydrogens), seeded; the same seed
    gives the same geometry. Raises ValueError naming the SMILES when it cannot be parsed, embedded or typed."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    parsed = Chem.MolFromSmiles(smiles)
    if parsed is None:
        raise ValueError(f"RDKit cannot parse the SMILES {smiles!r}")
    mol = Chem.AddHs(parsed)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise ValueError(f"ETKDG could not embed {smiles!r} (seed {seed})")
    status = AllChem.MMFFOptimizeMolecule(mol, mmffVariant="MMFF94", maxIters=max_iters)
    if status == -1:
        raise ValueError(f"MMFF94 has no parameters for {smiles!r}")
    return Atoms(numbers=[a.GetAtomicNum() for a in mol.GetAtoms()], positions=mol.GetConformer().GetPositions(),
                 info={"smiles": smiles, "mmff_converged": status == 0})
