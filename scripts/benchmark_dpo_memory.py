"""What the DPO reference costs, with and without PEFT, measured in one invocation.

Runs the same short DPO job (SmolLM2-135M + LoRA on the shipped preference pairs) once per
reference mode, each in its own process, one after the other, and prints each run's peak RSS and
what its reference holds beside the policy (metrics.json: preference.reference_bytes) as a share
of the model's weight bytes:

  adapter_off     the same weights with the adapter switched off: no second copy
  frozen_adapter  a frozen copy of the starting adapter, as a second adapter on the same base
  precomputed     two log-probabilities a pair, computed before the first step
  separate        a second full copy of the model: the way without PEFT

    python scripts/benchmark_dpo_memory.py [--steps 10] [--model smollm2_135m]

Time it alone: two cores shared with another job slow it several times and blur the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent


def run(args: list[str], folder: Path) -> dict:
    proc = subprocess.run([str(BIN / "peftlab-train"), *args, f"hydra.run.dir={folder}"], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"peftlab-train failed:\n{proc.stderr[-3000:]}")
    return json.loads((folder / "metrics.json").read_text())


def model_bytes(folder: Path) -> int:
    """The weight bytes of the frozen base of a finished run (fp32)."""
    metrics = json.loads((folder / "metrics.json").read_text())
    return (metrics["params"]["total"] - metrics["params"]["trainable"]) * 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--model", default="smollm2_135m")
    args = ap.parse_args()
    quiet = ["trainer.limit_val_batches=0", "trainer.limit_test_batches=1", "zero_shot=false", "merge_after=false",
             "trainer.enable_progress_bar=false", "logger=none", "callbacks.checkpoint=null"]
    common = [f"model={args.model}", "data=date_prefs", "preference=dpo", f"trainer.max_steps={args.steps}", *quiet]
    with tempfile.TemporaryDirectory() as tmp:
        sft = Path(tmp) / "sft"
        run([f"model={args.model}", "trainer.max_steps=2", *quiet], sft)
        rows = {}
        for mode, extra in (("adapter_off", []), ("frozen_adapter", [f"init_adapter={sft / 'adapter'}"]),
                            ("precomputed", []), ("separate", [])):
            m = run([*common, f"preference.reference={mode}", *extra], Path(tmp) / mode)
            rows[mode] = m["memory"]["peak_rss_mb"], m["train"]["wall_s"], m["preference"]["reference_bytes"]
        weights = model_bytes(sft)
    base_rss = rows["adapter_off"][0]
    print(f"DPO, {args.model} + LoRA, {args.steps} steps of 4 pairs; the model's weights: {weights / 2**20:.1f} MiB")
    print("| reference | what it holds beside the policy | share of the model's weight bytes | peak RSS MiB | "
          "vs adapter_off | train s |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, (rss, wall, held) in rows.items():
        print(f"| {mode} | {held / 2**20:.2f} MiB | {100 * held / weights:.2f}% | {rss:.0f} | "
              f"{rss / base_rss:.3f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
