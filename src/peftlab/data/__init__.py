"""Tasks' data: reading examples (sources.py; one file, as written: records.py), record formats and
conversations (formats.py, a registry; conversations.py, their tokens and loss mask), prompt formats
and tokenisation (tokenize.py), collators, and the LightningDataModule (datamodule.py)."""
