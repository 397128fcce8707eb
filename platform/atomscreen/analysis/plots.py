"""Hull figures: formation energy versus composition (RM paper Fig. 4 style), energy versus volume for one element (Fig. 5).

Rows are dicts with chemsys, formula, reduced_formula, energy_per_atom,
formation_energy_per_atom, e_above_hull, is_stable and volume_per_atom (eV/atom, Å^3/atom).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from pymatgen.core import Composition


def hull_plot(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> list[Path]:
    """Write one figure per chemical system (``path``, or ``stem-CHEMSYS.suffix`` when there are several); returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["chemsys"], []).append(row)
    path = Path(path)
    written = []
    for chemsys, members in groups.items():
        target = path if len(groups) == 1 else path.with_name(f"{path.stem}-{chemsys}{path.suffix}")
        elements = chemsys.split("-")
        if len(elements) == 1:
            _energy_volume(members, target, f"{title} ({chemsys})")
        elif len(elements) == 2:
            _binary(members, elements, target, f"{title} ({chemsys})")
        else:
            _pymatgen(members, target, f"{title} ({chemsys})")
        written.append(target)
    return written


def _energy_volume(rows, target, title) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    unstable = [r for r in rows if not r["is_stable"] and r["volume_per_atom"] is not None]
    stable = [r for r in rows if r["is_stable"] and r["volume_per_atom"] is not None]
    points = ax.scatter([r["volume_per_atom"] for r in unstable], [r["energy_per_atom"] for r in unstable],
                        c=[r["e_above_hull"] for r in unstable], cmap="viridis", s=14)
    if unstable:
        fig.colorbar(points, ax=ax, label="E above lowest (eV/atom)")
    for r in stable:
        ax.scatter(r["volume_per_atom"], r["energy_per_atom"], marker="*", s=120, c="tab:red", zorder=3)
        ax.annotate(f"{r['formula']} #{r['structure_id']}", (r["volume_per_atom"], r["energy_per_atom"]), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("volume per atom (Å$^3$)")
    ax.set_ylabel("pseudo energy per atom (eV)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(target, dpi=150)
    plt.close(fig)


def _binary(rows, elements, target, title) -> None:
    import matplotlib.pyplot as plt

    def x(row):
        return Composition(row["formula"]).get_atomic_fraction(elements[1])

    fig, ax = plt.subplots(figsize=(6, 4.5))
    unstable = [r for r in rows if not r["is_stable"]]
    points = ax.scatter([x(r) for r in unstable], [r["formation_energy_per_atom"] for r in unstable],
                        c=[r["e_above_hull"] for r in unstable], cmap="viridis", s=14)
    if unstable:
        fig.colorbar(points, ax=ax, label="E above hull (eV/atom)")
    stable = sorted((r for r in rows if r["is_stable"]), key=x)
    ax.plot([x(r) for r in stable], [r["formation_energy_per_atom"] for r in stable], "o-", c="tab:red", zorder=3)
    for r in stable:
        ax.annotate(r["reduced_formula"], (x(r), r["formation_energy_per_atom"]), textcoords="offset points", xytext=(0, -12), ha="center")
    ax.set_xlabel(f"fraction of {elements[1]} in {elements[0]}$_{{1-x}}${elements[1]}$_x$")
    ax.set_ylabel("formation pseudo energy (eV/atom)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(target, dpi=150)
    plt.close(fig)


def _pymatgen(rows, target, title) -> None:
    import matplotlib.pyplot as plt
    from pymatgen.analysis.phase_diagram import PDEntry, PDPlotter, PhaseDiagram

    entries = [PDEntry(Composition(r["formula"]), r["energy_per_atom"] * Composition(r["formula"]).num_atoms) for r in rows]
    ax = PDPlotter(PhaseDiagram(entries), backend="matplotlib").get_plot()
    ax.set_title(title)
    ax.figure.savefig(target, dpi=150)
    plt.close(ax.figure)
