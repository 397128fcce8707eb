"""Denoising diffusion on atom positions (DDPM, MoreRed): schedule, forward process, denoiser, samplers, training.

Science core: torch and numpy only, no store, compute or cli.
"""
