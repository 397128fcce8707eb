"""Pack a training recipe's data set and hyperparameters for a machine without the platform's dependencies.

Writes DIR/NAME.extxyz.gz (the structures, with their QM9 SMILES and row in info), DIR/NAME.json (hyperparameters,
seed, the split: source, skip, limit, filters, count, sha256) so `scripts/train_device.py` can train there with only
torch, numpy, scipy, ase and vesin. Usage:
    python scripts/pack_training_set.py examples/train_qm7b_like.yaml --out build/device
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from ase.io import write

from atomscreen.campaign import load_training
from atomscreen.potentials.train import describe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a train file, or a campaign whose (first) model has a train block")
    parser.add_argument("--out", default="build/device", help="folder to write to (default build/device)")
    args = parser.parse_args()
    name, train = load_training(args.recipe)
    structures = train.dataset.read()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{name}.extxyz.gz"
    with gzip.open(data, "wt") as handle:
        write(handle, structures, format="extxyz")
    split = {"source": train.dataset.label, **train.dataset.model_dump(exclude={"path"}),
             **{k: v for k, v in describe(structures, train.dataset.label).items() if k != "compositions"}}
    meta = {"name": name, "hyperparameters": train.hyperparameters, "seed": train.seed, "split": split}
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps({"structures": len(structures), "data": str(data), "bytes": data.stat().st_size,
                      "sha256": split["sha256"]}))


if __name__ == "__main__":
    main()
