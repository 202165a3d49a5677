"""Tasks: reading examples, tokenisation with completion-only labels, collators."""

from peftlab.data.datamodule import TaskDataModule
from peftlab.data.sources import load_splits

__all__ = ["TaskDataModule", "load_splits"]
