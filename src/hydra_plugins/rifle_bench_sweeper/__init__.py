"""Hydra sweeper `rifle` (`hydra/sweeper=rifle`): rifle-bench's grid expansion, resumable sweeps, closing report."""
