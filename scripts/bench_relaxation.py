"""MoreRed's relaxation evaluation (Kahouli et al. 2024, §3.2 and Fig. 4) on data we have: reference equilibria are QM9
molecules of the shipped denoiser's test split (it never saw them); inputs are (a) `diffused250`, each reference after
250 forward diffusion steps (MoreRed's robustness set, eq. 2), and (b) `normal_modes`, thermal displacements along the
MMFF94 normal modes at the reference (a perturbation the denoiser was not trained on). Six relaxers in one run:
MoreRed-ITP, -AS, -JT (the shipped joint model; ITP and AS read the time from its time head), GFN2-xTB with ASE L-BFGS,
MMFF94 (RDKit, bonds of the reference), the RM pseudo potential with batched FIRE. JSON lines, one per method and set.

    python scripts/bench_relaxation.py --n 500 --jobs 2 [--dft 5] [--out build/bench_relaxation.jsonl]

RMSD: all atoms, Kabsch-aligned, fixed atom order (MoreRed's code). Failure: RMSD ratio (after / before) >= 1 (the
Fig. 4 caption; `failure_gt_pct` uses > 1, the text's). Energies relative to the reference: GFN2-xTB single points for
all, DFT (PySCF; QM9's B3LYP/6-31G(2df,p) unless --dft-options says otherwise) for the first --dft molecules of
each set and method, relative to the same level at the reference.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from ase.build import minimize_rotation_and_translation
from benchlib import emit, single_point

from atomscreen.data.qm9 import read_qm9
from atomscreen.diffusion.checkpoint import DenoiserCheckpoint
from atomscreen.diffusion.forward import noised
from atomscreen.diffusion.painn import count_parameters
from atomscreen.diffusion.relax import relax
from atomscreen.evaluate.dft import DEFAULTS as DFT_DEFAULTS

REPO = Path(__file__).resolve().parents[1]
KCAL = units.kcal / units.mol  # eV per kcal/mol
METHODS = ("morered-itp", "morered-as", "morered-jt", "xtb", "mmff94", "rm-fire")
SETS = ("diffused250", "normal_modes")


def rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """All-atom RMSD of a to b after the best rotation and translation (Kabsch, ASE), same atom order."""
    target, moved = Atoms(positions=b), Atoms(positions=a)
    minimize_rotation_and_translation(target, moved)
    return float(np.sqrt(((moved.positions - target.positions) ** 2).sum(1).mean()))


def references(checkpoint: DenoiserCheckpoint, n: int, skip: int) -> list[Atoms]:
    """The first n QM9 test-split molecules (of the checkpoint's split) from row ``skip`` on that RDKit can type
    for MMFF94 (bonds perceived from the coordinates, atom order kept)."""
    known = checkpoint.seen_ids()
    out = []
    for atoms in read_qm9(limit=40 * n, skip=skip):
        if atoms.info["qm9_index"] in known:
            continue
        if _mmff(atoms) is not None:
            out.append(atoms)
        if len(out) == n:
            return out
    raise SystemExit(f"only {len(out)} usable test molecules in QM9 rows {skip}..{skip + 40 * n}")


def _mmff(atoms: Atoms):
    """(RDKit molecule in the atoms' order, its MMFF94 properties), or None where bonds or typing fail."""
    from rdkit import Chem
    from rdkit.Chem import AllChem, rdDetermineBonds

    block = f"{len(atoms)}\n\n" + "\n".join(f"{s} {x:.8f} {y:.8f} {z:.8f}" for s, (x, y, z) in
                                            zip(atoms.get_chemical_symbols(), atoms.positions))
    mol = Chem.MolFromXYZBlock(block)
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=0)
        Chem.SanitizeMol(mol)
    except Exception:  # noqa: BLE001  (RDKit raises several kinds for molecules it cannot perceive)
        return None
    props = AllChem.MMFFGetMoleculeProperties(mol)
    return None if props is None else (mol, props)


def _mmff_field(mol, props, positions: np.ndarray):
    from rdkit.Chem import AllChem
    from rdkit.Geometry import Point3D

    conf = mol.GetConformer()
    for k, p in enumerate(positions):
        conf.SetAtomPosition(k, Point3D(*map(float, p)))
    return AllChem.MMFFGetMoleculeForceField(mol, props)


def normal_mode_input(atoms: Atoms, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Reference + a classical thermal sample of the MMFF94 harmonic potential at the reference: along each mode k of
    positive curvature lambda_k, a N(0, kT / lambda_k) displacement (positions' Boltzmann distribution, no masses)."""
    mol, props = _mmff(atoms)
    ff = _mmff_field(mol, props, atoms.positions)
    x0 = atoms.positions.reshape(-1)
    h, hessian = 1e-4, np.zeros((x0.size, x0.size))
    for k in range(x0.size):
        step = np.zeros_like(x0)
        step[k] = h
        hessian[k] = (np.array(ff.CalcGrad((x0 + step).tolist())) - np.array(ff.CalcGrad((x0 - step).tolist()))) / 2 / h
    hessian = 0.5 * (hessian + hessian.T) * KCAL  # eV/Å^2
    curvature, modes = np.linalg.eigh(hessian)
    keep = curvature > 1e-2
    amplitude = np.sqrt(units.kB * temperature / curvature[keep]) * rng.standard_normal(int(keep.sum()))
    return atoms.positions + (modes[:, keep] @ amplitude).reshape(-1, 3)


def inputs(refs: list[Atoms], which: str, checkpoint, args) -> list[np.ndarray]:
    if which == "diffused250":
        model, schedule = checkpoint.build()
        numbers, x0, mol = _flat(refs)
        x_t, _ = noised(x0, torch.full((len(refs),), 250), mol, schedule,
                        generator=torch.Generator().manual_seed(args.seed))
        return _split(x_t.numpy(), refs)
    rng = np.random.default_rng(args.seed)
    return [normal_mode_input(a, args.temperature, rng) for a in refs]


def _flat(refs: list[Atoms]):
    numbers = torch.tensor(np.concatenate([a.numbers for a in refs]))
    x = torch.tensor(np.concatenate([a.positions for a in refs]), dtype=torch.float64)
    mol = torch.repeat_interleave(torch.arange(len(refs)), torch.tensor([len(a) for a in refs]))
    return numbers, x, mol


def _split(flat: np.ndarray, refs: list[Atoms]) -> list[np.ndarray]:
    ends = np.cumsum([len(a) for a in refs])
    return [flat[e - len(a):e] for a, e in zip(refs, ends)]


def run_morered(method: str, refs, starts, checkpoint, args) -> dict:
    """Batched MoreRed relaxation of every input; steps, converged flags and the initial predicted step."""
    model, schedule = checkpoint.build(device=args.device)
    out = {"positions": [], "steps": [], "converged": [], "t0": []}
    started = time.perf_counter()
    for first in range(0, len(refs), args.batch):
        chunk = range(first, min(first + args.batch, len(refs)))
        numbers, _, mol = _flat([refs[k] for k in chunk])
        x = torch.tensor(np.concatenate([starts[k] for k in chunk]), dtype=torch.float64, device=args.device)
        result = relax(model, schedule, model.species(numbers.to(args.device)), mol.to(args.device), len(chunk), x,
                       method=method, seeds=torch.tensor(list(chunk)) + args.seed, max_steps=args.max_steps)
        out["positions"] += _split(result.positions.cpu().numpy(), [refs[k] for k in chunk])
        out["steps"] += result.steps.tolist()
        out["converged"] += result.converged.tolist()
        out["t0"] += result.times[0].tolist()
        print(f"  {method}: {chunk.stop}/{len(refs)} ({time.perf_counter() - started:.0f} s)", flush=True)
    out["wall_s"] = time.perf_counter() - started
    return out


def _xtb_one(item):
    from atomscreen.evaluate.calculators import calculate_all
    from atomscreen.relax.ase_relax import CalcSettings

    numbers, positions, fmax, max_steps = item
    settings = CalcSettings(relax=True, cell=False, fmax=fmax, max_steps=max_steps, optimizer="lbfgs",
                            trajectory_every=0)
    r = calculate_all([Atoms(numbers=numbers, positions=positions)], "xtb", settings)[0]
    return r.atoms.positions, r.n_steps, str(r.status) == "converged", r.wall_time_s


def run_xtb(refs, starts, args) -> dict:
    items = [(a.numbers, x, args.fmax, args.max_steps) for a, x in zip(refs, starts)]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        done = list(pool.map(_xtb_one, items, chunksize=4))
    wall = time.perf_counter() - started
    return {"positions": [d[0] for d in done], "steps": [d[1] for d in done], "converged": [d[2] for d in done],
            "wall_s": wall, "sequential_s": sum(d[3] for d in done)}


def run_mmff(refs, starts, args) -> dict:
    positions, converged = [], []
    started = time.perf_counter()
    for atoms, x in zip(refs, starts):
        mol, props = _mmff(atoms)
        ff = _mmff_field(mol, props, x)
        converged.append(ff.Minimize(maxIts=args.max_steps) == 0)
        positions.append(np.array(ff.Positions()).reshape(-1, 3))
    return {"positions": positions, "steps": None, "converged": converged, "wall_s": time.perf_counter() - started}


def run_rm(refs, starts, args) -> dict:
    from atomscreen.potentials.train import Checkpoint
    from atomscreen.relax.loop import RelaxSettings
    from atomscreen.relax.loop import relax as fire_relax

    model = Checkpoint.load(REPO / "models" / "qm7b_like.pt").build(device=args.device)
    structures = [Atoms(numbers=a.numbers, positions=x) for a, x in zip(refs, starts)]
    started = time.perf_counter()
    results = fire_relax(model, structures, RelaxSettings(fmax=args.rm_fmax, max_steps=args.max_steps, cell=False,
                                                          trajectory_every=0), device=args.device)
    return {"positions": [r.atoms.positions for r in results], "steps": [r.n_steps for r in results],
            "converged": [r.converged for r in results], "wall_s": time.perf_counter() - started}


def energies(refs, positions, method: str, args) -> list[float]:
    """Single-point energies (eV, NaN where it failed) of ``method`` (xtb or dft) at each geometry."""
    options = args.dft_options if method == "dft" else None
    items = [(method, a.numbers, x, options) for a, x in zip(refs, positions)]
    with ProcessPoolExecutor(args.jobs) as pool:
        return [e for e, _ in pool.map(single_point, items, chunksize=1 if method == "dft" else 4)]


def summarise(method, which, refs, starts, out, e_ref, e_ref_dft, args) -> dict:
    before = np.array([rmsd(x, a.positions) for a, x in zip(refs, starts)])
    after = np.array([rmsd(x, a.positions) for a, x in zip(refs, out["positions"])])
    ratio = after / before
    steps = None if out["steps"] is None else np.array(out["steps"])
    line = {"method": method, "inputs": which, "n": len(refs), "median_rmsd_ratio": round(float(np.median(ratio)), 3),
            "failure_pct": round(100 * float(np.mean(ratio >= 1)), 1),
            "failure_gt_pct": round(100 * float(np.mean(ratio > 1)), 1),
            "median_rmsd": round(float(np.median(after)), 3), "median_rmsd_in": round(float(np.median(before)), 3),
            "steps_median": None if steps is None else float(np.median(steps)),
            "steps_mean": None if steps is None else round(float(steps.mean()), 1),
            "converged_pct": round(100 * float(np.mean(out["converged"])), 1),
            "s_per_structure": round(out.get("sequential_s", out["wall_s"]) / len(refs), 4),
            "wall_s": round(out["wall_s"], 1), "device": args.device if method.startswith(("morered", "rm")) else "cpu"}
    if steps is not None:
        line["structure_steps_per_s"] = round(float(steps.sum()) / out["wall_s"], 1)
    if "t0" in out:
        line["rho_time_rmsd"] = round(float(np.corrcoef(out["t0"], before)[0, 1]), 3)
    e = np.array(energies(refs, out["positions"], "xtb", args))
    delta = (e - e_ref) / KCAL
    line["median_dE_xtb_kcal"] = round(float(np.nanmedian(delta)), 2)
    line["xtb_failed"] = int(np.isnan(e).sum())
    if args.dft:
        d = (np.array(energies(refs[:args.dft], out["positions"][:args.dft], "dft", args)) - e_ref_dft) / KCAL
        line["dft_n"], line["median_dE_dft_kcal"] = args.dft, round(float(np.nanmedian(d)), 2)
        line["dft_level"] = "{xc}/{basis}".format(**{**DFT_DEFAULTS, **args.dft_options})
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "diffusion_qm9.pt")
    parser.add_argument("--n", type=int, default=500, help="reference molecules (inputs per set)")
    parser.add_argument("--skip", type=int, default=60_000, help="first QM9 row to draw test molecules from")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--temperature", type=float, default=300.0, help="K, normal-mode inputs")
    parser.add_argument("--max-steps", type=int, default=1000, help="every method (MoreRed: T = 1000)")
    parser.add_argument("--fmax", type=float, default=0.05, help="eV/Å, xTB L-BFGS (design spec pitfall 8)")
    parser.add_argument("--rm-fmax", type=float, default=0.001, help="eV/Å, RM FIRE (examples/qm7b_like.yaml)")
    parser.add_argument("--batch", type=int, default=250, help="molecules relaxed together by MoreRed")
    parser.add_argument("--jobs", type=int, default=2, help="processes for xTB and DFT")
    parser.add_argument("--dft", type=int, default=0, help="DFT single points for the first K molecules per set")
    parser.add_argument("--dft-options", type=json.loads, default={},
                        help='PySCF options as JSON, e.g. \'{"basis": "6-31g*", "density_fit": true}\' (default: '
                             'QM9\'s B3LYP/6-31G(2df,p), ~20 min per QM9 molecule on one core)')
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    checkpoint = DenoiserCheckpoint.load(args.model)
    refs = references(checkpoint, args.n, args.skip)
    e_ref = np.array(energies(refs, [a.positions for a in refs], "xtb", args))
    e_ref_dft = np.array(energies(refs[:args.dft], [a.positions for a in refs[:args.dft]], "dft", args)) \
        if args.dft else None
    model_info = {"parameters": count_parameters(checkpoint.build()[0]), "training_steps": checkpoint.metrics["steps"]}
    for which in args.sets:
        starts = inputs(refs, which, checkpoint, args)
        for method in args.methods:
            if method.startswith("morered"):
                out = run_morered(method, refs, starts, checkpoint, args)
            else:
                out = {"xtb": run_xtb, "mmff94": run_mmff, "rm-fire": run_rm}[method](refs, starts, args)
            line = summarise(method, which, refs, starts, out, e_ref, e_ref_dft, args)
            if method.startswith("morered"):
                line.update(model_info)
            emit(line, args.out)


if __name__ == "__main__":
    main()
