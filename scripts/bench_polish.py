"""Rothchild et al. (2024, §5.1) with GFN2-xTB as the quantum method: SMILES of QM9 test-split molecules -> RDKit ETKDG
+ MMFF94 -> (no polish | the denoiser's last 20 | last 50 reverse steps) -> GFN2-xTB relaxation (ASE BFGS, fmax 0.03
eV/Å, the paper's setting); plus a row that starts xTB from the QM9 geometry (the best a perfect denoiser could do).
Per start: xTB energy above the molecule's xTB minimum (kcal/mol; the minimum is relaxed from the QM9 geometry to a
tighter fmax, design spec pitfall 9) and xTB optimizer steps; per polished start, the per-structure step reduction
100 (1 - N_polish / N_mmff) (the authors' speedup). JSON lines, one per start.

    python scripts/bench_polish.py --n 100 --jobs 2 [--out build/bench_polish.jsonl]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from benchlib import emit

from atomscreen.data.qm9 import read_qm9
from atomscreen.diffusion.checkpoint import DenoiserCheckpoint
from atomscreen.diffusion.relax import polish
from atomscreen.evaluate.conformers import mmff_conformer

REPO = Path(__file__).resolve().parents[1]
KCAL = units.kcal / units.mol  # eV per kcal/mol


def molecules(checkpoint: DenoiserCheckpoint, n: int, skip: int, seed: int) -> list[tuple[Atoms, Atoms]]:
    """(QM9 geometry, ETKDG + MMFF94 start from its SMILES) for the first n test-split molecules RDKit can embed
    whose start has the QM9 molecule's formula."""
    known = checkpoint.seen_ids()
    out = []
    for atoms in read_qm9(limit=40 * n, skip=skip):
        if atoms.info["qm9_index"] in known:
            continue
        try:
            start = mmff_conformer(atoms.info["smiles"], seed=seed)
        except ValueError:
            continue
        if start.get_chemical_formula() == atoms.get_chemical_formula():
            out.append((atoms, start))
        if len(out) == n:
            return out
    raise SystemExit(f"only {len(out)} usable test molecules in QM9 rows {skip}..{skip + 40 * n}")


def polished(starts: list[Atoms], steps: int, checkpoint, args) -> list[Atoms]:
    """Each start after the last ``steps`` reverse steps of the denoiser (atom types fixed, no noise added first)."""
    model, schedule = checkpoint.build(device=args.device)
    numbers = torch.tensor(np.concatenate([a.numbers for a in starts]), device=args.device)
    x = torch.tensor(np.concatenate([a.positions for a in starts]), dtype=torch.float64, device=args.device)
    mol = torch.repeat_interleave(torch.arange(len(starts)), torch.tensor([len(a) for a in starts])).to(args.device)
    out = polish(model, schedule, model.species(numbers), mol, len(starts), x, steps=steps, seeds=args.seed)
    flat, ends = out.positions.cpu().numpy(), np.cumsum([len(a) for a in starts])
    return [Atoms(numbers=a.numbers, positions=flat[e - len(a):e]) for a, e in zip(starts, ends)]


def _xtb(item):
    from atomscreen.evaluate.calculators import calculate_all, single_points
    from atomscreen.relax.ase_relax import CalcSettings

    numbers, positions, fmax, max_steps = item
    atoms = Atoms(numbers=numbers, positions=positions)
    start_energy = single_points([atoms], "xtb")[0][0]
    settings = CalcSettings(relax=True, cell=False, fmax=fmax, max_steps=max_steps, optimizer="bfgs",
                            trajectory_every=0)
    r = calculate_all([atoms], "xtb", settings)[0]
    return start_energy, r.energy, r.n_steps, str(r.status) == "converged"


def relax_all(structures: list[Atoms], fmax: float, args) -> list[tuple]:
    items = [(a.numbers, a.positions, fmax, args.max_steps) for a in structures]
    with ProcessPoolExecutor(args.jobs) as pool:
        return list(pool.map(_xtb, items, chunksize=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "diffusion_qm9.pt")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--skip", type=int, default=60_000, help="first QM9 row to draw test molecules from")
    parser.add_argument("--polish", type=int, nargs="+", default=[20, 50], help="reverse steps")
    parser.add_argument("--fmax", type=float, default=0.03, help="eV/Å (Rothchild et al.)")
    parser.add_argument("--reference-fmax", type=float, default=0.005, help="eV/Å, the xTB minimum from QM9")
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    checkpoint = DenoiserCheckpoint.load(args.model)
    pairs = molecules(checkpoint, args.n, args.skip, args.seed)
    reference = relax_all([q for q, _ in pairs], args.reference_fmax, args)
    minimum = np.array([r[1] for r in reference])
    starts = {"qm9": [q for q, _ in pairs], "mmff": [s for _, s in pairs]}
    timing = {}
    for steps in args.polish:
        begun = time.perf_counter()
        starts[f"polish{steps}"] = polished(starts["mmff"], steps, checkpoint, args)
        timing[f"polish{steps}"] = time.perf_counter() - begun
    runs = {name: relax_all(structures, args.fmax, args) for name, structures in starts.items()}
    mmff_steps = np.array([r[2] for r in runs["mmff"]], dtype=float)
    for name, results in runs.items():
        start_e, final_e, steps, converged = (np.array(v, dtype=float) for v in zip(*results))
        line = {"start": name, "n": len(results), "median_steps": float(np.median(steps)),
                "mean_steps": round(float(steps.mean()), 1),
                "median_start_kcal_per_mol": round(float(np.nanmedian((start_e - minimum) / KCAL)), 2),
                "mean_start_kcal_per_mol": round(float(np.nanmean((start_e - minimum) / KCAL)), 2),
                "median_final_kcal_per_mol": round(float(np.nanmedian((final_e - minimum) / KCAL)), 3),
                "converged_pct": round(100 * float(converged.mean()), 1), "fmax": args.fmax, "optimizer": "ase-bfgs"}
        if name != "mmff":
            reduction = 100 * (1 - steps / np.maximum(mmff_steps, 1))
            line["median_step_reduction_pct"] = round(float(np.median(reduction)), 1)
            line["p25_p75_step_reduction_pct"] = [round(float(np.percentile(reduction, q)), 1) for q in (25, 75)]
        if name in timing:
            line["polish_s_per_structure"] = round(timing[name] / len(results), 4)
            line["model_steps"] = checkpoint.metrics["steps"]
        emit(line, args.out)


if __name__ == "__main__":
    main()
