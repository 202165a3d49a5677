"""peftlab: a Hydra-configured research framework for parameter-efficient fine-tuning.

From Python (a notebook, a script), the commands are functions (peftlab/api.py):

    import peftlab
    run = peftlab.train(["method=lora", "method.r=4"])
    peftlab.evaluate(run["run_dir"]); peftlab.merge(run["run_dir"]); peftlab.report([run["run_dir"]])
"""

__version__ = "0.1.0"

# The command modules first: importing a submodule binds its name on the package, so the modules
# peftlab.train, peftlab.merge, peftlab.report and peftlab.generate are loaded before the functions take those names
# (the console scripts and `from peftlab.train import ...` still reach the modules).
from peftlab import generate as _generate_command  # noqa: E402,F401
from peftlab import merge as _merge_command  # noqa: E402,F401
from peftlab import report as _report_command  # noqa: E402,F401
from peftlab import train as _train_command  # noqa: E402,F401
from peftlab.api import compose, evaluate, generate, merge, report, train  # noqa: E402

__all__ = ["__version__", "compose", "evaluate", "generate", "merge", "report", "train"]
