"""Probe every tuner peft ships on every task type it may serve (engine/probe.py) and write what
was found to src/peftlab/methods/peft_tuners.json, which ``method=peft`` reads its capabilities
from; then regenerate the docs' tables (scripts/update_docs.py). Tiny models, CPU, a few minutes.

    python scripts/probe_peft_tuners.py                 # every tuner
    python scripts/probe_peft_tuners.py VBLORA C3A      # some, merged into the file
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tuners", nargs="*", help="peft types (default: every one peft ships)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import peft
    import torch
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    import peftlab.methods  # noqa: F401
    import peftlab.tasks  # noqa: F401
    from peftlab.engine.probe import probe, probed_task_types
    from peftlab.methods.generic import PROBE_FILE
    from peftlab.models.quiet import quiet_libraries
    from peftlab.runs.files import write_json

    quiet_libraries()
    torch.set_num_threads(1)
    everything = {getattr(k, "value", k): v.__name__ for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    chosen = [t.upper() for t in args.tuners] or sorted(everything)
    unknown = [t for t in chosen if t not in everything]
    if unknown:
        raise SystemExit(f"unknown peft types: {', '.join(unknown)}")
    old = json.loads(PROBE_FILE.read_text())["tuners"] if PROBE_FILE.is_file() and args.tuners else {}
    with tempfile.TemporaryDirectory() as cache:
        for peft_type in chosen:
            start = time.perf_counter()
            tasks = {task_type: probe(peft_type, task_type, cache) for task_type in probed_task_types()}
            old[peft_type] = {"config": everything[peft_type], "tasks": tasks}
            shown = "  ".join(f"{t}: {'pass' if r['passed'] else 'FAIL (' + r.get('reason', '') + ')'}"
                              for t, r in tasks.items())
            print(f"{peft_type:24s} {time.perf_counter() - start:5.1f} s  {shown}", flush=True)
    write_json(PROBE_FILE, {"peft": peft.__version__, "torch": torch.__version__, "tuners": dict(sorted(old.items()))})
    print(f"written: {PROBE_FILE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
