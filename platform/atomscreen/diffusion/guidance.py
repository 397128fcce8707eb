"""Energy guidance inside reverse diffusion (Cho et al. 2023, §4.1 and §5.3): once a molecule's step t is at or
below (1 - start) * T, every ``every``-th reverse step relaxes it for at most ``iterations`` optimizer steps on an
energy model and writes the result back into x_t before the step is taken.

The paper leaves open what is relaxed and how positions return into x_t; the two choices here:
- ``x0`` (default): the denoised estimate x0_hat = (x_t - sigma_t eps_hat) / sqrt(abar_t) (MoreRed eq. 2 solved
  for x_0) is relaxed to x0' and re-noised with the same eps_hat, x_t' = sqrt(abar_t) x0' + sigma_t eps_hat, so the
  reverse step that follows is the DDPM posterior mean towards x0' (no extra network call);
- ``xt``: x_t itself, rescaled to physical size first (x_t / sqrt(abar_t); sqrt(abar_t) is 0.96 at 80 % of the
  steps, design spec pitfall 2), relaxed, and scaled back.

Atom types are fixed (the denoiser is conditioned on the composition), so the species-drift concern of the paper,
whose EDM also diffuses the atom types, does not arise. A molecule whose energy model fails (an exception, a NaN) is
put back where the intervention found it and is not guided again; the reason is kept.
"""

from __future__ import annotations

import time

import torch

from atomscreen.diffusion.forward import centre
from atomscreen.diffusion.hybrid_settings import GuidanceSettings
from atomscreen.diffusion.schedule import Schedule
from atomscreen.relax.lbfgs import BatchEnergy
from atomscreen.relax.minimise import minimise


class Guide:
    """The guidance of one reverse run over n_mol molecules: called by the samplers with each reverse step's inputs,
    it returns the positions to step from. Counts interventions and optimizer steps; keeps why guidance was dropped."""

    def __init__(self, settings: GuidanceSettings, energy: BatchEnergy, numbers: torch.Tensor, mol: torch.Tensor,
                 n_mol: int, schedule: Schedule):
        self.settings, self.energy, self.numbers, self.mol = settings, energy, numbers, mol
        self.schedule = schedule
        self.top = settings.window(schedule.T)
        device = numbers.device
        self.since = torch.full((n_mol,), -1, dtype=torch.long, device=device)
        self.interventions = torch.zeros(n_mol, dtype=torch.long, device=device)
        self.optimizer_steps = torch.zeros(n_mol, dtype=torch.long, device=device)
        self.dropped: list[str | None] = [None] * n_mol
        self._serial = 0  # each intervention's molecules get fresh energy-model keys (a new GFN-FF topology)
        self.seconds = 0.0  # wall time inside the interventions (the energy model and its optimizer)

    def __call__(self, index: torch.Tensor, t: torch.Tensor, x: torch.Tensor, eps_hat: torch.Tensor,
                 sub_mol: torch.Tensor, n_sub: int, eligible: torch.Tensor | None = None) -> torch.Tensor:
        """x_t' for the molecules ``index`` (their atoms x [n, 3], molecule index sub_mol) about to take the reverse
        step from step t [n_sub] with noise estimate eps_hat."""
        ok = torch.tensor([self.dropped[i] is None for i in index.tolist()], dtype=torch.bool, device=x.device)
        inside = (t <= self.top) & ok
        if eligible is not None:
            inside &= eligible
        entering = inside & (self.since[index] < 0)
        self.since[index[entering]] = 0
        due = inside & (self.since[index] % self.settings.every == 0)
        self.since[index[inside]] += 1
        if not bool(due.any()):
            return x
        atoms = due[sub_mol]
        remap = torch.cumsum(due.long(), 0) - 1
        due_mol, n_due = remap[sub_mol[atoms]], int(due.sum())
        abar = self.schedule.alpha_bar.to(x.device)[t[due]][due_mol][:, None]
        root, sigma = abar.sqrt(), (1.0 - abar).sqrt()
        eps = centre(eps_hat, sub_mol, n_sub)[atoms]
        xs = x[atoms]
        start = (xs - sigma * eps) / root if self.settings.target == "x0" else xs / root
        keys = torch.arange(self._serial, self._serial + n_due, device=x.device)
        self._serial += n_due
        whole = self._atoms_of(index[due])
        started = time.perf_counter()
        out = minimise(self.energy, self.numbers[whole], start, due_mol, n_due, keys=keys,
                       optimizer=self.settings.optimizer, fmax=self.settings.fmax,
                       max_steps=self.settings.iterations, maxstep=self.settings.maxstep)
        self.seconds += time.perf_counter() - started
        failed = torch.tensor([e is not None and e != "no_descent" for e in out.errors], dtype=torch.bool,
                              device=x.device)
        for i, err in zip(index[due].tolist(), out.errors):
            if err is not None and err != "no_descent":
                self.dropped[i] = err
        relaxed = torch.where(failed[due_mol, None], start, out.positions)
        moved = xs + root * (relaxed - start) if self.settings.target == "x0" else root * relaxed
        self.interventions[index[due][~failed]] += 1  # applied ones; a failed one leaves the molecule as it was
        self.optimizer_steps[index[due][~failed]] += out.steps[~failed]
        x = x.clone()
        x[atoms] = centre(moved, due_mol, n_due)
        return x

    def _atoms_of(self, molecules: torch.Tensor) -> torch.Tensor:
        """Mask of the atoms (in the whole batch) of the given molecules, in batch order."""
        return torch.isin(self.mol, molecules)
