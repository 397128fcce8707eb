"""Batched MoreRed relaxation throughput (structure-steps per second, seconds per batched step) on each device, in one
run, against the first device as the baseline; MoreRed reports 0.05 s per step for 128 molecules (§3.2, one GPU).
Inputs: QM9 test-split molecules of the shipped denoiser (it never saw them) noised by --t forward steps; every
method runs at most --max-steps steps (the per-step cost is what is measured, not convergence). JSON lines.

    python scripts/bench_morered_throughput.py --devices cpu [cuda] --n 128 [--data build/qm9.npz]

The molecules come from a packed QM9 file (scripts/pack_qm9.py), so the device machine needs no qm9pack.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from benchlib import emit

from atomscreen.diffusion.checkpoint import DenoiserCheckpoint
from atomscreen.diffusion.forward import centre, noised
from atomscreen.diffusion.relax import METHODS, relax

REPO = Path(__file__).resolve().parents[1]


def test_molecules(checkpoint: DenoiserCheckpoint, data: Path, n: int):
    """(numbers [N], positions [N, 3] float64, molecule index [N]) of the first n packed molecules outside the
    checkpoint's training and validation split."""
    packed = np.load(data)
    seen = checkpoint.seen_ids()
    offsets = np.concatenate([[0], np.cumsum(packed["sizes"])])
    chosen = [k for k, i in enumerate(packed["ids"].tolist()) if i not in seen][:n]
    if len(chosen) < n:
        raise SystemExit(f"{data}: only {len(chosen)} test-split molecules, asked for {n}")
    rows = np.concatenate([np.arange(offsets[k], offsets[k + 1]) for k in chosen])
    mol = np.repeat(np.arange(n), packed["sizes"][chosen])
    return (torch.tensor(packed["numbers"][rows].astype(np.int64)),
            torch.tensor(packed["positions"][rows].astype(np.float64)), torch.tensor(mol))


def run(checkpoint, device: str, method: str, numbers, x, mol, n: int, args) -> dict:
    model, schedule = checkpoint.build(dtype=getattr(torch, args.dtype), device=device)
    numbers, x, mol = numbers.to(device), x.to(device), mol.to(device)
    species = model.species(numbers)
    x0 = centre(x, mol, n)
    x_t, _ = noised(x0, torch.full((n,), args.t, device=device), mol, schedule,
                    generator=torch.Generator(device=device).manual_seed(args.seed))
    relax(model, schedule, species, mol, n, x_t, method=method, seeds=args.seed, max_steps=2)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = relax(model, schedule, species, mol, n, x_t, method=method, seeds=args.seed, max_steps=args.max_steps)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    steps = out.steps.cpu()
    iterations = int(steps.max())
    return {"method": method, "device": device, "dtype": args.dtype, "n": n, "t_noise": args.t,
            "max_steps": args.max_steps, "iterations": iterations, "structure_steps": int(steps.sum()),
            "wall_s": round(wall, 3), "structure_steps_per_s": round(float(steps.sum()) / wall, 1),
            "s_per_step": round(wall / max(iterations, 1), 5), "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "diffusion_qm9.pt")
    parser.add_argument("--data", type=Path, default=REPO / "build" / "qm9.npz", help="scripts/pack_qm9.py output")
    parser.add_argument("--devices", nargs="+", default=["cpu"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--n", type=int, default=128, help="molecules relaxed together (MoreRed: 128)")
    parser.add_argument("--t", type=int, default=250, help="forward steps of noise on the inputs")
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = DenoiserCheckpoint.load(args.model)
    numbers, x, mol = test_molecules(checkpoint, args.data, args.n)
    baseline: dict[str, dict] = {}
    for device in args.devices:
        for method in args.methods:
            line = run(checkpoint, device, method, numbers, x, mol, args.n, args)
            base = baseline.setdefault(method, line)
            if base is not line:
                line["speedup_vs_" + base["device"]] = round(line["structure_steps_per_s"]
                                                             / base["structure_steps_per_s"], 2)
            emit(line)


if __name__ == "__main__":
    main()
