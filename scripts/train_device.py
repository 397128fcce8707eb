"""Train an RM potential from a packed training set (scripts/pack_training_set.py) on any device, with only torch,
numpy, scipy, ase and vesin installed: the GPU path of `platform train`.

Prints one JSON line per validated epoch and a summary (parameters, steps, epochs, s/epoch, device, wall time), and
writes the checkpoint (best-validation EMA weights if the hyperparameters say keep: best). Usage:
    python scripts/train_device.py build/device/qm7b-like.json --device cuda --batch-size 256 --max-seconds 400 \\
        --output $OUT/qm7b_like.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from ase.io import read

from atomscreen.potentials.train import split_hyperparameters, train


def main() -> None:
    args = _parser().parse_args()
    meta = json.loads(Path(args.meta).read_text())
    structures = read(Path(args.meta).with_suffix("").as_posix() + ".extxyz.gz", index=":")
    model_cfg, response_cfg, train_cfg = split_hyperparameters(meta["hyperparameters"])
    overrides = {"seed": meta["seed"]} if "seed" not in meta["hyperparameters"] else {}
    overrides.update({k: v for k, v in (("device", args.device), ("batch_size", args.batch_size),
                                        ("epochs", args.epochs), ("max_seconds", args.max_seconds),
                                        ("steps_per_epoch", args.steps_per_epoch)) if v is not None})
    train_cfg = dataclasses.replace(train_cfg, **overrides)
    t0 = time.perf_counter()

    def progress(epoch: int, record: dict) -> None:
        if epoch == 1 or epoch % args.print_every == 0:
            print(json.dumps({"epoch": epoch, **{k: record[k] for k in ("train_loss", "val_loss", "lr", "elapsed_s")}}),
                  flush=True)

    checkpoint = train(structures, model_cfg, response_cfg, train_cfg, source=meta["split"]["source"],
                       progress=progress)
    checkpoint.training_data["split"] = meta["split"]
    if args.output:
        checkpoint.save(args.output)
    m = checkpoint.metrics
    print(json.dumps({"summary": True, "n_parameters": m["n_parameters"], "steps": m["steps"], "epochs": m["epochs"],
                      "s_per_epoch": m["train_time_s"] / m["epochs"], "batch_size": train_cfg.batch_size,
                      "device": train_cfg.device, "wall_s": time.perf_counter() - t0, "val_loss": m["val_loss"],
                      "best_val_loss": m.get("best_val_loss"), "best_epoch": m.get("best_epoch"),
                      "n_structures": len(structures), "output": args.output}), flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("meta", help="the .json written by pack_training_set.py (the .extxyz.gz lies beside it)")
    parser.add_argument("--device", help="cpu or cuda (default: the hyperparameters')")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--steps-per-epoch", type=int)
    parser.add_argument("--max-seconds", type=float, help="stop after the epoch that passes this wall time")
    parser.add_argument("--print-every", type=int, default=1)
    parser.add_argument("--output", help="checkpoint file to write")
    return parser


if __name__ == "__main__":
    main()
