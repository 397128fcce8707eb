"""Train a denoiser from a recipe (examples/train_diffusion_qm9.yaml, or its JSON twin for the device machine, which
has no pydantic/yaml) on packed QM9 (scripts/pack_qm9.py), with resume checkpoints; the same code path as
`platform train` with kind: denoiser.

    python scripts/train_denoiser.py examples/train_diffusion_qm9.yaml --data build/qm9.npz --out models/x.pt \
        [--device cuda] [--max-seconds 540] [--steps N] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from atomscreen.diffusion.data import load_npz, split
from atomscreen.diffusion.train import split_denoiser_hyperparameters, train_denoiser


def _recipe(path: Path) -> dict:
    if path.suffix == ".json":
        return json.loads(path.read_text())
    import yaml

    return yaml.safe_load(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = _recipe(args.recipe)
    model_cfg, train_cfg = split_denoiser_hyperparameters(recipe.get("hyperparameters", {}))
    overrides = {"device": args.device, "seed": recipe.get("seed", 0), "max_seconds": args.max_seconds,
                 "steps": args.steps}
    train_cfg = dataclasses.replace(train_cfg, **{k: v for k, v in overrides.items() if v is not None})
    data = load_npz(args.data)
    sizes = recipe.get("split", {})
    molecules = split(len(data), sizes.get("train", 55000), sizes.get("validation", 10000), train_cfg.seed)
    started = time.perf_counter()

    def progress(step: int, record: dict) -> None:
        if "val_loss" in record:
            print(json.dumps({k: (round(float(v), 5) if isinstance(v, float) or hasattr(v, "item") else v)
                              for k, v in record.items()}
                             | {"elapsed_s": round(time.perf_counter() - started, 1)}), flush=True)

    checkpoint = train_denoiser(data, molecules, model_cfg, train_cfg, source=recipe.get("source", "qm9pack"),
                                resume_path=args.out.with_suffix(".resume.pt"), progress=progress)
    checkpoint.save(args.out)
    print(json.dumps({"saved": str(args.out), **{k: v for k, v in checkpoint.metrics.items() if k != "history"}}),
          file=sys.stderr)


if __name__ == "__main__":
    main()
