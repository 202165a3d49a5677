"""Scoring N adapters of one base: N separate evaluations (a process each, as N ``peftlab-eval
run_dir=`` calls run) against one process that loads the base once and switches the active adapter
(``peftlab-eval runs=``, engine/adapters.py); and, inside the one process, a forward pass of N
adapters' rows as one mixed-adapter batch against N forwards of one adapter each.

    python scripts/benchmark_many_adapters.py                          # SmolLM2, 4 adapters, 32 examples
    python scripts/benchmark_many_adapters.py --model tiny_llama --adapters 8

The adapters are LoRA adapters (r=8, every linear layer) with random weights, seeded: what is
timed does not depend on what they learned. Prints each route's wall time and peak RSS and the
ratios. Time it alone: the machine's cores are shared by everything that runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def setup(model: str, cache: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import peftlab.methods  # noqa: F401
    import peftlab.tasks  # noqa: F401
    from peftlab.config import CONF_DIR, validate
    from peftlab.tasks import make_task

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", "logger=none"])
    with open_dict(cfg):
        cfg.paths.run_dir = "unused"
    conf = validate(cfg)
    return conf, make_task(conf.data)


def make_adapters(model: str, n: int, cache: str, root: Path) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model

    from peftlab.models import load_backbone

    conf, task = setup(model, cache)
    folders = []
    for i in range(n):
        torch.manual_seed(i)
        backbone = load_backbone(conf.model, cache, task)
        peft_model = get_peft_model(backbone.model, LoraConfig(r=8, target_modules="all-linear",
                                                               init_lora_weights=False, task_type="CAUSAL_LM"))
        folders.append(root / f"adapter{i}")
        peft_model.save_pretrained(folders[-1])
    return folders


def child(route: str, model: str, cache: str, examples: int, adapters: list[str]) -> None:
    """One measured process: score ``adapters`` on the dates test split (``mixed``: time one forward
of each adapter's rows switched against one mixed-adapter batch instead) and print a JSON line."""
    import torch

    from peftlab.engine.adapters import test_loader
    from peftlab.export.verify import score_split
    from peftlab.models.adapters import AdapterBank
    from peftlab.runs.memory import peak_rss_mb

    conf, task = setup(model, cache)
    bank = AdapterBank(conf.model, cache, task)
    for i, folder in enumerate(adapters):
        bank.add(f"a{i}", Path(folder))
    task, loader = test_loader(task, bank.tokenizer, 0, examples)
    batches = list(loader)
    result: dict = {}
    if route != "mixed":
        scores = []
        for i in range(len(adapters)):
            with bank.use(f"a{i}") as m:
                scores.append(score_split(m, task, bank.tokenizer, batches).metrics["loss"])
        result = {"peak_rss_mb": peak_rss_mb(), "losses": scores}
    else:
        ids = batches[0]["input_ids"][:8]
        mask = batches[0]["attention_mask"][:8]

        def swapped() -> None:
            for i in range(len(adapters)):
                with bank.use(f"a{i}") as m:
                    m(input_ids=ids, attention_mask=mask)

        with torch.no_grad():
            result["swapped_ms"] = _ms(swapped)
            names = [f"a{i}" for i in range(len(adapters)) for _ in range(len(ids))]
            rows, rows_mask = ids.repeat(len(adapters), 1), mask.repeat(len(adapters), 1)
            with bank.mixed(names) as m:
                result["mixed_ms"] = _ms(lambda: m(input_ids=rows, attention_mask=rows_mask))
    print(json.dumps(result))


def _ms(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1000 * sorted(times)[len(times) // 2], 1)


def run(route: str, model: str, cache: str, examples: int, adapters: list[Path]) -> dict:
    """The child's figures, its wall time measured from here (interpreter start and imports included)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", route, "--model", model, "--cache", cache,
                           "--examples", str(examples), *map(str, adapters)], check=True, capture_output=True,
                          text=True)
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "peftlab"))
    ap.add_argument("--child", default=None)
    ap.add_argument("folders", nargs="*")
    args = ap.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    if args.child:
        child(args.child, args.model, args.cache, args.examples, args.folders)
        return
    with tempfile.TemporaryDirectory() as root:
        adapters = make_adapters(args.model, args.adapters, args.cache, Path(root))
        separate = [run("separate", args.model, args.cache, args.examples, [a]) for a in adapters]
        one = run("one_base", args.model, args.cache, args.examples, adapters)
        mixed = run("mixed", args.model, args.cache, args.examples, adapters) if len(adapters) > 1 else {}
    same = [s["losses"][0] for s in separate] == one["losses"]
    wall = sum(s["wall_s"] for s in separate)
    peak = max(s["peak_rss_mb"] for s in separate)
    print(f"{args.adapters} adapters of {args.model}, {args.examples} test examples each (dates); each route a "
          "process of its own (timed from its start, imports included), one after another")
    print(f"  separate evaluations: {wall:.1f} s in all, peak RSS {peak:.0f} MiB (the largest of {len(separate)})")
    print(f"  one base, adapters switched: {one['wall_s']:.1f} s, peak RSS {one['peak_rss_mb']:.0f} MiB")
    print(f"  time ratio separate/one base: {wall / one['wall_s']:.2f}x; the same test losses: {same}")
    if mixed:
        print(f"  forward of 8 rows per adapter: switched {mixed['swapped_ms']} ms, one mixed-adapter batch "
              f"{mixed['mixed_ms']} ms (switched/mixed {mixed['swapped_ms'] / mixed['mixed_ms']:.2f}x)")


if __name__ == "__main__":
    main()
