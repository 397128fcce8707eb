"""Result commands: results (ranked structures), hull (tables and figures), export (files)."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from rich.table import Table

from atomscreen.cli.common import CLIError, add_db_option, campaign_engine, non_negative_float, out, positive_int
from atomscreen.store.engine import transaction

FIELDS = ["rank", "structure_id", "formula", "energy_per_atom", "volume_per_atom", "spacegroup", "e_above_hull",
          "is_stable", "converged"]


def add_commands(commands) -> None:
    results = commands.add_parser("results", help="unique structures of a campaign in rank order")
    results.add_argument("name")
    results.add_argument("--top", type=positive_int, help="only the first K")
    results.add_argument("--composition", help="rank within this composition, e.g. C8")
    results.add_argument("--format", choices=["table", "csv", "json"], default="table")
    results.add_argument("--method", default="rm_pseudo", help="rank by this energy method (rm_pseudo, chgnet, "
                                                               "xtb_gfn2, rm_pseudo:MODEL, ...)")
    add_db_option(results)
    results.set_defaults(func=cmd_results)

    hull = commands.add_parser("hull", help="the pseudo convex hull of a campaign (table, and a figure with --plot)")
    hull.add_argument("name")
    hull.add_argument("--plot", metavar="FILE.png", help="write the hull figure (energy versus volume for one element)")
    hull.add_argument("--within", type=non_negative_float, default=0.05,
                      help="list structures up to this far above the hull (eV/atom, default 0.05)")
    hull.add_argument("--method", default="all", help="which hull: rm_pseudo, a re-scoring method, or all (default)")
    add_db_option(hull)
    hull.set_defaults(func=cmd_hull)

    export = commands.add_parser("export", help="write a campaign's unique structures to files")
    export.add_argument("name")
    export.add_argument("--format", choices=["extxyz", "cif", "ase-db"], required=True)
    export.add_argument("--stable-only", action="store_true", help="only structures on the hull")
    export.add_argument("--all", action="store_true", help="include duplicates (default: unique structures only)")
    export.add_argument("--output", help="file (extxyz, ase-db) or folder (cif); default from the campaign name")
    export.add_argument("--force", action="store_true", help="replace an existing output file")
    add_db_option(export)
    export.set_defaults(func=cmd_export)


def _symbol(number: int | None) -> str:
    if number is None:
        return ""
    from ase.spacegroup import Spacegroup

    return f"{Spacegroup(int(number)).symbol.replace(' ', '')} ({number})"


def _formula(text: str | None) -> str | None:
    from atomscreen.chem import hill_formula, parse_formula

    if not text:
        return None
    try:
        return hill_formula(parse_formula(text))
    except ValueError as exc:
        raise CLIError(f"--composition {text!r}: {exc}") from None


def cmd_results(args: argparse.Namespace) -> int:
    from atomscreen.store import ranked, ranked_methods

    engine = campaign_engine(args)
    formula = _formula(args.composition)
    with transaction(engine) as session:
        rows = ranked(session, args.name, method=args.method, formula=formula, top=args.top)
        methods = ranked_methods(session, args.name)
    if not rows:
        of = f" of {formula}" if formula else ""
        raise CLIError(f"campaign {args.name!r} has no structures ranked by {args.method}{of} (ranked here: "
                       f"{', '.join(methods) or 'none'}); see platform status {args.name}")
    records = [{**{f: getattr(r, f) for f in FIELDS if f != "spacegroup"}, "spacegroup": _symbol(r.spacegroup)}
               for r in rows]
    if args.format == "table":
        _results_table(args, formula, records)
    else:
        _write_records(records, args.format)
    return 0


def _write_records(records: list[dict], fmt: str) -> None:
    import csv
    import json

    if fmt == "json":
        print(json.dumps([{f: rec[f] for f in FIELDS} for rec in records], indent=1))
    else:
        writer = csv.DictWriter(sys.stdout, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(records)


def _results_table(args: argparse.Namespace, formula: str | None, records: list[dict]) -> None:
    scope = "rank within " + formula if formula else "overall rank"
    table = Table("rank", "id", "formula", "eV/atom", "Å³/atom", "space group", "above hull", "conv.",
                  title=f"{args.name}: {scope} by {args.method} energy per atom")
    for r in records:
        table.add_row(str(r["rank"]), str(r["structure_id"]), r["formula"], f"{r['energy_per_atom']:.5f}",
                      "" if r["volume_per_atom"] is None else f"{r['volume_per_atom']:.3f}", r["spacegroup"],
                      "" if r["e_above_hull"] is None else f"{r['e_above_hull']:.4f}",
                      {True: "yes", False: "no"}.get(r["converged"], ""))
    out.print(table)


def cmd_hull(args: argparse.Namespace) -> int:
    from atomscreen.chem import chemsys
    from atomscreen.store import hull_methods, hull_rows, ranked

    engine = campaign_engine(args)
    with transaction(engine) as session:
        available = hull_methods(session, args.name)
        methods = available if args.method == "all" else [args.method]
        by_method = {m: hull_rows(session, args.name, method=m) for m in methods}
        off_hull = [r.formula for r in ranked(session, args.name) if r.e_above_hull is None]
    for system in sorted({chemsys(f) for f in off_hull}):
        out.print(f"note: no hull for structures in {system}: an element of it has no pure-element structure in this "
                  "campaign to serve as reference", markup=False)
    if not any(by_method.values()):
        raise CLIError(f"campaign {args.name!r} has no {args.method} hull entries (hulls here: "
                       f"{', '.join(available) or 'none'}; no finished structures, or every system lacked an elemental "
                       "reference)")
    for method, rows in by_method.items():
        _hull_table(args, method, rows)
    if args.plot:
        from atomscreen.analysis.plots import hull_plot

        written = hull_plot({m: rows for m, rows in by_method.items() if rows}, args.plot, title=args.name)
        out.print(f"figure(s) written: {', '.join(str(w) for w in written)}")
    return 0


def _hull_table(args: argparse.Namespace, method: str, rows: list[dict]) -> None:
    kind = "pseudo hull" if method.startswith("rm_pseudo") else "hull"
    table = Table("chemsys", "formula", "id", "eV/atom", "formation", "above hull", "stable",
                  title=f"{args.name}: {kind} ({method})")
    for r in (r for r in rows if r["is_stable"] or r["e_above_hull"] <= args.within):
        table.add_row(r["chemsys"], r["formula"], str(r["structure_id"]), f"{r['energy_per_atom']:.5f}",
                      f"{r['formation_energy_per_atom']:.5f}", f"{r['e_above_hull']:.4f}",
                      "yes" if r["is_stable"] else "")
    out.print(table)
    out.print(f"{method}: {sum(r['is_stable'] for r in rows)} stable of {len(rows)} structures; showing those within "
              f"{args.within} eV/atom of the hull")


def cmd_export(args: argparse.Namespace) -> int:
    from ase.io import write

    from atomscreen.store import export_structures

    engine = campaign_engine(args)
    with transaction(engine) as session:
        frames = export_structures(session, args.name, stable_only=args.stable_only, include_duplicates=args.all)
    if not frames:
        why = " (no stable structures)" if args.stable_only else ""
        raise CLIError(f"nothing to export from {args.name!r}{why}")
    suffix = {"extxyz": ".extxyz", "cif": "", "ase-db": ".db"}[args.format]
    target = Path(args.output or f"{args.name}{'-stable' if args.stable_only else ''}{suffix or '-cif'}")
    if target.is_file() and args.format != "cif":
        if not args.force:
            raise CLIError(f"{target} exists; give another --output or add --force to replace it")
        target.unlink()
    if args.format == "extxyz":
        write(target, frames, format="extxyz")
    elif args.format == "ase-db":
        try:
            _write_ase_db(target, frames)
        except sqlite3.Error as exc:
            raise CLIError(f"cannot write {target}: {exc}") from None
    else:
        if target.is_file():
            raise CLIError(f"--output {target} is a file; cif export writes a folder of .cif files: give a folder")
        files = [target / f"{atoms.info['structure_id']}_{atoms.info['formula']}.cif" for atoms in frames]
        present = [f for f in files if f.exists()]
        if present and not args.force:
            raise CLIError(f"{len(present)} of the files exist in {target} (e.g. {present[0].name}); give another "
                           "--output or add --force to replace them")
        target.mkdir(parents=True, exist_ok=True)
        for path, atoms in zip(files, frames):
            write(path, atoms, format="cif")
    out.print(f"wrote {len(frames)} structures to {target}")
    return 0


def _write_ase_db(target: Path, frames) -> None:
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.db import connect
    from ase.db.core import reserved_keys

    if target.exists():
        raise CLIError(f"{target} exists; choose another --output or remove it")
    with connect(target) as db:
        for atoms in frames:
            info = atoms.info
            if "energy" in info:  # ASE db keeps energies on a calculator, not as a key
                atoms.calc = SinglePointCalculator(atoms, energy=info["energy"])
            pairs = {k: v for k, v in info.items()
                     if isinstance(v, (int, float, str, bool)) and k not in reserved_keys and k != "formula"}
            db.write(atoms, key_value_pairs=pairs)
