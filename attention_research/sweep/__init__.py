"""Sweeps: grids of config overrides (grid.py) and the resumable runner (runner.py)."""
