"""Batched relaxation throughput in one run: atomscreen's batched FIRE (as shipped, and as before this issue's
changes: no Verlet skin, glibc's default allocator), TorchSim's FIRE with the same RM model, and a serial ASE FIRE
loop; same structures, fmax, max steps and Frechet cell filter (crystals). One JSON line per path, then ratios and
final-energy agreement; ``--scaling`` adds a table over batch size and structure size, crystals and molecules.

    python scripts/bench_relax.py [--n 256] [--steps 100] [--device cpu|cuda] [--dtype float64|float32]
        [--kind crystal|molecule] [--atoms 8] [--threads 1] [--torchsim-python PATH] [--scaling] [--out FILE]

``atomscreen_before`` is this code with skin 0 and glibc's default allocator, or, with ``--before-checkout DIR``
(``git worktree add DIR e562b68``), the code of that checkout. Each path runs in its own child process (the same
seeds give the same model and structures), so one path's allocator state, threads or warm caches do not leak into
another's. Throughput counts model evaluations
(structure-steps: one per FIRE step plus the final check, per structure) and atom-steps (the same times atoms).
TorchSim (torch-sim-atomistic, Python >= 3.12) runs under ``--torchsim-python`` (default: $ATOMSCREEN_TORCHSIM_PYTHON),
an interpreter with torch, ase, vesin and torch-sim-atomistic, with this checkout's platform/ on PYTHONPATH; without
one its line says why it was skipped. Load average and torch threads are printed with every line: on a shared 2-core
machine read the ratios, taken minutes apart in the same run, rather than the absolute rates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MOLECULE = {"C": 7, "H": 10, "O": 2}  # 19 atoms
MOLECULE_SEPARATION = {"H-H": 1.0, "C-H": 0.9, "H-O": 0.9, "C-C": 1.2, "C-O": 1.2, "O-O": 1.2}


def bench_model(kind: str, seed: int, device: str, dtype: torch.dtype):
    """The paper's one-shot diamond architecture (l_max 3, nu 3, 4.5 Å) on C (crystals) or H, C, O (molecules),
    last layer x50 so forces are O(1 eV/Å) and relaxations take real steps."""
    from atomscreen.potentials.rm import RMConfig, RMPotential

    torch.manual_seed(seed)
    elements = (6,) if kind == "crystal" else (1, 6, 8)
    model = RMPotential(RMConfig(cutoff=4.5, l_max=3, nu_max=3, n_embedding=1, elements=elements))
    with torch.no_grad():
        model.mlp[-1].weight.mul_(50.0)
    return model.to(device=device, dtype=dtype).eval()


def structures(kind: str, n: int, atoms: int, seed: int):
    """Random C_atoms cells (5.67 Å^3/atom x U(0.86, 1.27), 1.2 Å apart) or random C7H10O2 in boxes of 12 Å^3/atom."""
    from atomscreen.atoms.random import RandomSpec, random_structures

    if kind == "crystal":
        spec = RandomSpec(volume_per_atom=5.67, volume_factor=(0.86, 1.27), min_separation=1.2)
        return random_structures({"C": atoms}, n, spec, seed=seed)
    spec = RandomSpec(volume_per_atom=12.0, periodic=False, min_separation=MOLECULE_SEPARATION)
    return random_structures(MOLECULE, n, spec, seed=seed)


def _common(args) -> dict:
    return {"kind": args.kind, "atoms_per_structure": args.atoms if args.kind == "crystal" else sum(MOLECULE.values()),
            "max_steps": args.steps, "fmax": args.fmax, "device": args.device, "dtype": args.dtype,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "machine": platform.processor() or platform.machine()}


def _rates(wall: float, evaluations: int, n_structures: int, atoms: int) -> dict:
    return {"wall_s": round(wall, 3), "structure_steps": evaluations,
            "structure_steps_per_s": round(evaluations / wall, 2),
            "atom_steps_per_s": round(evaluations * atoms / wall, 1),
            "structures_per_s": round(n_structures / wall, 3)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _usage():
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def _usage_since(start) -> dict:
    (u0, s0, f0), (u1, s1, f1) = start, _usage()
    user, system = u1 - u0, s1 - s0
    return {"user_s": round(user, 3), "system_s": round(system, 3),
            "system_share": round(system / (user + system), 4) if user + system > 0 else None, "minor_faults": f1 - f0}


def path_atomscreen(args, model, cells) -> tuple[dict, np.ndarray]:
    """atomscreen's relax(); settings this checkout's RelaxSettings does not have (an older one, --before-checkout)
    are left out."""
    import dataclasses
    import inspect

    from atomscreen.relax import RelaxSettings, relax

    cell = args.kind == "crystal"
    relax(model, cells[:4], RelaxSettings(fmax=args.fmax, max_steps=3, cell=cell, trajectory_every=0),
          device=args.device, dtype=model.mlp[-1].weight.dtype)  # warm-up
    known = {f.name for f in dataclasses.fields(RelaxSettings)}
    wanted = {"skin": args.skin, "check_every": args.check_every}
    settings = RelaxSettings(fmax=args.fmax, max_steps=args.steps, cell=cell, trajectory_every=0,
                             max_systems=args.max_systems or len(cells),
                             **{k: v for k, v in wanted.items() if k in known})
    stats: dict = {}
    extra = {"stats": stats} if "stats" in inspect.signature(relax).parameters else {}
    _sync(args.device)
    usage, start = _usage(), time.perf_counter()
    results = relax(model, cells, settings, device=args.device, dtype=model.mlp[-1].weight.dtype, **extra)
    _sync(args.device)
    wall = time.perf_counter() - start
    line = {**_rates(wall, sum(r.n_steps + 1 for r in results), len(cells), len(cells[0])),
            "converged": sum(r.converged for r in results), **{k: v for k, v in wanted.items() if k in known},
            "rebuild_fraction": round(stats["searches"] / stats["evaluations"], 4) if stats else 1.0,
            "malloc": os.environ.get("ATOMSCREEN_MALLOC", "kept") if "skin" in known else "glibc default",
            "code": os.environ.get("BENCH_CODE", "this checkout"), **_usage_since(usage)}
    return line, np.array([r.energy for r in results])


def path_ase(args, model, cells) -> tuple[dict, np.ndarray]:
    """ASE's FIRE (with FrechetCellFilter for crystals), one structure after another, on the same model."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from atomscreen.potentials.calculator import RMCalculator

    cells = cells[: args.ase_subset or len(cells)]
    calculator = RMCalculator(model, device=args.device, dtype=model.mlp[-1].weight.dtype)
    start, steps, converged, energies = time.perf_counter(), 0, 0, []
    for atoms in cells:
        atoms = atoms.copy()
        atoms.calc = calculator
        optimizer = FIRE(FrechetCellFilter(atoms) if args.kind == "crystal" else atoms, logfile=None)
        converged += bool(optimizer.run(fmax=args.fmax, steps=args.steps))
        steps += optimizer.nsteps + 1
        energies.append(atoms.get_potential_energy())
    wall = time.perf_counter() - start
    return {**_rates(wall, steps, len(cells), len(cells[0])), "converged": converged}, np.array(energies)


def path_torchsim(args, model, cells) -> tuple[dict, np.ndarray]:
    """torch_sim.optimize: FIRE (ASE flavour, ASE's parameters) with the Frechet cell filter for crystals, the same RM
    model behind TorchSim's ModelInterface, every structure in flight at once, convergence checked every step."""
    import warnings

    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface

    from atomscreen.atoms.batch import AtomsBatch
    from atomscreen.potentials.forces import compute

    class Wrapped(ModelInterface):
        def __init__(self):
            super().__init__()
            self.model, self.evaluations = model, 0
            self._device, self._dtype = torch.device(args.device), model.mlp[-1].weight.dtype
            self._compute_stress, self._compute_forces = args.kind == "crystal", True
            self._memory_scales_with = "n_atoms"

        def forward(self, state, **kwargs):
            pbc = state.pbc if state.pbc.ndim == 2 else state.pbc.expand(state.n_systems, 3)
            batch = AtomsBatch(positions=state.positions, numbers=state.atomic_numbers.long(), system=state.system_idx,
                               cell=state.row_vector_cell, pbc=pbc)  # TorchSim keeps cell vectors as columns
            r = compute(self.model, batch, stress=self._compute_stress)
            self.evaluations += state.n_systems
            return {"energy": r.energy, "forces": r.forces, "stress": r.stress}

    wrapped = Wrapped()
    dtype = model.mlp[-1].weight.dtype
    crystal = args.kind == "crystal"
    init = {"cell_filter": ts.CellFilter.frechet, "fire_flavor": "ase_fire"} if crystal else {"fire_flavor": "ase_fire"}

    def run(subset, max_steps):
        state = ts.io.atoms_to_state(subset, device=torch.device(args.device), dtype=dtype)
        batcher = ts.InFlightAutoBatcher(model=wrapped, memory_scales_with="n_atoms",
                                         max_memory_scaler=float(state.n_atoms + 1))
        converged = ts.generate_force_convergence_fn(force_tol=args.fmax, include_cell_forces=crystal)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            final = ts.optimize(state, wrapped, optimizer=ts.Optimizer.fire, convergence_fn=converged,
                                max_steps=max_steps, steps_between_swaps=1, autobatcher=batcher, init_kwargs=init,
                                fire_flavor="ase_fire")
        return final, converged(final, None)

    run(cells[:4], 3)  # warm-up
    wrapped.evaluations = 0
    _sync(args.device)
    start = time.perf_counter()
    final, converged = run(cells, args.steps)
    _sync(args.device)
    wall = time.perf_counter() - start
    line = {**_rates(wall, wrapped.evaluations, len(cells), len(cells[0])), "converged": int(converged.sum()),
            "torch_sim": ts.__version__ if hasattr(ts, "__version__") else "?"}
    return line, final.energy.detach().cpu().double().numpy()


PATHS = {"atomscreen": path_atomscreen, "ase_fire_loop": path_ase, "torchsim": path_torchsim}


def child(args) -> None:
    """One path, in this process: its JSON line on stdout, its final energies to --energies."""
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model = bench_model(args.kind, args.seed, args.device, dtype)
    cells = structures(args.kind, args.n, args.atoms, args.seed)
    line, energies = PATHS[args.path](args, model, cells)
    np.save(args.energies, energies)
    print(json.dumps({"path": args.label or args.path, **_common(args), "n_structures": len(energies), **line}))


def _run_child(args, path: str, label: str, python: str = sys.executable, env: dict | None = None,
               extra: list[str] = (), platform_dir: Path = REPO / "platform") -> tuple[dict, np.ndarray | None]:
    with tempfile.TemporaryDirectory() as folder:
        energies = Path(folder) / "energies.npy"
        command = [python, __file__, "--path", path, "--label", label, "--energies", str(energies),
                   *_forward(args), *extra]
        environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
                       "PYTHONPATH": os.pathsep.join([str(platform_dir), str(REPO / "scripts"),
                                                      os.environ.get("PYTHONPATH", "")]), **(env or {})}
        done = subprocess.run(command, capture_output=True, text=True, env=environment)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return {"path": label, "skipped": f"exit {done.returncode}: {' | '.join(tail)}"}, None
        return json.loads(done.stdout.strip().splitlines()[-1]), np.load(energies)


def _forward(args) -> list[str]:
    """The options a child needs to rebuild the same model and structures and run the same settings."""
    out = []
    for name in ("n", "steps", "fmax", "device", "dtype", "kind", "atoms", "threads", "seed", "skin", "check_every",
                 "ase_subset", "max_systems"):
        value = getattr(args, name)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    return out


def _agreement(a: np.ndarray, b: np.ndarray, atoms: int) -> dict:
    k = min(len(a), len(b))
    d = np.abs(a[:k] - b[:k]) / atoms
    return {"n": int(k), "median_abs_dE_eV_per_atom": float(np.median(d)),
            "within_1meV_per_atom": round(float((d < 1e-3).mean()), 4)}


def compare(args) -> None:
    """Every path in its own child process, then the ratios between them."""
    from benchlib import emit

    lines, energies = {}, {}
    before = args.before_checkout / "platform" if args.before_checkout else REPO / "platform"
    runs = [("atomscreen", "atomscreen", sys.executable, None, [], REPO / "platform"),
            ("atomscreen", "atomscreen_before", sys.executable,
             {"ATOMSCREEN_MALLOC": "default", "BENCH_CODE": str(args.before_checkout or "this checkout")},
             ["--skin", "0", "--check-every", "1"], before),
            ("ase_fire_loop", "ase_fire_loop", sys.executable, None, [], REPO / "platform")]
    python = args.torchsim_python or os.environ.get("ATOMSCREEN_TORCHSIM_PYTHON")
    if python:
        # TorchSim's interpreter has its own torch build: atomscreen runs there too, the like-for-like comparison
        runs += [("atomscreen", "atomscreen_torchsim_python", python, None, [], REPO / "platform"),
                 ("torchsim", "torchsim", python, None, [], REPO / "platform")]
    else:
        emit({"path": "torchsim", "skipped": "no --torchsim-python (TorchSim needs Python >= 3.12; see the README)"},
             args.out)
    for path, label, interpreter, env, extra, code in runs:
        lines[label], energies[label] = _run_child(args, path, label, interpreter, env, extra, code)
        emit(lines[label], args.out)
    atoms = lines["atomscreen"].get("atoms_per_structure", 1)
    ratios = {"row": "ratios"}
    pairs = [("atomscreen", "atomscreen_before"), ("atomscreen", "ase_fire_loop"), ("atomscreen", "torchsim"),
             ("atomscreen_torchsim_python", "torchsim")]
    for ours, other in pairs:
        if energies.get(other) is not None and energies.get(ours) is not None:
            ratios[f"{ours}_over_{other}"] = round(lines[ours]["structure_steps_per_s"]
                                                   / lines[other]["structure_steps_per_s"], 3)
            ratios[f"energy_agreement_{ours}_{other}"] = _agreement(energies[ours], energies[other], atoms)
    emit(ratios, args.out)


def scaling(args) -> None:
    """Throughput (at most --steps FIRE steps) over batch size and structure size, crystals and molecules."""
    from benchlib import emit

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    configs = [("crystal", 8, n) for n in args.batch_sizes]
    configs += [("crystal", atoms, max(1, args.scaling_atoms // atoms)) for atoms in (16, 32, 64)]
    configs += [("molecule", 19, n) for n in args.batch_sizes]
    for kind, atoms, n in configs:
        run = argparse.Namespace(**{**vars(args), "kind": kind, "atoms": atoms, "n": n, "max_systems": n})
        model = bench_model(kind, args.seed, args.device, dtype)
        line, _ = path_atomscreen(run, model, structures(kind, n, atoms, args.seed))
        emit({"row": "scaling", **_common(run), "n_structures": n, "atoms_per_batch": n * atoms, **line}, args.out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="structures")
    parser.add_argument("--steps", type=int, default=100, help="max FIRE steps per structure")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--kind", default="crystal", choices=["crystal", "molecule"])
    parser.add_argument("--atoms", type=int, default=8, help="atoms per crystal (molecules: C7H10O2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every path")
    parser.add_argument("--skin", type=float, default=0.5, help="Å, atomscreen's Verlet skin")
    parser.add_argument("--check-every", type=int, default=None, help="atomscreen's steps between host checks "
                        "(default 1 on the CPU, 10 on CUDA)")
    parser.add_argument("--max-systems", type=int, default=None, help="atomscreen's batch (default: all)")
    parser.add_argument("--ase-subset", type=int, default=32, help="the serial ASE loop runs the first K (0: all)")
    parser.add_argument("--torchsim-python", default=None)
    parser.add_argument("--before-checkout", type=Path, default=None,
                        help="a checkout of the code before (git worktree add DIR COMMIT): its platform/ runs the "
                             "atomscreen_before path; default: this code without skin and allocator settings")
    parser.add_argument("--scaling", action="store_true", help="the scaling table instead of the comparison")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256, 1024, 4096])
    parser.add_argument("--scaling-atoms", type=int, default=2048, help="atoms per batch for the C16-C64 rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--path", choices=list(PATHS), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--label", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--energies", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = _parser().parse_args()
    if args.check_every is None:
        args.check_every = 10 if args.device.startswith("cuda") else 1
    if args.path:
        child(args)
    elif args.scaling:
        scaling(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
