"""peftlab: a Hydra-configured research framework for parameter-efficient fine-tuning."""

__version__ = "0.1.0"
