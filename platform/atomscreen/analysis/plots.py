"""Hull figures: formation energy versus composition (RM paper Fig. 4 style), energy versus volume for one element
(Fig. 5).

Rows are dicts with chemsys, formula, reduced_formula, energy_per_atom,
formation_energy_per_atom, e_above_hull, is_stable and volume_per_atom (eV/atom, Å^3/atom).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from pymatgen.core import Composition


def hull_plot(
    rows: Sequence[dict[str, Any]] | Mapping[str, Sequence[dict[str, Any]]], path: str | Path, title: str = ""
) -> list[Path]:
    """Write one figure per chemical system (``path``, or ``stem-CHEMSYS.suffix`` when there are several), with one
    panel per energy method side by side when ``rows`` maps methods to rows; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method = dict(rows) if isinstance(rows, Mapping) else {"rm_pseudo": list(rows)}
    # a sub-system's rows (O, Sr-O, ... in O-Sr-V) belong to the figure of the largest system that holds them
    systems = {frozenset(r["chemsys"].split("-")) for method_rows in by_method.values() for r in method_rows}
    largest = sorted((s for s in systems if not any(s < t for t in systems)), key=lambda s: (-len(s), sorted(s)))
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for method, method_rows in by_method.items():
        for row in method_rows:
            home = next(s for s in largest if set(row["chemsys"].split("-")) <= s)
            groups.setdefault("-".join(sorted(home)), {}).setdefault(method, []).append(row)
    path = Path(path)
    written = []
    for chemsys, methods in groups.items():
        target = path if len(groups) == 1 else path.with_name(f"{path.stem}-{chemsys}{path.suffix}")
        elements = chemsys.split("-")
        fig, axes = plt.subplots(1, len(methods), figsize=(6 * len(methods), 4.8), squeeze=False)
        for ax, (method, members) in zip(axes[0], methods.items()):
            label = f"{method} ({'pseudo ' if method == 'rm_pseudo' else ''}energy)"
            if len(elements) == 1:
                _energy_volume(fig, ax, members, label)
            elif len(elements) == 2:
                _binary(fig, ax, members, elements, label)
            else:
                _ternary(ax, members, label)
        fig.suptitle(f"{title} ({chemsys})")
        fig.tight_layout()
        fig.savefig(target, dpi=150)
        plt.close(fig)
        written.append(target)
    return written


def _energy_volume(fig, ax, rows, method) -> None:
    unstable = [r for r in rows if not r["is_stable"] and r["volume_per_atom"] is not None]
    stable = [r for r in rows if r["is_stable"] and r["volume_per_atom"] is not None]
    points = ax.scatter([r["volume_per_atom"] for r in unstable], [r["energy_per_atom"] for r in unstable],
                        c=[r["e_above_hull"] for r in unstable], cmap="viridis", s=14)
    if unstable:
        fig.colorbar(points, ax=ax, label="E above lowest (eV/atom)")
    for r in stable:
        ax.scatter(r["volume_per_atom"], r["energy_per_atom"], marker="*", s=120, c="tab:red", zorder=3)
        ax.annotate(f"{r['formula']} #{r['structure_id']}", (r["volume_per_atom"], r["energy_per_atom"]),
                    textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("volume per atom (Å$^3$)")
    ax.set_ylabel("energy per atom (eV)")
    ax.set_title(method)


def _binary(fig, ax, rows, elements, method) -> None:
    def x(row):
        return Composition(row["formula"]).get_atomic_fraction(elements[1])

    unstable = [r for r in rows if not r["is_stable"]]
    points = ax.scatter([x(r) for r in unstable], [r["formation_energy_per_atom"] for r in unstable],
                        c=[r["e_above_hull"] for r in unstable], cmap="viridis", s=14)
    if unstable:
        fig.colorbar(points, ax=ax, label="E above hull (eV/atom)")
    stable = sorted((r for r in rows if r["is_stable"]), key=x)
    ax.plot([x(r) for r in stable], [r["formation_energy_per_atom"] for r in stable], "o-", c="tab:red", zorder=3)
    for r in stable:
        ax.annotate(r["reduced_formula"], (x(r), r["formation_energy_per_atom"]), textcoords="offset points",
                    xytext=(0, -12), ha="center")
    ax.set_xlabel(f"fraction of {elements[1]} in {elements[0]}$_{{1-x}}${elements[1]}$_x$")
    ax.set_ylabel("formation energy (eV/atom)")
    ax.set_title(method)


def _ternary(ax, rows, method) -> None:
    """Gibbs triangle: every structure at its composition, coloured by energy above the hull; stable ones labelled."""
    import numpy as np

    elements = sorted({str(e) for r in rows for e in Composition(r["formula"]).elements})

    def xy(row):
        c = Composition(row["formula"])
        f = [c.get_atomic_fraction(e) for e in elements]
        return f[1] + 0.5 * f[2], np.sqrt(3) / 2 * f[2]

    corners = np.array([[0, 0], [1, 0], [0.5, np.sqrt(3) / 2], [0, 0]])
    ax.plot(corners[:, 0], corners[:, 1], c="grey", lw=0.8)
    for (cx, cy), e in zip(corners[:3], elements):
        ax.annotate(e, (cx, cy), textcoords="offset points", xytext=(0, -14 if cy == 0 else 6), ha="center")
    unstable = [r for r in rows if not r["is_stable"]]
    pts = np.array([xy(r) for r in unstable]).reshape(-1, 2)
    points = ax.scatter(pts[:, 0], pts[:, 1], c=[r["e_above_hull"] for r in unstable], cmap="viridis", s=18)
    if unstable:
        ax.figure.colorbar(points, ax=ax, label="E above hull (eV/atom)")
    for r in (r for r in rows if r["is_stable"]):
        x, y = xy(r)
        ax.scatter(x, y, marker="*", s=120, c="tab:red", zorder=3)
        if len(Composition(r["formula"]).elements) > 1:  # the corners are labelled already
            ax.annotate(r["reduced_formula"], (x, y), textcoords="offset points", xytext=(5, 5))
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(method)


def training_figure(history: Sequence[Mapping[str, Any]], quality: Sequence[tuple[int, float]], path: Path) -> None:
    """A denoiser's training at a glance: validation losses (joint, noise, time) and the % of DDPM samples valid by
    MoreRed's rule, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, valid_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    steps = [r["step"] for r in history]
    for key, label in (("val_loss", "joint"), ("val_noise", "noise"), ("val_time", "time")):
        loss_ax.plot(steps, [r[key] for r in history], label=label)
    loss_ax.set(xlabel="step", ylabel="validation loss", yscale="log")
    loss_ax.legend()
    if quality:
        valid_ax.plot([s for s, _ in quality], [q for _, q in quality], marker="o")
    valid_ax.set(xlabel="step", ylabel="valid DDPM samples (%)", ylim=(0, 100))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
