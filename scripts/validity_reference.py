"""The reference row of a validity table (the RM paper's Fig. 2a "QM7b" row): both checkers on training molecules.

Runs atomscreen's two checkers (RDKit rdDetermineBonds + PoseBusters; Open Babel bonds + PoseBusters' 2024 checks)
on every k-th structure of a training recipe's data set and prints one JSON line per composition group and one for all.
Usage:
    python scripts/validity_reference.py examples/train_qm7b_like.yaml --n 100 [--timeout 60]
"""

from __future__ import annotations

import argparse
import json

from atomscreen.campaign import load_training
from atomscreen.evaluate.validity import check_molecules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a train file, or a campaign whose (first) model has a train block")
    parser.add_argument("--n", type=int, default=100, help="molecules, evenly spaced over the training set")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per molecule")
    args = parser.parse_args()
    dataset = load_training(args.recipe)[1].dataset
    structures = dataset.read()
    chosen = structures[:: max(1, len(structures) // args.n)][: args.n]
    results = check_molecules(chosen, timeout_s=args.timeout)
    n = len(results)
    row = {"reference": dataset.label, "molecules": n, "of": len(structures),
           "sanitisable_pct": 100 * sum(r.checks["sanitization"] is True for r in results) / n,
           "all_checks_pct": 100 * sum(r.passes_all for r in results) / n,
           "ob_sanitisable_pct": 100 * sum(r.checks["ob_sanitization"] is True for r in results) / n,
           "ob_all_checks_pct": 100 * sum(r.checks["ob_passes_all"] is True for r in results) / n,
           "timeouts": sum(r.status == "timeout" for r in results)}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
