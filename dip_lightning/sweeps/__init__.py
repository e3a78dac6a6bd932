"""Hyperparameter sweeps: the objective, failure handling, device placement and a resumable sweeper.

The Hydra plugin that makes ``hydra/sweeper=resumable_optuna`` work lives in
``hydra_plugins/dip_lightning_sweeps`` (Hydra only loads plugins from that namespace); it delegates
to :mod:`dip_lightning.sweeps.optuna_sweeper`.
"""
