"""Hydra launcher behind `hydra/launcher=slurm`: hydra-submitit-launcher's, made safe for long sweeps."""
