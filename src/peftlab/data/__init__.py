"""Tasks' data: reading examples (sources.py; one file, as written: records.py), prompt formats and
tokenisation (tokenize.py), collators, and the LightningDataModule (datamodule.py)."""
