"""MoreRed Table B1 in one run: DDPM and MoreRed-JT on the shipped denoiser, beside the RM random search (the shipped
RM model, the RM authors' protocol of examples/qm7b_like.yaml) on the same compositions drawn from the denoiser's QM9
test split; plus sampling throughput and the model's size and training budget. JSON lines, one per method.

    python scripts/bench_generation.py --n 1000 --rss-n 100 --jobs 2 [--device cuda] [--out build/bench.jsonl]

Validity (V), uniqueness (U) and novelty against all of QM9 (N) follow the G-SchNet analysis MoreRed used
(atomscreen.evaluate.generation); EDM atom and molecule stability beside them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
from ase import Atoms
from sample_denoiser import generate  # scripts/ is on the path when this file runs as a script

from atomscreen.campaign import load_campaign
from atomscreen.compute import plan, tasks
from atomscreen.diffusion.checkpoint import DenoiserCheckpoint
from atomscreen.diffusion.data import draw_compositions
from atomscreen.diffusion.painn import count_parameters
from atomscreen.evaluate.generation import connected_valence, qm9_reference, table_b1
from atomscreen.evaluate.validity import edm_stability
from atomscreen.potentials.train import Checkpoint

REPO = Path(__file__).resolve().parents[1]


def _scores(molecules: list[Atoms], reference: set[str]) -> dict:
    judged = [connected_valence(a.numbers, a.positions) for a in molecules]
    table = table_b1(judged, reference)
    stability = [edm_stability(a) for a in molecules]
    return {"n": table.n, "valid_pct": round(table.valid_pct, 2), "valid_unique_pct": round(table.valid_unique_pct, 2),
            "valid_unique_novel_pct": round(table.valid_unique_novel_pct, 2),
            "edm_atom_stable_pct": round(100 * float(np.mean([s[0] for s in stability])), 2),
            "edm_molecule_stable_pct": round(100 * float(np.mean([bool(s[1]) for s in stability])), 2)}


def run_diffusion(checkpoint, formulas, sampler, args) -> tuple[dict, list[Atoms]]:
    result = generate(checkpoint, formulas, sampler, max_steps=args.max_steps, batch=args.batch, device=args.device,
                      seed=args.seed)
    return _timing(sampler, result, args.device), _molecules(result)


def _molecules(result) -> list[Atoms]:
    ends = np.cumsum(result["sizes"])
    return [Atoms(numbers=result["numbers"][e - n:e], positions=result["positions"][e - n:e])
            for n, e in zip(result["sizes"], ends)]


def _timing(sampler: str, result, device: str) -> dict:
    wall, steps = float(result["wall_s"]), result["steps"]
    return {"method": sampler, "molecules_per_s": round(len(steps) / wall, 3),
            "reverse_steps_per_s": round(float(steps.sum()) / wall, 1), "mean_steps": round(float(steps.mean()), 1),
            "converged_pct": round(100 * float(np.mean(result["converged"])), 2), "wall_s": round(wall, 1),
            "device": device}


def run_rss(formulas, args) -> tuple[dict, list[Atoms], list[bool]]:
    """The RM random search of examples/qm7b_like.yaml (its model, box, stages) on these compositions."""
    spec = load_campaign(REPO / "examples" / "qm7b_like.yaml")
    counts = Counter(formulas)
    checkpoint = Checkpoint.load(REPO / "models" / "qm7b_like.pt")
    ref = tasks.ModelRef(checkpoint.sha256, checkpoint.model, checkpoint.weights_bytes())
    molecules, converged, started = [], [], time.perf_counter()
    for formula, count in sorted(counts.items()):
        block = spec.generators.rss_blocks[0].model_copy(update={"samples_per_composition": count, "seed": args.seed})
        one = spec.model_copy(update={"compositions": spec.compositions.model_copy(update={"formulas": [formula]})})
        for planned in plan.rss_tasks(one, block, checkpoint.training_data):
            for s in tasks.rss_task(planned.job, ref).structures:
                molecules.append(Atoms(numbers=s.numbers, positions=s.positions))
                converged.append(str(s.status) == "converged")
        print(f"  rm-rss: {len(molecules)}/{len(formulas)} molecules, {time.perf_counter() - started:.0f} s",
              flush=True)
    wall = time.perf_counter() - started
    return {"method": "rm-rss", "molecules_per_s": round(len(molecules) / wall, 3), "wall_s": round(wall, 1),
            "converged_pct": round(100 * float(np.mean(converged)), 2), "model": "models/qm7b_like.pt",
            "protocol": "examples/qm7b_like.yaml"}, molecules, converged


def _method(method: str, args, formulas: list[str]) -> dict:
    """One method's line: sampled (or RSS-relaxed) here, scored by MoreRed's rule against all of QM9."""
    import torch

    torch.set_num_threads(args.threads)
    reference = qm9_reference()
    if method == "rm-rss":
        timing, molecules, converged = run_rss(formulas[:args.rss_n], args)
        kept = [a for a, c in zip(molecules, converged) if c]
        return {**timing, **_scores(molecules, reference), "device": "cpu", "threads": args.threads,
                "valid_pct_of_converged": _scores(kept, reference)["valid_pct"] if kept else None}
    checkpoint = DenoiserCheckpoint.load(args.model)
    timing, molecules = run_diffusion(checkpoint, formulas, method, args)
    return {**timing, **_scores(molecules, reference), **_model_info(checkpoint, args), "threads": args.threads}


def _model_info(checkpoint, args) -> dict:
    return {"parameters": count_parameters(checkpoint.build()[0]), "training_steps": checkpoint.metrics["steps"],
            "training_batch": checkpoint.training["batch_size"], "training_seconds": checkpoint.metrics.get("seconds"),
            "training_device": checkpoint.training["device"],
            "model_file": str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "diffusion_qm9.pt")
    parser.add_argument("--n", type=int, default=1000, help="molecules per sampler")
    parser.add_argument("--rss-n", type=int, default=100, help="random-search molecules (the first of the same draw)")
    parser.add_argument("--methods", nargs="+", default=["ddpm", "morered-jt", "rm-rss"])
    parser.add_argument("--max-steps", type=int, default=2000, help="adaptive samplers' cap (MoreRed App. B.5)")
    parser.add_argument("--batch", type=int, default=250, help="molecules sampled together")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="methods run side by side, one process each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per method")
    parser.add_argument("--out", type=Path, default=None, help="also append the JSON lines here")
    parser.add_argument("--samples", type=Path, nargs="*", default=[],
                        help="score molecules saved by scripts/sample_denoiser.py (e.g. on the GPU) instead of "
                             "sampling here; their timing is read from SAMPLES.json")
    args = parser.parse_args()
    checkpoint = DenoiserCheckpoint.load(args.model)
    formulas = draw_compositions(checkpoint.training_data["test_compositions"], args.n, args.seed)
    qm9_reference()  # computed once (cached) before the methods start
    lines = []
    for path in args.samples:
        with np.load(path) as data:
            result = dict(data)
        timing = json.loads(path.with_suffix(".json").read_text())
        lines.append({**timing, **_scores(_molecules(result), qm9_reference()), **_model_info(checkpoint, args)})
        print(json.dumps(lines[-1]), flush=True)
    methods = [m for m in args.methods if not args.samples or m == "rm-rss"]
    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_method, m, args, formulas) for m in methods]
            for future in futures:
                lines.append(future.result())
                print(json.dumps(lines[-1]), flush=True)
    else:
        for method in methods:
            lines.append(_method(method, args, formulas))
            print(json.dumps(lines[-1]), flush=True)
    if args.out is not None:
        with args.out.open("a") as stream:
            stream.writelines(json.dumps(line) + "\n" for line in lines)


if __name__ == "__main__":
    main()
