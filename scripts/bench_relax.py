"""Throughput of batched FIRE versus a loop of ASE FIRE, same RM model, same random C8 cells, one run.

Prints one JSON line per path and one with the ratio. Usage:
    python scripts/bench_relax.py [--n 256] [--steps 100] [--device cpu|cuda] [--dtype float64]
Both paths run the same number of FIRE steps at most (cell relaxed with the Frechet filter);
throughput is structure-steps per second and relaxed structures per second.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

from atomscreen.atoms.random import RandomSpec, random_structures
from atomscreen.potentials.calculator import RMCalculator
from atomscreen.potentials.rm import RMConfig, RMPotential
from atomscreen.relax import RelaxSettings, relax


def main() -> None:
    args = _parser().parse_args()
    dtype = getattr(torch, args.dtype)
    model = _model(args.seed, args.device, dtype)
    spec = RandomSpec(volume_per_atom=5.67, volume_factor=(0.86, 1.27), min_separation=1.2)
    cells = random_structures({"C": 8}, args.n, spec, seed=args.seed)
    common = {"n_structures": args.n, "atoms_per_structure": 8, "max_steps": args.steps, "device": args.device,
              "dtype": args.dtype, "torch_threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine()}
    batched = {"path": "batched_fire", **common, **_batched(model, cells, args, dtype)}
    print(json.dumps(batched), flush=True)
    subset = cells[: args.ase_subset or args.n]
    ase = {"path": "ase_fire_loop", **common, "n_structures": len(subset), **_ase_loop(model, subset, args, dtype)}
    print(json.dumps(ase), flush=True)
    print(json.dumps({"ratio_structure_steps_per_s": batched["structure_steps_per_s"] / ase["structure_steps_per_s"],
                      "ratio_structures_per_s": batched["structures_per_s"] / ase["structures_per_s"]}), flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="random C8 cells")
    parser.add_argument("--steps", type=int, default=100, help="max FIRE steps per structure")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--ase-subset", type=int, default=None,
                        help="run the ASE loop on only this many cells (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _model(seed: int, device: str, dtype: torch.dtype) -> RMPotential:
    """The paper's one-shot diamond architecture; weights scaled so forces are O(1 eV/Å) and relaxations take real
    steps."""
    torch.manual_seed(seed)
    model = RMPotential(RMConfig(cutoff=4.5, l_max=3, nu_max=3, n_embedding=1, elements=(6,)))
    with torch.no_grad():
        model.mlp[-1].weight.mul_(50.0)
    return model.to(device=device, dtype=dtype).eval()


def _batched(model, cells, args, dtype) -> dict:
    """Batched FIRE over all cells at once (after a warm-up on four)."""
    warm_up = RelaxSettings(fmax=args.fmax, max_steps=3, cell=True, trajectory_every=0)
    relax(model, cells[:4], warm_up, device=args.device, dtype=dtype)
    settings = RelaxSettings(fmax=args.fmax, max_steps=args.steps, cell=True, trajectory_every=0, max_systems=args.n)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    results = relax(model, cells, settings, device=args.device, dtype=dtype)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    wall_s = time.perf_counter() - start
    steps = sum(r.n_steps + 1 for r in results)  # evaluations: one per step plus the final check
    return {"wall_s": wall_s, "structure_steps": steps, "structure_steps_per_s": steps / wall_s,
            "structures_per_s": len(cells) / wall_s, "converged": sum(r.converged for r in results)}


def _ase_loop(model, cells, args, dtype) -> dict:
    """ASE's FIRE with FrechetCellFilter, one structure after another, on the same model."""
    calculator = RMCalculator(model, device=args.device, dtype=dtype)
    start, steps, converged = time.perf_counter(), 0, 0
    for atoms in cells:
        atoms = atoms.copy()
        atoms.calc = calculator
        optimizer = FIRE(FrechetCellFilter(atoms), logfile=None)
        converged += bool(optimizer.run(fmax=args.fmax, steps=args.steps))
        steps += optimizer.nsteps + 1
    wall_s = time.perf_counter() - start
    return {"wall_s": wall_s, "structure_steps": steps, "structure_steps_per_s": steps / wall_s,
            "structures_per_s": len(cells) / wall_s, "converged": converged}


if __name__ == "__main__":
    main()
