"""The bad-input matrix: every user mistake or unlucky input is one message naming the key, file or
line, and nothing left behind: no run folder, no temporary folder.

Every case runs in this process through the Python API (which composes and validates as the
commands do) and must raise a user error whose message holds the fragment. One case of each kind
of error (config value, composition, disallowed target, checkpoint, run folder, resume, data,
model, each command's own inputs) also runs the real console script in a subprocess: one line on
stderr, ``<command>: error: <the same message>``, exit status 2, no traceback."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli

TINY = ["debug=tiny", "merge_after=false", "logger=none"]
ROWS = [{"prompt": f"What is {i}?", "response": f"{i}"} for i in range(20)]


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _inputs(root: Path, finished: Path) -> dict[str, Path]:
    """Files and run folders the cases point at (``finished``: the session's finished tiny run)."""
    return {**_data_files(root), **_run_folders(root, finished)}


def _data_files(root: Path) -> dict[str, Path]:
    p: dict[str, Path] = {}
    p["empty_answers"] = jsonl(root / "empty_answers.jsonl", [{**r, "response": " "} for r in ROWS])
    p["blank_prompts"] = jsonl(root / "blank_prompts.jsonl", [{**r, "prompt": ""} if i % 2 else r
                                                              for i, r in enumerate(ROWS)])
    p["nonutf8"] = root / "nonutf8.jsonl"
    p["nonutf8"].write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "d"}\n')
    p["malformed"] = root / "malformed.jsonl"
    p["malformed"].write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n{"prompt": oops}\n')
    p["nofield"] = jsonl(root / "nofield.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c"}])
    p["notrain"] = root / "notrain"
    p["notrain"].mkdir()
    jsonl(p["notrain"] / "val.jsonl", ROWS)
    p["emptytest"] = root / "emptytest"
    p["emptytest"].mkdir()
    jsonl(p["emptytest"] / "train.jsonl", ROWS), jsonl(p["emptytest"] / "val.jsonl", ROWS)
    (p["emptytest"] / "test.jsonl").write_text("")
    p["txt"] = root / "data.txt"
    p["txt"].write_text("prompt,response\n")
    p["badlabel"] = jsonl(root / "badlabel.jsonl", [{"text": f"t{i}", "label": ["negative", "positive"][i % 2]}
                                                   for i in range(19)] + [{"text": "t", "label": "maybe"}])
    pairs = [{"prompt": f"Date {i}?", "chosen": f"2020-01-{i + 1:02d}", "rejected": f"20-01-{i + 1:02d}"}
             for i in range(20)]
    p["no_rejected"] = jsonl(root / "no_rejected.jsonl", [pairs[0], {"prompt": "a", "chosen": "b"}])
    p["same_pair"] = jsonl(root / "same_pair.jsonl", [{**r, "rejected": r["chosen"]} for r in pairs])
    p["empty_chosen"] = jsonl(root / "empty_chosen.jsonl", [{**r, "chosen": ""} for r in pairs])
    p["bad_label"] = jsonl(root / "bad_label.jsonl", [{"prompt": r["prompt"], "response": r["chosen"],
                                                       "label": "maybe" if i == 2 else i % 2 == 0}
                                                      for i, r in enumerate(pairs)])
    p["bad_margin"] = jsonl(root / "bad_margin.jsonl", [{**r, "margin": 1.0 if i != 1 else "big"}
                                                        for i, r in enumerate(pairs)])
    p["tool_role"] = jsonl(root / "tool_role.jsonl", [
        {"messages": [{"role": "user", "content": f"Date {i}?"},
                      {"role": "tool" if i == 1 else "assistant", "content": f"2020-01-{i + 1:02d}"}]}
        for i in range(12)])
    p["random_ckpt"] = root / "random.ckpt"
    p["random_ckpt"].write_bytes(bytes(range(256)) * 40)
    return p


def _run_folders(root: Path, finished: Path) -> dict[str, Path]:
    p: dict[str, Path] = {"finished": finished}
    p["ckpt"] = p["finished"] / "checkpoints" / "last.ckpt"
    p["corrupt_config"] = root / "corrupt_config"
    shutil.copytree(p["finished"], p["corrupt_config"], ignore=shutil.ignore_patterns(".lock"))
    (p["corrupt_config"] / "config.yaml").write_text("model: [unclosed\n  : :\n")
    p["diverged"] = root / "diverged"
    shutil.copytree(p["finished"], p["diverged"], ignore=shutil.ignore_patterns(".lock", "adapter"))
    (p["diverged"] / "metrics.json").write_text(json.dumps({"status": "diverged"}))
    p["broken_adapter"] = root / "broken_adapter"
    shutil.copytree(p["finished"], p["broken_adapter"], ignore=shutil.ignore_patterns(".lock"))
    weights = p["broken_adapter"] / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    p["no_checkpoint"] = root / "no_checkpoint"
    (p["no_checkpoint"] / ".hydra").mkdir(parents=True)
    (p["no_checkpoint"] / ".hydra" / "overrides.yaml").write_text("- debug=tiny\n")
    p["empty_model"] = root / "empty_model"
    p["empty_model"].mkdir()
    p["taken"] = root / "taken"
    (p["taken"] / "x").mkdir(parents=True)
    p["hub_run"] = root / "hub_run"  # a run folder whose config names a hub model (not in the local cache)
    shutil.copytree(finished, p["hub_run"], ignore=shutil.ignore_patterns(".lock"))
    config = p["hub_run"] / "config.yaml"
    config.write_text(config.read_text().replace("  name_or_path: null\n", "  name_or_path: hf://nobody/nothing\n"))
    assert "hf://nobody/nothing" in config.read_text()
    p["users_folder"] = root / "users_folder"  # a folder of the user's own, not a run
    p["users_folder"].mkdir()
    (p["users_folder"] / "config.yaml").write_text("mine: true\n")
    (p["users_folder"] / "notes.log").write_text("my notes\n")
    p["finished_sweep"] = root / "finished_sweep"  # a sweep whose one job has finished
    shutil.copytree(finished, p["finished_sweep"] / "0", ignore=shutil.ignore_patterns(".lock"))
    (p["finished_sweep"] / "multirun.yaml").write_text("hydra: {}\n")
    p["half_report"] = root / "half_report"  # report files without report.json
    p["half_report"].mkdir()
    (p["half_report"] / "results.md").write_text("| mine |\n")
    p["old_report"] = root / "old_report"
    p["old_report"].mkdir()
    (p["old_report"] / "report.json").write_text("{}")
    p.update(_reward_models(root, finished))
    p.update(_sources(root, finished))
    return p


def _sources(root: Path, finished: Path) -> dict[str, Path]:
    """Run folders that are not finished sources, and folders a command may not write into."""
    p: dict[str, Path] = {"plugin_run": root / "plugin_run"}  # its config names a plug-in this process lacks
    shutil.copytree(finished, p["plugin_run"], ignore=shutil.ignore_patterns(".lock"))
    config = p["plugin_run"] / "config.yaml"
    config.write_text(config.read_text().replace("plugins: []\n", "plugins:\n- absent_plugin.rewards\n", 1))
    assert "absent_plugin.rewards" in config.read_text()
    no_lock = shutil.ignore_patterns(".lock")
    p["killed_after_adapter"] = root / "killed_after_adapter"  # killed between its adapter and metrics.json
    shutil.copytree(finished, p["killed_after_adapter"], ignore=shutil.ignore_patterns(".lock", "metrics.json"))
    p["pissa_config"] = root / "pissa_config"  # an adapter whose config names a base-moving initialisation
    shutil.copytree(finished, p["pissa_config"], ignore=no_lock)
    config = p["pissa_config"] / "adapter" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "init_lora_weights": "pissa"}))
    p["prompt_run"] = root / "prompt_run"  # a finished prompt-tuning run (its adapter only: nothing trains here)
    shutil.copytree(finished, p["prompt_run"], ignore=shutil.ignore_patterns(".lock", "adapter"))
    (p["prompt_run"] / "adapter").mkdir()
    (p["prompt_run"] / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 4, "token_dim": 64,
         "num_transformer_submodules": 1, "num_attention_heads": 4, "num_layers": 2}))
    shutil.copy(finished / "adapter" / "adapter_model.safetensors", p["prompt_run"] / "adapter")
    p["twin"] = root / "twin"  # a run folder whose adapter is the finished run's, through a link
    shutil.copytree(finished, p["twin"], ignore=shutil.ignore_patterns(".lock", "adapter"))
    (p["twin"] / "adapter").symlink_to(finished / "adapter", target_is_directory=True)
    p["linked_report"] = root / "linked_report"  # a finished run whose report/ points elsewhere
    shutil.copytree(finished, p["linked_report"], ignore=shutil.ignore_patterns(".lock", "report"))
    (root / "elsewhere").mkdir()
    (p["linked_report"] / "report").symlink_to(root / "elsewhere", target_is_directory=True)
    return p


def _reward_models(root: Path, finished: Path) -> dict[str, Path]:
    """Reward-model run folders made from the finished run: one without a score head, and one with a
    head whose run names another base (another init seed of the tiny model)."""
    import torch
    from safetensors.torch import load_file, save_file

    p = {}
    for name, head, seed in (("headless_rm", False, 0), ("other_base_rm", True, 1), ("tiny_rm", True, 0)):
        p[name] = root / name
        shutil.copytree(finished, p[name], ignore=shutil.ignore_patterns(".lock"))
        adapter = p[name] / "adapter"
        config = json.loads((adapter / "adapter_config.json").read_text())
        (adapter / "adapter_config.json").write_text(json.dumps({**config, "task_type": "SEQ_CLS"}))
        state = load_file(adapter / "adapter_model.safetensors")
        if head:
            state["base_model.model.score.weight"] = torch.zeros(1, 64)
        save_file(state, adapter / "adapter_model.safetensors")
        run_config = p[name] / "config.yaml"
        run_config.write_text(run_config.read_text().replace("  init_seed: 0\n", f"  init_seed: {seed}\n"))
    return p


# (case id, command, arguments, the message fragment); {name} is an input above, {out} the case's own folder
CASES = [
    # plug-ins and data formats
    ("a plug-in that is not installed", "peftlab-train", ["plugins=[absent_plugin.rewards]"],
     "plugins: no module named 'absent_plugin.rewards' (install the package that provides it"),
    ("a plug-in name that is no module", "peftlab-train", ["plugins=[my-lab]"],
     "plugins: 'my-lab' is not a module name"),
    ("eval a run naming an unloaded plug-in", "peftlab-eval", ["run_dir={plugin_run}"],
     "run_dir: {plugin_run}/config.yaml: plugins: names the plug-in 'absent_plugin.rewards', which this command "
     "has not loaded"),
    ("merge a run naming an unloaded plug-in", "peftlab-merge", ["run_dir={plugin_run}"],
     "run_dir: {plugin_run}/config.yaml: plugins: names the plug-in 'absent_plugin.rewards'"),
    ("unknown data format", "peftlab-train", ["data.format=chatml"],
     "data.format: unknown format 'chatml' (known: alpaca, messages, prompt_response, sharegpt)"),
    ("conversations for preference pairs", "peftlab-train", ["data=date_prefs", "data.format=messages"],
     "data.format=messages: data.task_type=preference reads prompt_response records only"),
    ("a turn of an unknown role", "peftlab-train", ["data=custom", "data.path={tool_role}", "data.format=messages"],
     "line 2: field 'messages' turn 2: role 'tool' is not one of system, user, assistant (data.format=messages)"),
    ("two columns renamed to one field", "peftlab-train", ["data.columns={{q: prompt, question: prompt}}"],
     "data.columns: renames both 'q' and 'question' to 'prompt'"),
    # config
    ("negative rank", "peftlab-train", ["method.r=-1"], "method.r must be > 0, got -1"),
    ("infinite lr", "peftlab-train", ["optim.lr=inf"], "optim.lr must be a finite number > 0, got inf"),
    ("nan lr", "peftlab-train", ["optim.lr=nan"], "optim.lr must be a finite number > 0, got nan"),
    ("unknown key", "peftlab-train", ["+method.rr=4"], "method.rr: unknown key for method 'lora'"),
    ("unknown method", "peftlab-train", ["method=nope"], "method=nope: no such config (available: "),
    ("zero batch", "peftlab-train", ["data.batch_size=0"], "data.batch_size must be > 0, got 0"),
    ("zero group window", "peftlab-train", ["data.group_window=0"], "data.group_window must be > 0, got 0"),
    ("bad type", "peftlab-train", ["trainer.max_steps=many"], "trainer.max_steps must be an integer, got 'many'"),
    ("callback code", "peftlab-train", ["+callbacks.evil._target_=os.system"],
     "callbacks.evil._target_: 'os.system' is not a class peftlab instantiates"),
    ("optimizer code", "peftlab-train", ["optim.optimizer._target_=builtins.eval"],
     "optim.optimizer._target_: 'builtins.eval' is not a class peftlab instantiates"),
    ("nested code", "peftlab-train", ["+callbacks.lam._target_=lightning.pytorch.callbacks.LambdaCallback",
                                      "+callbacks.lam.on_fit_start._target_=os.getcwd"],
     "callbacks.lam.on_fit_start._target_: 'os.getcwd' is not a class peftlab instantiates"),
    ("bad callback argument", "peftlab-train", ["+callbacks.progress.colour=red"],
     "callbacks.progress: cannot build lightning.pytorch.callbacks.RichProgressBar: TypeError"),
    ("no gpu", "peftlab-train", ["hardware=gpu"], "hardware.accelerator=gpu: this machine has no CUDA device"),
    ("fp16 on cpu", "peftlab-train", ["precision=fp16"], "precision.trainer=16-mixed needs a GPU"),
    ("bf16 base and a quantized base", "peftlab-train", ["precision=bf16_base", "precision.quantize=nf4"],
     "precision=bf16_base stores the base in bfloat16 and precision.quantize=nf4 in nf4: choose one"),
    ("bf16 base under fsdp", "peftlab-train", ["precision=bf16_base", "hardware=fsdp"],
     "precision=bf16_base does not combine with hardware.strategy=fsdp"),
    ("bf16 base for full fine-tuning", "peftlab-train", ["precision=bf16_base", "method=full"],
     "method=full cannot train at precision=bf16_base (a frozen base in bfloat16, trained weights in float32)"),
    ("two dtypes without autocast", "peftlab-train", ["precision=bf16_base", "precision.trainer=32-true"],
     "precision.trainable_dtype differs from precision.dtype=bfloat16, so the matmuls mix dtypes: it needs an "
     "autocast precision.trainer"),
    ("mistyped objective", "peftlab-train", ["objective=test.acc"], "objective: 'test.acc' is not a number"),
    ("objective of a split not scored", "peftlab-train", ["test=false", "zero_shot=false", "objective=test.loss"],
     "objective: 'test.loss' is not a number this run reports (known: val.exact_match"),
    ("test off with zero-shot on", "peftlab-train", ["test=false"],
     "test=false (a run that never reads the test split) needs zero_shot=false: they test on it"),
    ("selection without validation", "peftlab-train", ["validation.select=best", "trainer.limit_val_batches=0"],
     "validation.select=best needs validation checks, which trainer.limit_val_batches=0 switches off"),
    ("selection under fsdp", "peftlab-train", ["validation.select=best", "hardware=fsdp"],
     "validation.select=best: hardware=fsdp shards the weights"),
    ("unknown validation cadence", "peftlab-train", ["validation.metrics=sometimes"],
     "validation.metrics must be one of end, every, got 'sometimes'"),
    ("stated margin below zero", "peftlab-train", ["margins={{test.exact_match: -1}}"],
     "margins.test.exact_match must be a finite number > 0, got -1"),
    ("stated margin not finite", "peftlab-train", ["margins={{test.exact_match: nan}}"],
     "margins.test.exact_match must be a finite number > 0, got nan"),
    ("stated margin of no key", "peftlab-train", ["margins=[0.03]"],
     "margins must be {{<dotted metrics.json key>: <margin>, ...}}"),
    ("a claim of an unknown kind", "peftlab-train", ["experiment=claim_learns_less", "claim.kind=bigger"],
     "claim.kind must be one of equivalent, better, not_worse, correlated, ratio, got 'bigger'"),
    ("a claim ratio margin below 1", "peftlab-train", ["experiment=claim_lr_ratio", "claim.margin=0.5"],
     "claim.margin must be a factor > 1 for kind ratio"),
    ("a claim of an unknown budget", "peftlab-train", ["experiment=claim_all_layers", "claim.budget=huge"],
     "claim.budget must be one of small, paper, got 'huge'"),
    ("prefix with checkpointing", "peftlab-train", ["method=prefix", "model.gradient_checkpointing=true"],
     "method=prefix cannot train with model.gradient_checkpointing=true"),
    ("too many virtual tokens", "peftlab-train", ["method=prompt", "method.num_virtual_tokens=1000"],
     "method.num_virtual_tokens=1000 + data.max_length=384 exceeds the 1024 positions of the model"),
    ("wrong model for task", "peftlab-train", ["model=tiny_bert"],
     "data.task_type=causal_lm (data=dates) does not fit model=tiny_bert, which serves seq_cls"),
    ("chat without template", "peftlab-train", ["model=tiny_gpt2", "data.prompt_format=chat"],
     "data.prompt_format: 'chat' but the tokenizer has no chat template"),
    ("unwritable cache", "peftlab-train", ["paths.cache_dir=/proc/peftlab-cache"], "paths.cache_dir: cannot write"),
    # checkpoints and resuming
    ("remote checkpoint", "peftlab-train", ["resume_from=http://example.org/last.ckpt"],
     "resume_from must be a local checkpoint file (peftlab never downloads one)"),
    ("missing checkpoint", "peftlab-train", ["resume_from={out}/nope.ckpt"],
     "resume_from must be an existing checkpoint file"),
    ("random bytes checkpoint", "peftlab-train", ["resume_from={random_ckpt}"],
     "resume_from: {random_ckpt} is not a checkpoint peftlab can read"),
    ("checkpoint of another rank", "peftlab-train", ["method.r=4", "resume_from={ckpt}"],
     "resume_from: the checkpoint does not fit this run's trainable parameters (28 of different shape"),
    ("checkpoint of another method", "peftlab-train", ["method=ia3", "resume_from={ckpt}"],
     "resume_from: the checkpoint does not fit this run's trainable parameters (missing "),
    ("finished folder", "peftlab-train", ["hydra.run.dir={finished}"], "already holds a run (metrics.json, adapter)"),
    ("the user's own folder", "peftlab-train", ["hydra.run.dir={users_folder}"],
     "hydra.run.dir: {users_folder} is not empty (config.yaml, notes.log); peftlab writes only into a new or empty "
     "folder, pick another"),
    ("a finished sweep's folder", "peftlab-train", ["-m", "seed=1,2", "hydra.sweep.dir={finished_sweep}"],
     "hydra.sweep.dir: {finished_sweep} is not empty (0, multirun.yaml); peftlab writes only into a new or empty"),
    ("eval into the user's folder", "peftlab-eval", ["run_dir={finished}", "hydra.run.dir={users_folder}"],
     "hydra.run.dir: {users_folder} is not empty"),
    # Lightning's own checks, made before any work
    ("no test batches", "peftlab-train", ["trainer.limit_test_batches=0"],
     "trainer.limit_test_batches must be a count of batches >= 1, a fraction in (0, 1] or null, got 0"),
    ("no training batches", "peftlab-train", ["trainer.limit_train_batches=0.0"],
     "trainer.limit_train_batches must be a count of batches >= 1, a fraction in (0, 1] or null, got 0.0"),
    ("fraction of an epoch without epochs", "peftlab-train", ["trainer.val_check_interval=0.5"],
     "trainer.val_check_interval is a fraction of an epoch, which needs trainer.check_val_every_n_epoch"),
    ("validation every 0 epochs", "peftlab-train", ["trainer.check_val_every_n_epoch=0"],
     "trainer.check_val_every_n_epoch must be > 0 or null, got 0"),
    ("unknown determinism", "peftlab-train", ["trainer.deterministic=bogus"],
     "trainer.deterministic must be true, false or warn, got 'bogus'"),
    ("infinite scaling", "peftlab-train", ["method=fourierft", "method.scaling=inf"],
     "method.scaling must be a finite number, got inf"),
    ("a function as optimizer", "peftlab-train", ["optim.optimizer._target_=torch.optim.Optimizer.zero_grad"],
     "optim.optimizer._target_: 'torch.optim.Optimizer.zero_grad' is not a class defined under torch.optim."),
    ("a callback of the wrong kind", "peftlab-train", ["+callbacks.x._target_=lightning.pytorch.loggers.CSVLogger",
                                                       "+callbacks.x.save_dir=."],
     "callbacks.x._target_: 'lightning.pytorch.loggers.CSVLogger' is not a "
     "lightning.pytorch.callbacks.callback.Callback"),
    ("resume a finished run", "peftlab-train", ["resume={finished}"], "resume: {finished} has ended (finished"),
    ("resume without checkpoint", "peftlab-train", ["resume={no_checkpoint}"], "has no checkpoint yet"),
    ("resume with other settings", "peftlab-train", ["resume={no_checkpoint}", "method.r=4"],
     "resume: method.r=4: a resumed run keeps the settings it started with"),
    # data
    ("missing data file", "peftlab-train", ["data=custom", "data.path={out}/nope.jsonl"],
     "data.path: no such file or folder: {out}/nope.jsonl"),
    ("malformed json", "peftlab-train", ["data=custom", "data.path={malformed}"], "{malformed} line 3: malformed JSON"),
    ("missing field", "peftlab-train", ["data=custom", "data.path={nofield}"],
     "{nofield} line 2: missing field 'response' (data.response_field"),
    ("not utf-8", "peftlab-train", ["data=custom", "data.path={nonutf8}"],
     "{nonutf8} line 2: not UTF-8 text (byte 0xe9 at column 16)"),
    ("empty answers", "peftlab-train", ["data=custom", "data.path={empty_answers}"],
     "examples would train or test nothing (empty answer: "),
    ("blank prompts", "peftlab-train", ["data=custom", "data.path={blank_prompts}"], "(blank prompt: "),
    ("answers cut away", "peftlab-train", ["data.max_length=1"],
     "2000 of 2000 train examples would train or test nothing (answer cut away by data.max_length=1: 2000)"),
    ("no train file", "peftlab-train", ["data=custom", "data.path={notrain}"], "data.path: no train file in {notrain}"),
    ("empty split", "peftlab-train", ["data=custom", "data.path={emptytest}"], "the test split is empty"),
    ("unsupported file", "peftlab-train", ["data=custom", "data.path={txt}"], "unsupported file type '.txt'"),
    ("unknown label", "peftlab-train", ["data=reviews", "data.path={badlabel}"],
     "label 'maybe' is not one of data.labels (negative, positive)"),
    # preference training
    ("preference on an sft task", "peftlab-train", ["preference=dpo"],
     "preference=dpo: data.task_type=causal_lm trains on no preference pairs"),
    ("full with adapter_off", "peftlab-train", ["data=date_prefs", "method=full"],
     "preference.reference=adapter_off: method=full has no adapter to switch off"),
    ("prompt with adapter_off", "peftlab-train", ["data=date_prefs", "method=prompt"],
     "a fresh method=prompt adapter already changes the model, so the base is not the model the run starts "
     "from; use preference.reference=precomputed"),
    ("pissa with adapter_off", "peftlab-train", ["data=date_prefs", "method.init=pissa"],
     "preference.reference=adapter_off: method.init=pissa moves part of every targeted weight into the adapter"),
    ("adalora without a step count", "peftlab-train", ["method=adalora", "trainer.max_steps=-1",
                                                      "trainer.max_epochs=1"],
     "method.total_step must be the run's number of optimizer steps (> 0; set it when trainer.max_steps is -1), "
     "got -1"),
    ("unknown lora init", "peftlab-train", ["method.init=kaiming"],
     "method.init must be one of default, gaussian, pissa, olora, eva, got 'kaiming'"),
    ("missing forgetting text", "peftlab-train", ["forgetting.text={out}/nope.txt"],
     "forgetting.text: {out}/nope.txt is not a file (a local UTF-8 text file, or builtin:botchan)"),
    ("adapter_off after sft", "peftlab-train", ["data=date_prefs", "init_adapter={finished}/adapter"],
     "preference.reference=adapter_off with init_adapter: the reference would be the base"),
    ("frozen_adapter without one", "peftlab-train", ["data=date_prefs", "preference=dpo",
                                                   "preference.reference=frozen_adapter"],
     "preference.reference=frozen_adapter needs init_adapter=<run_dir>/adapter"),
    ("no init adapter", "peftlab-train", ["init_adapter={out}/nope"],
     "init_adapter must be an adapter folder (with adapter_config.json), such as <run_dir>/adapter"),
    ("init adapter of another method", "peftlab-train", ["method=ia3", "init_adapter={finished}/adapter"],
     "init_adapter: {finished}/adapter is a LORA adapter; method=ia3 trains IA3"),
    ("unknown reference", "peftlab-train", ["data=date_prefs", "preference=dpo", "preference.reference=base"],
     "preference.reference must be one of adapter_off, frozen_adapter, precomputed, separate, none, got 'base'"),
    ("kto with a precomputed reference", "peftlab-train", ["data=date_prefs", "preference=kto",
                                                          "preference.reference=precomputed"],
     "preference.reference=precomputed: kto estimates the KL divergence from each batch's prompts paired with other "
     "answers"),
    ("unpaired answers with dpo", "peftlab-train", ["data=date_feedback", "preference=dpo"],
     "data.task_type=unpaired: preference.loss=sigmoid compares answers in pairs; single answers labelled good or "
     "bad train with preference=kto"),
    ("label neither true nor false", "peftlab-train", ["data=date_feedback", "data.path={bad_label}"],
     "{bad_label} line 3: label='maybe' is not true or false (data.label_field"),
    # online RL and reward models
    ("rl on an sft task", "peftlab-train", ["rl=grpo"],
     "rl=grpo: data.task_type=causal_lm is not online RL (use data of task type rl, e.g. data=date_prompts)"),
    ("a reference of an adapter that starts off the base", "peftlab-train",
     ["data=date_prompts", "rl=grpo", "method=fourierft"],
     "rl.reference=adapter_off: a fresh method=fourierft adapter already changes the model (method.init_weights=false"),
    ("an unknown training objective", "peftlab-train", ["training_objective=ppo"],
     "training_objective must be one of online_rl, task_loss"),
    ("online rl named for an sft task", "peftlab-train", ["training_objective=online_rl"],
     "training_objective=online_rl: data.task_type=causal_lm is not online RL (use data of task type rl, e.g. "
     "data=date_prompts)"),
    ("rl updates per sample below 1", "peftlab-train", ["data=date_prompts", "rl=grpo", "rl.num_iterations=0"],
     "rl.num_iterations must be in [1, 64] (updates per sampled batch), got 0"),
    ("an unknown rl loss type", "peftlab-train", ["data=date_prompts", "rl=grpo", "rl.loss_type=ppo"],
     "rl.loss_type must be one of dapo, grpo, dr_grpo, bnpo, got 'ppo'"),
    ("clip-higher below the clip", "peftlab-train", ["data=date_prompts", "rl=grpo", "rl.epsilon_high=0.1"],
     "rl.epsilon_high must be a finite number >= rl.epsilon=0.2 (clip-higher widens the range above 1) or null, "
     "got 0.1"),
    ("rl setting without rl", "peftlab-train", ["data=date_prompts", "data.batch_size=2", "rl.beta=0.1"],
     "rl.beta: no rl config is chosen, so there is nothing to set (choose one first: rl=<grpo, rloo>)"),
    ("preference setting without preference", "peftlab-train", ["data=date_prefs", "preference.beta=0.5"],
     "preference.beta: no preference config is chosen, so there is nothing to set (choose one first: "
     "preference=<dpo, ipo, kto, orpo, simpo>)"),
    ("unknown reward", "peftlab-train", ["data=date_prompts", "rl=grpo", "rl.rewards={{date_exakt: 1}}"],
     "rl.rewards must be one of date_exact, length_penalty, reward_model, got 'date_exakt'"),
    ("reward weight not a number", "peftlab-train", ["data=date_prompts", "rl=grpo", "rl.rewards={{date_exact: lots}}"],
     "rl.rewards.date_exact must be a finite number (the reward's weight), got 'lots'"),
    ("one generation per prompt", "peftlab-train", ["data=date_prompts", "rl=rloo", "rl.num_generations=1"],
     "rl.num_generations must be >= 2: rloo compares the completions of one prompt with each other, got 1"),
    ("no kl and a reference", "peftlab-train", ["data=date_prompts", "rl=grpo", "rl.beta=0"],
     "rl.reference must be none exactly when rl.beta=0"),
    ("rl full with adapter_off", "peftlab-train", ["data=date_prompts", "method=full"],
     "rl.reference=adapter_off: method=full has no adapter to switch off; use rl.beta=0 rl.reference=none"),
    ("rl adapter_off after sft", "peftlab-train", ["data=date_prompts", "init_adapter={finished}/adapter"],
     "rl.reference=adapter_off with init_adapter: the reference would be the base"),
    ("reward model without its weight", "peftlab-train", ["data=date_prompts", "rl=grpo",
                                                         "rl.reward_model={finished}/adapter"],
     "rl.reward_model and rl.rewards.reward_model go together"),
    ("reward model of another task", "peftlab-train", ["data=date_prompts", "rl=grpo", "rl.rewards={{reward_model: 1}}",
                                                      "rl.reward_model={finished}/adapter"],
     "rl.reward_model: {finished}/adapter is a CAUSAL_LM adapter, not a reward model"),
    ("reward model without a head", "peftlab-train", ["data=date_prompts", "rl=grpo", "rl.rewards={{reward_model: 1}}",
                                                     "rl.reward_model={headless_rm}/adapter"],
     "rl.reward_model: {headless_rm}/adapter holds no score head of one output"),
    ("reward model of another base", "peftlab-train", ["data=date_prompts", "rl=grpo", "rl.rewards={{reward_model: 1}}",
                                                      "rl.reward_model={other_base_rm}/adapter"],
     "rl.reward_model: {other_base_rm}/adapter was trained on another base (model.init_seed: 1, the policy's 0)"),
    ("reward model beside full fine-tuning", "peftlab-train",
     ["data=date_prompts", "rl=grpo", "method=full", "rl.beta=0", "rl.reference=none",
      "rl.rewards={{reward_model: 1}}", "rl.reward_model={tiny_rm}/adapter"],
     "rl.reward_model: method=full has no adapter for the reward model's to sit beside; use rl.reward_separate=true"),
    ("reward model of another method", "peftlab-train",
     ["data=date_prompts", "rl=grpo", "method=ia3", "rl.rewards={{reward_model: 1}}",
      "rl.reward_model={tiny_rm}/adapter"],
     "rl.reward_model: {tiny_rm}/adapter is a method=lora adapter and the policy trains method=ia3"),
    ("reward model beside a pissa policy", "peftlab-train",
     ["data=date_prompts", "rl=grpo", "method.init=pissa", "rl.beta=0", "rl.reference=none",
      "rl.rewards={{reward_model: 1}}", "rl.reward_model={tiny_rm}/adapter"],
     "rl.reward_model on the policy's base: method.init=pissa moves part of every targeted weight into the adapter"),
    ("reward weight a boolean", "peftlab-train", ["data=date_prompts", "rl=grpo", "rl.rewards={{date_exact: true}}"],
     "rl.rewards.date_exact must be a finite number (the reward's weight), got True"),
    ("kto with one example a batch", "peftlab-train", ["data=date_prefs", "preference=kto", "data.batch_size=1"],
     "data.batch_size must be >= 2 for preference.loss=kto: its KL estimate pairs each prompt with another example's "
     "answer, got 1"),
    ("unpaired answers with an sft weight", "peftlab-train", ["data=date_feedback", "preference=kto",
                                                             "preference.sft_weight=1"],
     "preference.sft_weight does not apply to data.task_type=unpaired"),
    ("no room to generate", "peftlab-train", ["data=date_prompts", "data.max_length=150"],
     "would train or test nothing (prompt leaves no room for 12 new tokens (rl.max_new_tokens) within "
     "data.max_length=150"),
    ("margin not a number", "peftlab-train", ["data=date_prefs", "data.task_type=reward", "data.path={bad_margin}",
                                             "data.margin_field=margin"],
     "{bad_margin} line 2: margin='big' is not a number (data.margin_field)"),
    ("pair without rejected", "peftlab-train", ["data=date_prefs", "data.path={no_rejected}"],
     "{no_rejected} line 2: missing field 'rejected' (data.rejected_field"),
    ("chosen equals rejected", "peftlab-train", ["data=date_prefs", "data.path={same_pair}"],
     "examples would train or test nothing (chosen equals rejected: "),
    ("empty chosen answer", "peftlab-train", ["data=date_prefs", "data.path={empty_chosen}"],
     "examples would train or test nothing (empty answer: "),
    # models
    ("missing model folder", "peftlab-train", ["model=hf", "model.name_or_path={out}/nope"],
     "model.name_or_path: no such folder"),
    ("a relative model path", "peftlab-train", ["model=hf", "model.name_or_path=some-org/some-model"],
     "model.name_or_path: no such folder 'some-org/some-model' (a hub model is named hf://<id>; only that reaches "
     "the network)"),
    ("a relative data path", "peftlab-train", ["data=custom", "data.path=some-org/some-data"],
     "data.path: no such file or folder: some-org/some-data (a hub data set is named hf://<id>; only that reaches "
     "the network)"),
    ("empty model folder", "peftlab-train", ["model=hf", "model.name_or_path={empty_model}"],
     "model.name_or_path: cannot load"),
    ("unknown target module", "peftlab-train", ["method.target_modules=[nonexistent]"],
     "method.target_modules: no module named 'nonexistent' in the model"),
    ("method refuses layer", "peftlab-train", ["method=ia3", "method.target_modules=[embed_tokens]",
                                              "method.feedforward_modules=[embed_tokens]"],
     "method (ia3): Target module Embedding(261, 64, padding_idx=0) is not supported"),
    # run folders, adapters, outputs
    ("eval missing run", "peftlab-eval", ["run_dir={out}/nope"], "is not a finished peftlab-train run folder"),
    ("eval corrupt config", "peftlab-eval", ["run_dir={corrupt_config}"], "is not a readable run config"),
    ("eval diverged run", "peftlab-eval", ["run_dir={diverged}"], "diverged during training"),
    ("a hub model a run folder names", "peftlab-eval", ["run_dir={hub_run}"],
     "model.name_or_path: cannot load 'nobody/nothing': a hub model that a run folder names is read from the local "
     "cache only"),
    ("merge broken adapter", "peftlab-merge", ["run_dir={broken_adapter}"], "is corrupted or truncated"),
    ("merge into existing folder", "peftlab-merge", ["run_dir={finished}", "out_dir={taken}"],
     "out_dir: {taken} already exists; it is never overwritten"),
    ("report over report files", "peftlab-report", ["{finished}", "out_dir={half_report}"],
     "out_dir: {half_report} already holds files a report writes (results.md); it is never overwritten"),
    ("equivalence margin of zero", "peftlab-report", ["{finished}", "out_dir={out}", "equivalence={{test.loss:0}}"],
     "equivalence.test.loss must be a finite number > 0, got 0"),
    ("equivalence margin not finite", "peftlab-report", ["{finished}", "out_dir={out}", "equivalence=inf"],
     "equivalence must be a finite number > 0, got inf"),
    ("equivalence margin below zero", "peftlab-report", ["{finished}", "out_dir={out}", "equivalence=-0.03"],
     "equivalence must be a finite number > 0, got -0.03"),
    ("equivalence of the wrong kind", "peftlab-report", ["{finished}", "out_dir={out}", "equivalence=[0.03]"],
     "equivalence must be a margin or {{<metrics.json key>: <margin>, ...}}, got "),
    ("equivalence of a number no run has", "peftlab-report",
     ["{finished}", "out_dir={out}", "equivalence={{test.accuracy:0.03}}"],
     "equivalence.test.accuracy: no run reports this number in its metrics.json"),
    ("subspace of one rank", "peftlab-report", ["{finished}", "out_dir={out}", "subspace=[8,8]"],
     "subspace must be two different LoRA ranks > 0, such as [8,64], got [8, 8]"),
    ("subspace of a rank no run has", "peftlab-report", ["{finished}", "out_dir={out}", "subspace=[8,64]"],
     "subspace: no finished LoRA run with r=64 among the inputs (ranks found: 8)"),
    ("subspace of the wrong kind", "peftlab-report", ["{finished}", "out_dir={out}", "subspace=8"],
     "subspace: Invalid value assigned: int is not a ListConfig, list or tuple"),
    ("report over a report", "peftlab-report", ["{finished}", "out_dir={old_report}"],
     "out_dir: {old_report} already holds a report; it is never overwritten (overwrite=true replaces it"),
    ("report of nothing", "peftlab-report", ["{out}/nope"], "inputs: no such folder"),
    ("report through a link", "peftlab-report", ["{linked_report}"],
     "inputs: {linked_report}/report is a symbolic link; peftlab never writes through a link in a run folder"),
    ("report into a run", "peftlab-report", ["{finished}", "out_dir={finished}/adapter/report"],
     "out_dir: {finished}/adapter/report is inside {finished}, which holds a run"),
    # sources: every command that takes a run reads it through one reader
    ("eval a killed run", "peftlab-eval", ["run_dir={killed_after_adapter}"],
     "run_dir: {killed_after_adapter} is not a finished run (no metrics.json: it was killed before the end"),
    ("eval runs with a killed run", "peftlab-eval", ["runs=[{finished},{killed_after_adapter}]"],
     "runs: {killed_after_adapter} is not a finished run (no metrics.json"),
    ("eval an adapter that moves the base", "peftlab-eval", ["runs=[{finished},{pissa_config}]"],
     "runs: {pissa_config}/adapter/adapter_config.json says init_lora_weights='pissa', which rewrites the base's "
     "weights when the adapter is loaded"),
    ("eval one adapter twice", "peftlab-eval", ["runs=[{finished},{twin}]"],
     "runs: {finished}/adapter and {twin}/adapter are the same adapter files; name each source once"),
    ("eval runs with a broken adapter", "peftlab-eval", ["runs=[{finished},{broken_adapter}]"],
     "runs: {broken_adapter}/adapter/adapter_model.safetensors is corrupted or truncated"),
    ("combine one adapter twice", "peftlab-combine", ["runs=[{finished},{twin}]"],
     "runs: {finished}/adapter and {twin}/adapter are the same adapter files; name each source once"),
    ("combine a killed run", "peftlab-combine", ["runs=[{finished},{killed_after_adapter}]"],
     "runs: {killed_after_adapter} is not a finished run (no metrics.json"),
    ("start from a killed run", "peftlab-train", ["init_adapter={killed_after_adapter}/adapter"],
     "init_adapter: {killed_after_adapter} is not a finished run (no metrics.json"),
    ("start from a broken adapter", "peftlab-train", ["init_adapter={broken_adapter}/adapter"],
     "init_adapter: {broken_adapter}/adapter/adapter_model.safetensors is corrupted or truncated"),
    ("start from an adapter that moves the base", "peftlab-train", ["init_adapter={pissa_config}/adapter"],
     "init_adapter: {pissa_config}/adapter/adapter_config.json says init_lora_weights='pissa'"),
    ("start from a prompt-learning adapter", "peftlab-train", ["method=prompt", "init_adapter={prompt_run}/adapter"],
     "init_adapter: {prompt_run}/adapter is a PROMPT_TUNING adapter, which peft loads frozen only"),
    ("start from another kind of adapter", "peftlab-train", ["method=prompt", "init_adapter={finished}/adapter"],
     "init_adapter: {finished}/adapter is a LORA adapter; method=prompt trains PROMPT_TUNING"),
    # outputs: never inside someone's folder
    ("train inside a finished run", "peftlab-train", ["debug=tiny", "hydra.run.dir={finished}/adapter/new"],
     "hydra.run.dir: {finished}/adapter/new is inside {finished}, which holds a run"),
    ("merge into a run folder", "peftlab-merge", ["run_dir={finished}", "out_dir={finished}/export"],
     "out_dir: {finished}/export is inside the run folder {finished}, where peftlab writes only {finished}/merged"),
    ("a gguf type the writer does not know", "peftlab-merge", ["run_dir={finished}", "format=gguf",
                                                                "gguf_type=q4_k"],
     "gguf_type must be one of f32, f16, bf16, q8_0, got 'q4_k'"),
    ("harness of a folder that is no model", "peftlab-harness", ["run_dir={finished}", "model_dir={finished}/adapter"],
     "model_dir: {finished}/adapter is not a model folder (no config.json): give a merged folder (peftlab-merge's "
     "out_dir, or <run_dir>/merged)"),
    ("generate without a prompt", "peftlab-generate", ["run_dir={finished}"],
     "prompt: give exactly one of prompt=..., file=... or interactive=true (given: none)"),
    ("generate from a missing file", "peftlab-generate", ["run_dir={finished}", "file={out}/nope.jsonl"],
     "file: no such file: {out}/nope.jsonl"),
    ("generate from an unmerged run", "peftlab-generate", ["run_dir={finished}", "prompt=hi", "merged=true"],
     "merged: {finished}/merged holds no merged model (peftlab-merge run_dir={finished} makes one)"),
]


# one case of each kind of error, also run as the real console script
AS_COMMANDS = {
    "eval a run naming an unloaded plug-in", "a turn of an unknown role",
    "negative rank", "unknown method", "callback code", "random bytes checkpoint", "finished folder",
    "the user's own folder", "a finished sweep's folder", "a function as optimizer",
    "resume with other settings", "malformed json", "adapter_off after sft", "missing model folder",
    "eval corrupt config", "merge broken adapter", "report over a report", "generate without a prompt",
    "generate from a missing file", "reward model of another base", "no room to generate", "rl setting without rl",
    "combine one adapter twice", "eval an adapter that moves the base", "train inside a finished run",
    "report through a link", "harness of a folder that is no model", "a gguf type the writer does not know",
    "an unknown rl loss type",
}
# the fast suite runs one case of each command as the console script; CI's integration run every case
FAST_COMMANDS = {"negative rank", "eval corrupt config", "merge broken adapter", "report over a report",
                 "generate without a prompt"}
# what only the command line has (the API takes its prompts as a list)
COMMAND_LINE_ONLY = {"generate without a prompt", "generate from a missing file", "a finished sweep's folder"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, finished_run):
    root = tmp_path_factory.mktemp("bad")
    return root, _inputs(root, finished_run)


def _argv(case, inputs: dict[str, Path], out: Path) -> tuple[list[str], dict[str, str]]:
    """The case's command line, run in its own folder ``out``."""
    _, prog, args, _ = case
    fill = {**{k: str(v) for k, v in inputs.items()}, "out": str(out)}
    argv = [a.format(**fill) for a in args]
    if prog == "peftlab-train" and not any(a.startswith(("hydra.run.dir=", "resume=")) for a in argv):
        argv = [*TINY, *argv, f"hydra.run.dir={out}"]
    elif prog != "peftlab-train" and not any(a.startswith("hydra.run.dir=") for a in argv):
        argv = [*argv, f"hydra.run.dir={out}"]
    return argv, fill


def _through_the_api(prog: str, argv: list[str]) -> None:
    from peftlab import api

    if prog == "peftlab-train":
        api.train(argv)
    elif prog == "peftlab-eval":
        api.evaluate(None, argv)
    elif prog == "peftlab-merge":
        api.merge(None, argv)
    elif prog == "peftlab-combine":
        api.combine([], argv)
    elif prog == "peftlab-report":
        api.report([a for a in argv if "=" not in a], [a for a in argv if "=" in a])
    elif prog == "peftlab-harness":
        api.harness(None, argv)
    elif prog == "peftlab-generate":
        api.generate(None, [a.split("=", 1)[1] for a in argv if a.startswith("prompt=")],
                     [a for a in argv if not a.startswith("prompt=")])
    else:
        raise AssertionError(prog)


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every file under ``root`` (size, modification time) and every folder: what a failed start must
    leave as it was (the folders of earlier cases' commands are left out: each case checks its own)."""
    return {str(p.relative_to(root)): None if p.is_dir() else (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in root.rglob("*") if not (p.is_dir() and p.relative_to(root).parts[0] in ("api", "cli"))}


def _left_nothing(root: Path, out: Path, before: dict[str, tuple]) -> None:
    """A failed start leaves the tree as it was: its own folder gone (no .hydra/, .lock, config.yaml
    or log), every input untouched, no temporary file anywhere."""
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    after = _snapshot(root)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))


def test_the_matrix_is_large():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES) and FAST_COMMANDS <= AS_COMMANDS
    assert AS_COMMANDS <= {c[0] for c in CASES} and {c[1] for c in CASES} <= {c[1] for c in CASES
                                                                              if c[0] in AS_COMMANDS}


@pytest.mark.parametrize("case", [c for c in CASES if c[0] not in COMMAND_LINE_ONLY],
                         ids=[c[0] for c in CASES if c[0] not in COMMAND_LINE_ONLY])
def test_bad_input_is_a_user_error_that_leaves_nothing(inputs, case):
    from peftlab.config.messages import describe, user_errors

    root, files = inputs
    out = root / "api" / case[0].replace(" ", "_")
    argv, fill = _argv(case, files, out)
    before = _snapshot(root)
    with pytest.raises(user_errors()) as err:
        _through_the_api(case[1], argv)
    message = describe(err.value)
    assert "\n" not in message and case[3].format(**fill) in message, message
    _left_nothing(root, out, before)


@pytest.mark.parametrize("case", [c if c[0] in FAST_COMMANDS else pytest.param(c, marks=pytest.mark.integration)
                                  for c in CASES if c[0] in AS_COMMANDS],
                         ids=[c[0] for c in CASES if c[0] in AS_COMMANDS])
def test_the_command_prints_one_line_and_exits_2(inputs, case):
    root, files = inputs
    out = root / "cli" / case[0].replace(" ", "_")
    argv, fill = _argv(case, files, out)
    before = _snapshot(root)
    proc = run_cli(case[1], *argv)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{case[1]}: error: "), last
    assert case[3].format(**fill) in last, last
    _left_nothing(root, out, before)


# --- generated from the schemas: every typed field refuses a value of the wrong kind, and every
# number refuses nan and inf, with one message naming the field (a new field is covered by default)
def _scalar_kind(hint):
    import typing

    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        hint = args[0]
    return hint if hint in (int, float, bool) else None


def _generated_cases() -> list[tuple[str, list[str], str, str]]:
    """(command, overrides that pick the schema, the field's full key, a bad value)."""
    import dataclasses
    import typing

    from peftlab.config.commands import EvalSchema, GenerateSchema, MergeSchema, ParamsSchema, TrainSchema
    from peftlab.methods import METHODS

    def fields(schema, prefix):
        hints = typing.get_type_hints(schema)
        for f in dataclasses.fields(schema):
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                yield from fields(hint, f"{prefix}{f.name}.")
            elif (kind := _scalar_kind(hint)) is not None:
                yield f"{prefix}{f.name}", kind

    found = []
    schemas = {"train": TrainSchema, "eval": EvalSchema, "merge": MergeSchema, "params": ParamsSchema,
               "generate": GenerateSchema}
    required = {"merge": ["run_dir=run"], "generate": ["run_dir=run", "prompt=hi"]}  # what each must be given
    picked = [(command, required.get(command, []), schema) for command, schema in schemas.items()]
    picked += [("train", [f"method={name}"], spec.schema) for name, spec in sorted(METHODS.items())]
    for command, pick, schema in picked:
        prefix = "method." if any(p.startswith("method=") for p in pick) else ""
        for key, kind in fields(schema, prefix):
            if key == "method.name" or any(p.startswith(f"{key}=") for p in pick):
                continue
            for value in ["not-a-value", *(["nan", "inf", "-inf"] if kind is float else [])]:
                found.append((command, pick, key, value))
    return found


GENERATED = _generated_cases()


def test_the_generated_cases_cover_every_kind_of_field():
    keys = {key for _, _, key, _ in GENERATED}
    assert len(keys) > 80 and {"optim.lr", "trainer.max_steps", "method.r", "data.batch_size"} <= keys


@pytest.mark.parametrize("command,pick,key,value", GENERATED, ids=[f"{c}:{'/'.join(p)}:{k}={v}"
                                                                   for c, p, k, v in GENERATED])
def test_every_field_refuses_a_bad_value_by_name(command, pick, key, value):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf, open_dict

    from peftlab.config import commands, validate
    from peftlab.config.messages import describe, user_errors

    schema = getattr(commands, f"{command.capitalize()}Schema")
    cfg = OmegaConf.create(OmegaConf.to_container(_composed(command, tuple(pick))))  # a copy, untyped as Hydra's
    bad = OverridesParser.create().parse_override(f"{key}={value}").value()  # the value as Hydra reads it
    with pytest.raises(user_errors()) as err:
        with open_dict(cfg):
            OmegaConf.update(cfg, key, bad, merge=True)
        validate(cfg, schema)
    assert key in describe(err.value)


@functools.cache
def _composed(command: str, pick: tuple[str, ...]):
    """The command's config with ``pick``, composed once for every field of it."""
    from conftest import compose

    return compose(list(pick), config_name=command)


def test_the_reliability_guide_states_the_matrix_as_it_is():
    from conftest import ROOT

    guide = (ROOT / "docs" / "guides" / "reliability.md").read_text()
    for figure in (f"{len(CASES)} hand-written cases", f"of each kind ({len(AS_COMMANDS)} cases)",
                   f"{len(GENERATED)} cases are generated from the schemas"):
        assert figure in guide, figure
