"""How fast and how lean peftlab's training step is, against its peers, measured in one invocation.

On the same model, task (the shipped date task with its system prompt and chat template), batch
size and adapter (LoRA r=8 on q_proj and v_proj, dropout 0, AdamW, lr 1e-3), each route trains for
``--steps`` steps in its own process, one after the other:

  peftlab       peftlab-train's own path: its LightningModule under its Trainer (batches grouped
                by length, the output head on the labelled positions only), no validation
  lean          a plain PyTorch loop over torch's shuffled, padded batches, the output head on the
                labelled positions only: the least a hand-written loop does
  lean_packed   the same loop and examples, each batch packed into one padding-free row (positions
                restarting per example): packing measured against length grouping
  trl           TRL's SFTTrainer with a peft LoraConfig at its fastest CPU setting (gradient
                checkpointing off, no packing, no evaluation); only with the `bench` extra
  peftlab_full  peftlab-train with method=full: the memory peer of the adapter routes
  peftlab_ckpt  peftlab-train, LoRA with gradient checkpointing: what recomputing the activations
                saves in memory and costs in time

Every route runs in each of ``--precisions`` (named ``<route>@<precision>``):

  fp32          every weight and every matmul in fp32
  bf16          peftlab, LoRA: precision=bf16_base (the frozen base stored in bf16, the adapter and
                its optimizer state in fp32, the matmuls in bf16 under autocast), what precision=auto
                chooses on hardware with native bf16; full fine-tuning: precision=bf16 (autocast over
                fp32 weights). The lean loops: the same bf16_base layout by hand. TRL: the base
                loaded in bf16 with SFTConfig(bf16=True); trl_amp adds TRL's other bf16 setting,
                fp32 weights under bf16=True autocast (run in bf16 only)
"TRL's fastest" is its fastest route in any precision. peftlab's default is the precision that
precision=auto chooses on this machine.

A matmul peak (fp32 and bf16, the same threads) is measured first in the same invocation. For each route it
prints real (non-padding) tokens per second over the whole training loop, the FLOP rate as a
share of that peak (4 x parameters per real token with a frozen base, 6 x for full fine-tuning),
the padded and real tokens per batch, peak RSS, and the ratios between routes.

    python scripts/benchmark.py                      # SmolLM2-135M, 63 steps of 16, fp32 and bf16: ~40 min here
    python scripts/benchmark.py --steps 20 --routes peftlab,lean,trl --precisions bf16
    python scripts/benchmark.py --smoke              # tiny_llama, 3 steps: what make test runs

Time it alone: two cores shared with another job slow it several times and blur the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROUTES = ("peftlab", "lean", "lean_packed", "trl", "trl_amp", "peftlab_full", "peftlab_ckpt")
PRECISIONS = ("fp32", "bf16")
ONLY_IN = {"trl_amp": "bf16"}  # a route that exists in one precision only
# peftlab-train's precision for each benchmark precision: LoRA (a frozen base), full fine-tuning
PEFTLAB_PRECISION = {"fp32": ("fp32", "fp32"), "bf16": ("bf16_base", "bf16")}
TARGETS = ["q_proj", "v_proj"]


# ------------------------------------------------------------------------------------ the shared setup
def overrides(args: argparse.Namespace, method: str, checkpointing: bool = False) -> list[str]:
    """peftlab-train's settings for a route (the data and batch every route uses)."""
    lora_precision, full_precision = PEFTLAB_PRECISION[args.precision]
    common = [f"model={args.model}", f"precision={lora_precision if method == 'lora' else full_precision}",
              f"data.batch_size={args.batch}", f"optim.lr={args.lr}", f"seed={args.seed}",
              f"trainer.max_steps={args.steps}", "trainer.limit_val_batches=0", "trainer.limit_test_batches=1",
              "data.max_eval_examples=8", "zero_shot=false", "forgetting=null", "merge_after=false",
              "save_adapter=false",
              "logger=none", "callbacks.checkpoint=null", "callbacks.lr_monitor=null",
              "trainer.enable_progress_bar=false", "optim.warmup_ratio=0",
              f"model.gradient_checkpointing={str(checkpointing).lower()}"]
    if method == "lora":
        return [*common, "method=lora", "method.r=8", "method.lora_alpha=16", "method.lora_dropout=0",
                f"method.target_modules=[{','.join(TARGETS)}]"]
    return [*common, "method=full"]


def setup(args: argparse.Namespace, dtype: str = "float32"):
    """The validated config, backbone (its weights in ``dtype``) and encoded training examples
    every route starts from."""
    from omegaconf import OmegaConf

    from peftlab.api import compose
    from peftlab.config import validate
    from peftlab.data.datamodule import TaskDataModule
    from peftlab.models import load_backbone
    from peftlab.tasks import make_task

    # these routes write no run folder; the backbone loads in ``dtype``
    full = compose("train", [*overrides(args, "lora"), "precision=fp32", "paths.run_dir=unused"])
    conf = validate(OmegaConf.masked_copy(full, [k for k in full if k != "hydra"]))
    task = make_task(conf.data)
    backbone = load_backbone(conf.model, conf.paths.cache_dir, task, dtype)
    data = TaskDataModule(task, backbone.tokenizer, seed=conf.seed)
    data.setup()
    return conf, task, backbone, data.splits["train"]


def padded_batches(examples: list[dict[str, Any]], args: argparse.Namespace) -> list[list[dict[str, Any]]]:
    """torch's shuffled order (a DataLoader with a seeded generator), cut into batches: no grouping."""
    from peftlab.data.loaders import epoch_order

    order = [i for epoch in range(100) for i in epoch_order(len(examples), args.seed, epoch)]
    return [[examples[i] for i in order[s * args.batch:(s + 1) * args.batch]] for s in range(args.steps)]


def lora_config(task):
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type=task.peft_task_type)


# ---------------------------------------------------------------------------------------------- routes
def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def route_peftlab(args: argparse.Namespace, method: str, checkpointing: bool = False) -> dict[str, Any]:
    import peftlab

    with tempfile.TemporaryDirectory() as tmp:
        m = peftlab.train([*overrides(args, method, checkpointing), f"hydra.run.dir={tmp}/run"])
    t = m["train"]
    return {"tokens": t["tokens"], "wall_s": t["wall_s"], "steps": t["steps"],
            "real_tokens_per_batch": t["real_tokens_per_batch"],
            "padded_tokens_per_batch": t["padded_tokens_per_batch"],
            "params_total": m["params"]["total"], "trainable": m["params"]["trainable"],
            "flops_per_token": (6 if method == "full" else 4) * m["params"]["total"]}


def packed(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """A padding-free batch: the examples end to end in one row, positions restarting at each
    example (transformers then keeps attention within each example; no attention mask, no KV
    cache). Each example's first label is IGNORE_INDEX (a prompt token), so no loss crosses a seam."""
    import torch

    from peftlab.data.tokenize import IGNORE_INDEX

    assert all(e["labels"][0] == IGNORE_INDEX for e in examples)
    cat = lambda key: torch.tensor([[t for e in examples for t in e[key]]])  # noqa: E731
    positions = torch.tensor([[i for e in examples for i in range(len(e["input_ids"]))]])
    return {"input_ids": cat("input_ids"), "labels": cat("labels"), "position_ids": positions,
            "attention_mask": torch.ones_like(positions)}


def lean_loss(body, head, batch: dict[str, Any]):
    """Mean cross-entropy over the answer tokens, the output head on those positions only."""
    import torch.nn.functional as F

    from peftlab.data.tokenize import IGNORE_INDEX

    if "position_ids" in batch:  # packed: attention stays within each example by its positions
        hidden = body(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    else:
        hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    return F.cross_entropy(head(hidden.last_hidden_state[:, :-1][mask]).float(), targets[mask])


def route_lean(args: argparse.Namespace, pack: bool = False) -> dict[str, Any]:
    import torch
    from peft import get_peft_model

    from peftlab.runs.memory import peak_rss_mb

    memory = {"imports_mb": round(current_rss_mb(), 1)}
    bf16 = args.precision == "bf16"  # the bf16_base layout: base in bf16, adapter in fp32, autocast
    conf, task, backbone, examples = setup(args, "bfloat16" if bf16 else "float32")
    memory["model_loaded_mb"] = round(current_rss_mb(), 1)
    memory["weights_mb"] = round(sum(p.numel() * p.element_size() for p in backbone.model.parameters()) / 2**20, 1)
    torch.manual_seed(args.seed)
    model = get_peft_model(backbone.model, lora_config(task)).train()  # peft keeps the adapter in fp32
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    autocast = (lambda: torch.autocast("cpu", torch.bfloat16)) if bf16 else contextlib.nullcontext
    body, head = model.get_base_model().model, model.get_base_model().lm_head
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    collate = task.collator(backbone.tokenizer, evaluation=False)
    batches = padded_batches(examples, args)  # collated inside the timed loop, as the other routes do
    tokens = slots = 0
    saved: dict[int, int] = {}  # the tensors autograd keeps for the backward pass of the first step, by storage

    def keep(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter) and t.untyped_storage().nbytes() > 0:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    start = time.perf_counter()
    for step, rows in enumerate(batches):
        batch = packed(rows) if pack else collate(rows)
        with torch.autograd.graph.saved_tensors_hooks(keep if step == 0 else (lambda t: t), lambda t: t), autocast():
            loss = lean_loss(body, head, batch)
        if step == 0:
            memory["activations_first_step_mb"] = round(sum(saved.values()) / 2**20, 1)
            memory["first_step_tokens"] = batch["attention_mask"].numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
        slots += batch["attention_mask"].numel()
    wall = time.perf_counter() - start
    total = sum(p.numel() for p in model.parameters())
    return {"tokens": tokens, "wall_s": round(wall, 3), "steps": len(batches),
            "real_tokens_per_batch": round(tokens / len(batches), 1),
            "padded_tokens_per_batch": round(slots / len(batches), 1),
            "params_total": total, "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "flops_per_token": 4 * total, "final_loss": round(float(loss), 4),
            "memory": {**memory, "peak_mb": round(peak_rss_mb(), 1)}}


def route_trl(args: argparse.Namespace, amp: bool = False) -> dict[str, Any]:
    """TRL's SFTTrainer; in bf16 with the base loaded in bf16, or (``amp``) in fp32 under its bf16 autocast."""
    try:
        from trl import SFTConfig, SFTTrainer
    except ImportError:
        return {"skipped": "TRL is not installed (pip install -e '.[bench]')"}
    import datasets
    import torch
    from transformers import TrainerCallback

    bf16 = args.precision == "bf16"
    conf, task, backbone, examples = setup(args, "bfloat16" if bf16 and not amp else "float32")
    rows = [e for b in padded_batches(examples, args) for e in b]  # the lean loop's examples, TRL shuffles them
    dataset = datasets.Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in rows])

    class Count(TrainerCallback):  # the real and padded tokens TRL's batches hold, and the loop's wall time
        tokens = slots = 0
        start = end = 0.0

        def on_train_begin(self, *a, **k):
            Count.start = time.perf_counter()

        def on_train_end(self, *a, **k):
            Count.end = time.perf_counter()

    class Counting(SFTTrainer):
        def training_step(self, model, inputs, *rest, **kwargs):
            Count.tokens += int(inputs["attention_mask"].sum())
            Count.slots += inputs["input_ids"].numel()
            return super().training_step(model, inputs, *rest, **kwargs)

    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        config = SFTConfig(output_dir=tmp, per_device_train_batch_size=args.batch, max_steps=args.steps,
                           learning_rate=args.lr, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
                           gradient_checkpointing=False, packing=False, padding_free=False, use_cpu=True,
                           bf16=bf16, fp16=False, report_to="none", save_strategy="no", eval_strategy="no",
                           logging_steps=max(args.steps, 1), seed=args.seed, dataloader_num_workers=0,
                           max_length=conf.data.max_length, dataset_num_proc=None)
        trainer = Counting(model=backbone.model, args=config, train_dataset=dataset,
                           processing_class=backbone.tokenizer, peft_config=lora_config(task), callbacks=[Count()])
        trainer.train()
        total = sum(p.numel() for p in trainer.model.parameters())
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    n = max(args.steps, 1)
    return {"tokens": Count.tokens, "wall_s": round(Count.end - Count.start, 3), "steps": args.steps,
            "real_tokens_per_batch": round(Count.tokens / n, 1), "padded_tokens_per_batch": round(Count.slots / n, 1),
            "params_total": total, "trainable": trainable, "flops_per_token": 4 * total}


def run_route(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from peftlab.engine.trainer import quiet_lightning
    from peftlab.models.quiet import quiet_libraries
    from peftlab.runs.memory import peak_rss_mb

    quiet_libraries()
    quiet_lightning()
    if name == "peftlab":
        result = route_peftlab(args, "lora")
    elif name == "peftlab_full":
        result = route_peftlab(args, "full")
    elif name == "peftlab_ckpt":
        result = route_peftlab(args, "lora", checkpointing=True)
    elif name in ("lean", "lean_packed"):
        result = route_lean(args, pack=name == "lean_packed")
    else:
        result = route_trl(args, amp=name == "trl_amp")
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return result


# -------------------------------------------------------------------------------------------- the report
def matmul_peak(dtype: str = "float32", seconds: float = 3.0, n: int = 1024) -> float:
    """The best GFLOP/s of a square matmul in ``dtype`` on this process's threads (torch's default)."""
    import torch

    a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
    for _ in range(3):
        a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def precision_of(key: str) -> str:
    return key.rsplit("@", 1)[1]


def summarise(results: dict[str, dict[str, Any]], peaks: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Throughput, FLOP share of the matmul peak in the route's precision, and padding, for every
    route that ran."""
    for key, r in results.items():
        if "tokens" not in r:
            continue
        r["tokens_per_s"] = round(r["tokens"] / r["wall_s"], 2)
        r["gflops"] = round(r["tokens_per_s"] * r["flops_per_token"] / 1e9, 2)
        r["peak_share"] = round(r["gflops"] / peaks[precision_of(key)], 3)
        r["padding_share"] = round(1 - r["real_tokens_per_batch"] / r["padded_tokens_per_batch"], 4)
    return results


def ratios(results: dict[str, dict[str, Any]], default: str) -> dict[str, Any]:
    """peftlab against its peers in the same precision; peftlab's default (``default``: the
    precision precision=auto chooses here) against TRL's fastest route in any precision; memory."""
    out: dict[str, Any] = {}
    speed = {k: r["tokens_per_s"] for k, r in results.items() if "tokens_per_s" in r}
    rss = {k: r["peak_rss_mb"] for k, r in results.items() if "tokens" in r}
    for p in PRECISIONS:
        for peer in ("trl", "lean", "lean_packed"):
            if f"peftlab@{p}" in speed and f"{peer}@{p}" in speed:
                out[f"peftlab_over_{peer}@{p}"] = round(speed[f"peftlab@{p}"] / speed[f"{peer}@{p}"], 3)
        if f"peftlab_ckpt@{p}" in speed and f"peftlab@{p}" in speed:
            out[f"checkpointing_speed@{p}"] = round(speed[f"peftlab_ckpt@{p}"] / speed[f"peftlab@{p}"], 3)
        for lora, name in (("peftlab", "lora"), ("peftlab_ckpt", "lora_checkpointed")):
            if f"{lora}@{p}" in rss and f"peftlab_full@{p}" in rss:
                out[f"{name}_peak_rss_over_full@{p}"] = round(rss[f"{lora}@{p}"] / rss[f"peftlab_full@{p}"], 3)
    trl = {k: v for k, v in speed.items() if k.startswith(("trl@", "trl_amp@"))}
    if f"peftlab@{default}" in speed and trl:
        fastest = max(trl, key=trl.get)
        out["trl_fastest"] = fastest
        out["peftlab_default_over_trl_fastest"] = round(speed[f"peftlab@{default}"] / trl[fastest], 3)
    # full fine-tuning's default: precision=auto keeps fp32 for it on CPUs
    if f"peftlab@{default}" in rss and "peftlab_full@fp32" in rss:
        out["lora_default_peak_rss_over_full_fp32"] = round(rss[f"peftlab@{default}"] / rss["peftlab_full@fp32"], 3)
    if "peftlab@bf16" in speed and "peftlab@fp32" in speed:
        out["peftlab_bf16_over_fp32"] = round(speed["peftlab@bf16"] / speed["peftlab@fp32"], 3)
    return out


def table(results: dict[str, dict[str, Any]], found: dict[str, Any]) -> str:
    ref = results.get(found.get("trl_fastest", ""), {}).get("tokens_per_s")
    lines = ["| route | real tokens/s | vs TRL's fastest | FLOP share of matmul peak | real / padded tokens per batch "
             "| peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        if "tokens_per_s" not in r:
            lines.append(f"| {name} | {r.get('skipped', 'not run')} | | | | |")
            continue
        vs = f"{r['tokens_per_s'] / ref:.2f}x" if ref else "-"
        lines.append(f"| {name} | {r['tokens_per_s']:.1f} | {vs} | {r['peak_share']:.2f} | "
                     f"{r['real_tokens_per_batch']:.0f} / {r['padded_tokens_per_batch']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    lines += [f"{k}: {v}" for k, v in found.items()]
    return "\n".join(lines)


def default_precision() -> tuple[str, str]:
    """The benchmark precision peftlab's default job trains LoRA in here (precision=auto), and why."""
    import peftlab.methods  # noqa: F401  (registers the methods)
    from peftlab.config.plugins import METHOD_SCHEMAS
    from peftlab.engine.precision import choose

    name, why = choose(METHOD_SCHEMAS["lora"], "cpu")
    return ("bf16" if name == "bf16_base" else "fp32"), why


def parse_list(value: str, known: tuple[str, ...], flag: str) -> list[str]:
    items = [r.strip() for r in value.split(",") if r.strip()]
    unknown = sorted(set(items) - set(known))
    if unknown:
        sys.exit(f"{flag}: unknown {', '.join(unknown)} (choose from {', '.join(known)})")
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--steps", type=int, default=63)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--routes", default=",".join(ROUTES))
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--smoke", action="store_true", help="tiny_llama, 3 steps of 4: checks every route runs")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--route", choices=ROUTES, help=argparse.SUPPRESS)  # one route, in this process
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        args.model, args.steps, args.batch = "tiny_llama", 3, 4
    if args.route:
        print(json.dumps(run_route(args.route, args)))
        return
    routes = parse_list(args.routes, ROUTES, "--routes")
    precisions = parse_list(args.precisions, PRECISIONS, "--precisions")
    import torch

    peaks = {p: matmul_peak("bfloat16" if p == "bf16" else "float32") for p in precisions}
    default, why = default_precision()
    print("matmul peak: " + ", ".join(f"{v:.1f} GFLOP/s ({p})" for p, v in peaks.items())
          + f"; {torch.get_num_threads()} threads; peftlab's default here: {why}", flush=True)
    results = {}
    for precision in precisions:
        for name in routes:
            if ONLY_IN.get(name, precision) != precision:
                continue
            cmd = [sys.executable, __file__, "--route", name, "--precision", precision, "--model", args.model,
                   "--steps", str(args.steps), "--batch", str(args.batch), "--lr", str(args.lr), "--seed",
                   str(args.seed)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if proc.returncode != 0:
                sys.exit(f"route {name}@{precision} failed:\n{proc.stderr[-3000:]}")
            key = f"{name}@{precision}"
            results[key] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{key}: {results[key]}", flush=True)
    summarise(results, peaks)
    found = ratios(results, default)
    print(table(results, found))
    if args.json:
        args.json.write_text(json.dumps({
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                        "cores": os.cpu_count()},
            "settings": {k: getattr(args, k) for k in ("model", "steps", "batch", "lr", "seed")},
            "default_precision": {"benchmark": default, "why": why},
            "matmul_peak_gflops": {p: round(v, 1) for p, v in peaks.items()}, "routes": results, "ratios": found},
            indent=2))


if __name__ == "__main__":
    main()
