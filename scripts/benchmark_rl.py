"""Online RL (GRPO) with an adapter policy: memory of one base against separate models, where the step
time goes, and the step rate against TRL's GRPOTrainer, measured in one invocation.

Routes (each in its own process, one after the other; SmolLM2-135M + LoRA r=8 on q_proj/v_proj, the
shipped date prompts, 4 prompts x 4 completions of at most 12 new tokens a step, beta 0.04):

  one_base      policy (its adapter), reference (the adapter off) and a trained reward model (its
                adapter and score head) on one base: rl.reward_model=<reward run>/adapter
  separate      the same with a second full copy as the reference and the reward model as a model of
                its own (rl.reference=separate rl.reward_separate=true): the way without PEFT
  peftlab       the reward date_exact alone (no reward model), for the step rate
  trl           TRL's GRPOTrainer with peft_config: the same model, prompts (through the same chat
                template), group size, generation length, sampling, beta and clip, and date_exact

    python scripts/benchmark_rl.py --reward-model outputs/runs/reward/adapter [--steps 10]

A reward model comes from the rlhf experiment's second command (docs/guides/rl.md). Time it alone:
two cores shared with another job slow it several times and blur the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGETS = ["q_proj", "v_proj"]
ROUTES = ("one_base", "separate", "peftlab", "trl")


def overrides(args: argparse.Namespace, route: str) -> list[str]:
    common = [f"model={args.model}", "data=date_prompts", "rl=grpo", "rl.num_generations=4", "data.batch_size=4",
              "rl.max_new_tokens=12", "rl.beta=0.04", "rl.completions_every=0", "optim.lr=2e-4", "optim.warmup_ratio=0",
              f"seed={args.seed}", f"trainer.max_steps={args.steps}", "trainer.limit_val_batches=0",
              "trainer.limit_test_batches=1", "data.max_eval_examples=8", "zero_shot=false", "forgetting=null",
              "merge_after=false", "save_adapter=false", "logger=none", "callbacks.checkpoint=null",
              "callbacks.lr_monitor=null", "trainer.enable_progress_bar=false", "precision=fp32", "method=lora",
              "method.r=8", "method.lora_alpha=16", "method.lora_dropout=0",
              f"method.target_modules=[{','.join(TARGETS)}]"]
    learned = ["rl.rewards={reward_model: 1.0}", f"rl.reward_model={args.reward_model}"]
    if route == "one_base":
        return [*common, *learned]
    if route == "separate":
        return [*common, *learned, "rl.reference=separate", "rl.reward_separate=true"]
    return [*common, "rl.rewards={date_exact: 1.0}"]


def route_peftlab(args: argparse.Namespace, route: str) -> dict[str, Any]:
    import peftlab

    with tempfile.TemporaryDirectory() as tmp:
        m = peftlab.train([*overrides(args, route), f"hydra.run.dir={tmp}/run"])
    rl = m["rl"]
    return {"wall_s": m["train"]["wall_s"], "steps": m["train"]["steps"], "seconds": rl["seconds"],
            "reference_bytes": rl["reference_bytes"], "reward_model_bytes": rl["reward_model_bytes"],
            "base_bytes": (m["params"]["total"] - m["params"]["trainable"]) * 4}


def route_trl(args: argparse.Namespace) -> dict[str, Any]:
    try:
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        return {"skipped": "TRL is not installed (pip install -e '.[bench]')"}
    import datasets
    import torch
    from omegaconf import OmegaConf
    from peft import LoraConfig
    from transformers import TrainerCallback

    from peftlab.api import compose
    from peftlab.config import validate
    from peftlab.data.sources import load_splits
    from peftlab.models import load_backbone
    from peftlab.tasks import make_task
    from peftlab.tasks.rewards import date_exact

    full = compose("train", [*overrides(args, "peftlab"), "paths.run_dir=unused"])
    conf = validate(OmegaConf.masked_copy(full, [k for k in full if k != "hydra"]))
    task = make_task(conf.data, run=conf)
    backbone = load_backbone(conf.model, conf.paths.cache_dir, task)
    d = conf.data
    rows = load_splits(d)["train"]
    system = [{"role": "system", "content": d.system_prompt}] if d.system_prompt else []
    dataset = datasets.Dataset.from_list([{"prompt": [*system, {"role": "user", "content": r[d.prompt_field]}],
                                           "response": r[d.response_field]} for r in rows])

    def reward(prompts, completions, response, **kwargs):  # peftlab's reward, TRL's convention: only the text differs
        texts = [c[-1]["content"].strip() if isinstance(c, list) else str(c).strip() for c in completions]
        return date_exact(prompts=prompts, completions=texts, references=response)

    class Clock(TrainerCallback):
        start = end = 0.0

        def on_train_begin(self, *a, **k):
            Clock.start = time.perf_counter()

        def on_train_end(self, *a, **k):
            Clock.end = time.perf_counter()

    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(output_dir=tmp, per_device_train_batch_size=16, num_generations=4,
                            max_completion_length=12, temperature=1.0, top_p=1.0, top_k=0, beta=0.04, epsilon=0.2,
                            loss_type="dapo", scale_rewards="group", learning_rate=2e-4, lr_scheduler_type="constant",
                            weight_decay=0.0, max_steps=args.steps, use_cpu=True, bf16=False, report_to="none",
                            save_strategy="no", logging_steps=args.steps, seed=args.seed, dataloader_num_workers=0)
        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
        trainer = GRPOTrainer(model=backbone.model, reward_funcs=reward, args=config, train_dataset=dataset,
                              processing_class=backbone.tokenizer, peft_config=lora, callbacks=[Clock()])
        trainer.train()
    return {"wall_s": round(Clock.end - Clock.start, 3), "steps": args.steps}


def run_route(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from peftlab.engine.trainer import quiet_lightning
    from peftlab.models.quiet import quiet_libraries
    from peftlab.runs.memory import peak_rss_mb

    quiet_libraries()
    quiet_lightning()
    result = route_trl(args) if name == "trl" else route_peftlab(args, name)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reward-model", default="outputs/runs/reward/adapter")
    ap.add_argument("--routes", default=",".join(ROUTES))
    ap.add_argument("--route", help=argparse.SUPPRESS)  # one route, in this process (the parent's child)
    args = ap.parse_args()
    args.reward_model = str(Path(args.reward_model).resolve())
    if args.route:
        print(json.dumps(run_route(args.route, args)))
        return
    routes = args.routes.split(",")
    if not (Path(args.reward_model) / "adapter_config.json").is_file():
        routes = [r for r in routes if r not in ("one_base", "separate")]
        print(f"no reward model at {args.reward_model}: the memory routes are left out")
    results = {}
    for name in routes:
        argv = [sys.executable, __file__, "--route", name, *sys.argv[1:]]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"route {name} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    report(results, args)


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"GRPO, {args.model} + LoRA, {args.steps} steps of 4 prompts x 4 completions (<= 12 new tokens)")
    if "one_base" in results and "separate" in results:
        base = results["one_base"]["base_bytes"]
        print("| route | reference holds | reward model holds | together, share of the base's weight bytes | "
              "peak RSS MiB |")
        print("|---|---:|---:|---:|---:|")
        for name in ("one_base", "separate"):
            r = results[name]
            both = r["reference_bytes"] + r["reward_model_bytes"]
            print(f"| {name} | {r['reference_bytes'] / 2**20:.2f} MiB | {r['reward_model_bytes'] / 2**20:.2f} MiB | "
                  f"{100 * both / base:.2f}% | {r['peak_rss_mb']:.0f} |")
    print("| route | s per step | generate | reward | policy forward | reference | update and the rest |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        if "skipped" in r:
            print(f"| {name} | {r['skipped']} | | | | | |")
            continue
        per = r["wall_s"] / r["steps"]
        parts = {k: v / r["steps"] for k, v in r.get("seconds", {}).items()}
        rest = per - sum(parts.values()) if parts else None
        cells = [f"{parts[k]:.2f}" if k in parts else "" for k in ("generate", "reward", "policy_forward", "reference")]
        print(f"| {name} | {per:.2f} | {' | '.join(cells)} | {'' if rest is None else f'{rest:.2f}'} |")
    if "peftlab" in results and "wall_s" in results.get("trl", {}):
        rate = (results["trl"]["wall_s"] / results["trl"]["steps"]) / (
            results["peftlab"]["wall_s"] / results["peftlab"]["steps"])
        print(f"peftlab's step rate over TRL's: {rate:.2f}x")


if __name__ == "__main__":
    main()
