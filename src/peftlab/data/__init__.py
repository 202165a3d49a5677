"""Tasks' data: reading examples (sources.py), prompt formats and tokenisation (tokenize.py),
collators, and the LightningDataModule (datamodule.py)."""
