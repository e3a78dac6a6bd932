"""The data side of a single-image fit: one dummy item per epoch.

A DIP has no dataset: the measurement lives in the method's problem. Lightning still wants a
dataloader, so every epoch is one step over a one-item dataset. Validation runs every
``check_val_every_n_epoch`` epochs, which in this pattern means every N optimisation steps.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset


class SingleItem(Dataset):
    """A dataset of one empty tensor; the method ignores the batch."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.zeros(())


def single_item_loader() -> DataLoader:
    """A loader with its own generator: creating its iterator (every step) draws a seed, which
    must not come from the global stream the training noise uses, or a resumed run would draw
    different noise from the run it continues."""
    return DataLoader(SingleItem(), batch_size=1, num_workers=0, generator=torch.Generator())


class SingleObservationDataModule(pl.LightningDataModule):
    """Train and validation loaders of one item each, no workers (they would only add latency)."""

    def train_dataloader(self) -> DataLoader:
        return single_item_loader()

    def val_dataloader(self) -> DataLoader:
        return single_item_loader()
