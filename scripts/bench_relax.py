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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="random C8 cells")
    parser.add_argument("--steps", type=int, default=100, help="max FIRE steps per structure")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--ase-subset", type=int, default=None, help="run the ASE loop on only this many cells (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    # the paper's one-shot diamond architecture; weights scaled so forces are O(1 eV/Å) and relaxations take real steps
    model = RMPotential(RMConfig(cutoff=4.5, l_max=3, nu_max=3, n_embedding=1, elements=(6,)))
    with torch.no_grad():
        model.mlp[-1].weight.mul_(50.0)
    model = model.to(device=args.device, dtype=dtype).eval()
    cells = random_structures({"C": 8}, args.n, RandomSpec(volume_per_atom=5.67, volume_factor=(0.86, 1.27), min_separation=1.2), seed=args.seed)
    settings = RelaxSettings(fmax=args.fmax, max_steps=args.steps, cell=True, trajectory_every=0, max_systems=args.n)
    common = {"n_structures": args.n, "atoms_per_structure": 8, "max_steps": args.steps, "device": args.device, "dtype": args.dtype,
              "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}

    relax(model, cells[:4], RelaxSettings(fmax=args.fmax, max_steps=3, cell=True, trajectory_every=0), device=args.device, dtype=dtype)  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    results = relax(model, cells, settings, device=args.device, dtype=dtype)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    batched_s = time.perf_counter() - start
    batched_steps = sum(r.n_steps + 1 for r in results)  # evaluations: one per step plus the final check
    batched = {"path": "batched_fire", **common, "wall_s": batched_s, "structure_steps": batched_steps,
               "structure_steps_per_s": batched_steps / batched_s, "structures_per_s": args.n / batched_s,
               "converged": sum(r.converged for r in results)}
    print(json.dumps(batched), flush=True)

    subset = cells[: args.ase_subset or args.n]
    calculator = RMCalculator(model, device=args.device, dtype=dtype)
    start, ase_steps, ase_converged = time.perf_counter(), 0, 0
    for atoms in subset:
        atoms = atoms.copy()
        atoms.calc = calculator
        optimizer = FIRE(FrechetCellFilter(atoms), logfile=None)
        ase_converged += bool(optimizer.run(fmax=args.fmax, steps=args.steps))
        ase_steps += optimizer.nsteps + 1
    ase_s = time.perf_counter() - start
    ase = {"path": "ase_fire_loop", **common, "n_structures": len(subset), "wall_s": ase_s, "structure_steps": ase_steps,
           "structure_steps_per_s": ase_steps / ase_s, "structures_per_s": len(subset) / ase_s, "converged": ase_converged}
    print(json.dumps(ase), flush=True)
    print(json.dumps({"ratio_structure_steps_per_s": batched["structure_steps_per_s"] / ase["structure_steps_per_s"],
                      "ratio_structures_per_s": batched["structures_per_s"] / ase["structures_per_s"]}), flush=True)


if __name__ == "__main__":
    main()
