"""Hydra plugins of dip-lightning (Hydra only instantiates sweepers from the hydra_plugins namespace)."""
