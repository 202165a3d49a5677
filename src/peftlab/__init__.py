"""peftlab: a Hydra-configured research framework for parameter-efficient fine-tuning.

From Python (a notebook, a script), the commands are functions (peftlab/api.py):

    import peftlab
    run = peftlab.train(["method=lora", "method.r=4"])
    peftlab.evaluate(run["run_dir"]); peftlab.merge(run["run_dir"]); peftlab.report([run["run_dir"]])

Importing peftlab loads nothing else: the functions load with their first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

API = ("combine", "compose", "evaluate", "generate", "harness", "merge", "report", "train")
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        from peftlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'peftlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
