"""Simulated CT training pairs for educated-DIP pretraining: (FBP of a noisy sinogram, phantom).

Every item is made on the fly from a seeded random-ellipse phantom with the same operator and
noise model as the measurement the network will later be fitted to, so the pretraining sees the
input distribution of the fine-tuning (the same geometry, noise level and FBP filter). Item i
always uses phantom seed ``seed_offset + i`` and noise seed ``noise_seed + i``: the data set is
reproducible and costs no disk space.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dip_lightning.data.phantoms import EllipsesDataset
from dip_lightning.errors import ConfigError, check_int
from dip_lightning.physics.base import ForwardOperator
from dip_lightning.physics.noise import NoiseModel


class SyntheticCTDataset(Dataset):
    """``length`` pairs (FBP (1, H, W), phantom (1, H, W)) of square random-ellipse phantoms."""

    def __init__(
        self,
        operator: ForwardOperator,
        noise: NoiseModel,
        length: int,
        seed_offset: int = 0,
        noise_seed: int = 0,
    ) -> None:
        shape = tuple(operator.image_shape or ())
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ConfigError(
                "data.size", shape, "pretraining on ellipse phantoms needs a square image (set data.size)"
            )
        self.phantoms = EllipsesDataset(int(shape[0]), length, seed_offset)
        self.operator = operator
        self.noise = noise
        self.noise_seed = int(noise_seed)

    def __len__(self) -> int:
        return len(self.phantoms)

    @torch.no_grad()
    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        phantom = self.phantoms[index]
        index %= len(self)
        generator = torch.Generator().manual_seed(self.noise_seed + index)
        sinogram = self.noise(self.operator(phantom.unsqueeze(0)), generator)
        return self.operator.pseudo_inverse(sinogram)[0], phantom


class SyntheticCTDataModule(pl.LightningDataModule):
    """Training and validation loaders over disjoint phantom seeds (validation seeds come first)."""

    def __init__(
        self,
        operator: ForwardOperator,
        noise: NoiseModel,
        num_images: int,
        val_images: int,
        batch_size: int,
        seed_offset: int,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        num_images = check_int("pretrain.num_images", num_images, 1)
        val_images = check_int("pretrain.val_images", val_images, 1)
        self.batch_size = check_int("pretrain.batch_size", batch_size, 1)
        self.num_workers = check_int("pretrain.num_workers", num_workers, 0)
        self.val = SyntheticCTDataset(operator, noise, val_images, seed_offset, noise_seed=seed_offset)
        train_offset = seed_offset + val_images
        self.train = SyntheticCTDataset(operator, noise, num_images, train_offset, noise_seed=train_offset)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=len(self.train) >= self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size, num_workers=0)
