"""Generate molecules with a denoiser for compositions drawn from its test split and save them (torch and numpy only,
so it runs on the device machine); scripts/bench_generation.py --samples FILE scores them here.

    python scripts/sample_denoiser.py MODEL.pt --sampler ddpm --n 1000 --device cuda --out samples_ddpm.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from atomscreen.diffusion.checkpoint import DenoiserCheckpoint
from atomscreen.diffusion.data import draw_compositions
from atomscreen.diffusion.sample import sample

SYMBOLS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}


def numbers_of(formula: str) -> list[int]:
    """Atomic numbers of a Hill formula of H, C, N, O, F (no ASE needed)."""
    import re

    return [SYMBOLS[e] for e, c in re.findall(r"([A-Z][a-z]?)(\d*)", formula) for _ in range(int(c or 1))]


def generate(checkpoint: DenoiserCheckpoint, formulas: list[str], sampler: str, *, max_steps: int, batch: int,
             device: str, seed: int) -> dict:
    """Molecules for ``formulas`` in batches: flat arrays plus per-molecule steps and convergence, and the timing."""
    model, schedule = checkpoint.build(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    numbers, positions, steps, converged = [], [], [], []
    started = time.perf_counter()
    for start in range(0, len(formulas), batch):
        rows = [numbers_of(f) for f in formulas[start:start + batch]]
        z = torch.tensor([x for r in rows for x in r], device=device)
        mol = torch.repeat_interleave(torch.arange(len(rows), device=device),
                                      torch.tensor([len(r) for r in rows], device=device))
        out = sample(model, schedule, model.species(z), mol, len(rows), sampler=sampler, max_steps=max_steps,
                     generator=generator)
        numbers.append(z.cpu().numpy())
        positions.append(out.positions.cpu().numpy())
        steps += out.steps.tolist()
        converged += out.converged.tolist()
        print(f"  {sampler}: {start + len(rows)}/{len(formulas)} ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    return {"numbers": np.concatenate(numbers), "positions": np.concatenate(positions),
            "sizes": np.array([len(numbers_of(f)) for f in formulas]), "steps": np.array(steps),
            "converged": np.array(converged), "formulas": np.array(formulas), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--sampler", default="ddpm")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    checkpoint = DenoiserCheckpoint.load(args.model)
    formulas = draw_compositions(checkpoint.training_data["test_compositions"], args.n, args.seed)
    result = generate(checkpoint, formulas, args.sampler, max_steps=args.max_steps, batch=args.batch,
                      device=args.device, seed=args.seed)
    np.savez_compressed(args.out, **{k: v for k, v in result.items() if k != "wall_s"})
    wall = result["wall_s"]
    print(json.dumps({"method": args.sampler, "n": args.n, "device": args.device, "wall_s": round(wall, 1),
                      "molecules_per_s": round(args.n / wall, 3),
                      "reverse_steps_per_s": round(float(result["steps"].sum()) / wall, 1),
                      "mean_steps": round(float(result["steps"].mean()), 1),
                      "converged_pct": round(100 * float(result["converged"].mean()), 2)}))


if __name__ == "__main__":
    main()
