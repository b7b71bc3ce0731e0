"""Datasets as LightningDataModules, registered by name so a config can name them."""

from lit_eraser.data.base import RecDataModule, collate_rows
from lit_eraser.data.synthetic import SyntheticDataModule

DATASETS: dict[str, type[RecDataModule]] = {"synthetic": SyntheticDataModule}

__all__ = ["DATASETS", "RecDataModule", "SyntheticDataModule", "collate_rows"]
