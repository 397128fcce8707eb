"""Pseudo energy versus reference energy (Response Matching paper, Fig. 1, here for crystals).

Train the RM potential of a campaign file (its `model.train` block: data set and hyperparameters), relax
structures of a data set with reference energies on it (atoms and cell, starting from the DFT structure),
and report the Pearson correlation between the pseudo energy per atom and the reference column, separately
for the training structures and for held-out rows of the same file.

    python scripts/pseudo_vs_reference.py examples/carbon24.yaml --column energy_per_atom
    python scripts/pseudo_vs_reference.py examples/perovskite.yaml --column heat_ref

Prints one JSON line per set (n, pearson_r, spearman_r, pearson_r_after_element_fit) and writes a scatter
plot (--out). pearson_r_after_element_fit correlates what is left of both energies after a least-squares fit of
per-element energies on atom fractions (fitted on the training set): the composition trend removed, as the paper's
Fig. 1b does by comparing molecules of one composition. For a one-element set it equals pearson_r.
The training file of carbon24.yaml is carbon_24 (energy_per_atom: DFT total energy per atom, eV);
perov_5's heat_ref is the heat of formation (eV/atom, Castelli et al.).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from atomscreen.campaign import load_campaign
from atomscreen.compute.models import configs, train_from_spec
from atomscreen.data import read_dataset
from atomscreen.potentials.train import Checkpoint
from atomscreen.relax import RelaxSettings, RelaxStatus, relax


def _stored_model(url: str, spec, training):
    """The model a run of this campaign stored (matched by training recipe), or None."""
    from atomscreen.compute.models import training_recipe
    from atomscreen.potentials.train import describe, load_model
    from atomscreen.store import make_engine, model_by_recipe, transaction

    recipe = training_recipe(spec.model.train, describe(training)["sha256"])
    with transaction(make_engine(url)) as session:
        row = model_by_recipe(session, "rm_potential", recipe)
    return None if row is None else (row.id, load_model(row.hyperparameters["model"], row.weights))


def _elements(structures) -> list[str]:
    return sorted({s for a in structures for s in a.get_chemical_symbols()})


def _element_fractions(structures, elements: list[str]) -> np.ndarray:
    """Atom fraction of each element per structure (rows sum to 1 over known elements)."""
    index = {e: k for k, e in enumerate(elements)}
    out = np.zeros((len(structures), len(elements)))
    for row, atoms in enumerate(structures):
        for symbol in atoms.get_chemical_symbols():
            if symbol in index:
                out[row, index[symbol]] += 1.0 / len(atoms)
    return out


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    spec = load_campaign(args.campaign)
    block = spec.model.train
    if block is None:
        parser.error(f"{args.campaign} has no model.train block")
    training, held_out = _rows(parser, args, block.dataset)
    torch.set_num_threads(torch.get_num_threads())
    t0 = time.perf_counter()
    model, stored = _model(args, spec, block, training)
    train_s = time.perf_counter() - t0
    results, fits, points = {}, {}, {}
    lines = ["set,source_row,reference,pseudo_per_atom,status"]
    for name, members in (("training", training), ("held_out", held_out)):
        if len(members) < 3:
            continue
        results[name], points[name], set_lines = _evaluate(name, members, model, args, fits)
        lines += set_lines
        print(json.dumps({"campaign": spec.name, "column": args.column, **results[name],
                          ("load_s" if stored else "train_s"): round(train_s, 1)}), flush=True)
    _figure(results, points, args.column, spec.name, args.out)
    print(f"figure written to {args.out}")
    if args.csv:
        Path(args.csv).write_text("\n".join(lines) + "\n")
        print(f"per-structure energies written to {args.csv}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("campaign", help="campaign YAML with a model.train block")
    parser.add_argument("--column", required=True,
                        help="reference energy column of the data set (e.g. energy_per_atom, heat_ref)")
    parser.add_argument("--held-out", type=int, default=500,
                        help="rows after the training rows to evaluate (default 500)")
    parser.add_argument("--checkpoint",
                        help="use this trained checkpoint instead of training (written here after training if absent)")
    parser.add_argument("--db",
                        help="database of a run of this campaign: reuse its model if the training recipe is the same")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--out", default="pseudo_vs_reference.png")
    parser.add_argument("--csv", help="also write one line per structure "
                                      "(set, row, reference, pseudo eV/atom, relaxation status)")
    return parser


def _rows(parser: argparse.ArgumentParser, args, dataset):
    """(training rows, held-out rows) of the campaign's training file; every row must have the reference column."""
    rows = read_dataset(dataset.format, dataset.path, name=dataset.name, skip=dataset.skip,
                        limit=(dataset.limit or 0) + args.held_out if dataset.limit else None)
    n_train = dataset.limit or len(rows)
    missing = [a.info.get("source_row") for a in rows if args.column not in a.info]
    if missing:
        parser.error(f"column {args.column!r} missing in {len(missing)} rows of {dataset.path} "
                     f"(first rows {missing[:3]})")
    return rows[:n_train], rows[n_train:]


def _model(args, spec, block, training):
    """(model, stored): the campaign's stored model (``--db``), a checkpoint (``--checkpoint``), or a fresh training."""
    stored = _stored_model(args.db, spec, training) if args.db else None
    if stored is not None:
        model_id, model = stored
        print(f"model {model_id} from {args.db}: same data, hyperparameters and seed as {args.campaign}", flush=True)
        return model, True
    if args.checkpoint and Path(args.checkpoint).exists():
        return Checkpoint.load(args.checkpoint).build(), False
    epochs = configs(block)[2].epochs

    def progress(epoch: int, record: dict) -> None:
        if epoch % max(1, epochs // 10) == 0:
            print(f"epoch {epoch}/{epochs} val loss {record['val_loss']:.4g}", flush=True)

    checkpoint = train_from_spec(block, training, progress=progress)
    if args.checkpoint:
        checkpoint.save(args.checkpoint)
    return checkpoint.build(), False


def _evaluate(name: str, members, model, args, fits: dict):
    """Relax one set; returns its summary, its (reference, pseudo) points and its CSV lines.

    ``fits`` holds the per-element energies, fitted on the first set (training) and applied to both.
    """
    t1 = time.perf_counter()
    settings = RelaxSettings(fmax=args.fmax, max_steps=args.max_steps, cell=True, max_systems=64)
    relaxed = relax(model, members, settings)
    ok = [i for i, r in enumerate(relaxed) if r.status != RelaxStatus.EXPLODED and np.isfinite(r.energy)]
    pseudo = np.array([relaxed[i].energy / len(members[i]) for i in ok])
    reference = np.array([float(members[i].info[args.column]) for i in ok])
    converged = sum(relaxed[i].status == RelaxStatus.CONVERGED for i in ok)
    fractions = _element_fractions([members[i] for i in ok], fits.setdefault("elements", _elements(members)))
    if "pseudo" not in fits:
        fits["pseudo"] = np.linalg.lstsq(fractions, pseudo, rcond=None)[0]
        fits["reference"] = np.linalg.lstsq(fractions, reference, rcond=None)[0]
    residual_pseudo, residual_reference = pseudo - fractions @ fits["pseudo"], reference - fractions @ fits["reference"]
    volume_change = [relaxed[i].atoms.get_volume() / members[i].get_volume() - 1 for i in ok]
    summary = {
        "set": name, "n": len(ok), "converged": int(converged), "pearson_r": float(pearsonr(pseudo, reference)[0]),
        "spearman_r": float(spearmanr(pseudo, reference)[0]),
        "pearson_r_after_element_fit": float(pearsonr(residual_pseudo, residual_reference)[0]),
        "relax_s": round(time.perf_counter() - t1, 1),
        "volume_change_median": float(np.median(volume_change)),
    }
    lines = [f"{name},{members[i].info.get('source_row', i)},{float(members[i].info[args.column])!r},"
             f"{float(relaxed[i].energy) / len(members[i])!r},{relaxed[i].status}" for i in ok]
    return summary, (reference, pseudo), lines


def _figure(results: dict, points: dict, column: str, campaign: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, (reference, pseudo) in points.items():
        label = f"{name} (n={len(reference)}, R={results[name]['pearson_r']:.2f})"
        ax.scatter(reference, pseudo, s=6, alpha=0.6, label=label)
    ax.set_xlabel(f"{column} (eV/atom, reference)")
    ax.set_ylabel("RM pseudo energy (eV/atom)")
    ax.set_title(f"{campaign}: pseudo vs reference")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=150)


if __name__ == "__main__":
    main()
