"""``peftlab-eval``: evaluate a run folder's adapter, or a base model alone, on a task split.

    peftlab-eval run_dir=outputs/runs/<stamp>            # the run's adapter on the run's task
    peftlab-eval run_dir=outputs/runs/<stamp> split=val
    peftlab-eval model=smollm2_135m data=dates           # the untouched base model

Writes ``eval.json`` and ``predictions.jsonl`` into its own folder (outputs/evals/<stamp>/).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from peftlab.cli import run_app
from peftlab.config import CONF_DIR, validate
from peftlab.config.schema import DataSchema, EvalSchema, ModelSchema, TrainSchema
from peftlab.data import TaskDataModule
from peftlab.data.sources import resolve_labels
from peftlab.errors import ConfigError
from peftlab.models import auto_class, display_name, load_backbone
from peftlab.module import PeftLabModule
from peftlab.outputs import check_fresh_run_dir, versions, write_json, write_jsonl
from peftlab.trainer import make_eval_trainer, split_metrics

log = logging.getLogger("peftlab.eval")


def load_run_config(run_dir: Path) -> TrainSchema:
    """The validated config a finished run folder was trained with."""
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "adapter").is_dir():
        raise ConfigError(f"run_dir: {run_dir} is not a finished peftlab-train run folder "
                          "(it needs config.yaml and adapter/)")
    return validate(OmegaConf.load(run_dir / "config.yaml"), TrainSchema)


def _run_data(run: TrainSchema, cli_overrides: list[str]) -> DataSchema:
    """The run's task with this command's ``data.<key>=`` overrides applied on top."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    node = OmegaConf.structured(run.data)
    for override in OverridesParser.create().parse_overrides(cli_overrides):
        key = override.key_or_group
        if key.startswith("data."):
            OmegaConf.update(node, key[len("data."):], override.value(), merge=True)
    return OmegaConf.to_object(node)


def load_for_eval(model_cfg: ModelSchema, run_dir: Optional[Path], cache_dir: str, task_type: str, dtype: str,
                  labels: Optional[list[str]] = None):
    """(model, tokenizer): the base model, or a run's adapter on it (its whole model for method=full)."""
    backbone = load_backbone(model_cfg, cache_dir, task_type, dtype, labels)
    if run_dir is None:
        return backbone.model, backbone.tokenizer
    adapter = run_dir / "adapter"
    if (adapter / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(backbone.model, adapter), backbone.tokenizer
    from peftlab.models import DTYPES

    return auto_class(task_type).from_pretrained(adapter, dtype=DTYPES[dtype], local_files_only=True), backbone.tokenizer


def evaluate_cfg(cfg: DictConfig) -> dict[str, Any]:
    conf = validate(cfg, EvalSchema)
    out_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(conf.paths.run_dir)
    check_fresh_run_dir(out_dir)
    L.seed_everything(conf.seed, workers=True, verbose=False)
    run_dir = Path(conf.run_dir) if conf.run_dir else None
    model_cfg, data_cfg, method = conf.model, conf.data, None
    if run_dir is not None:
        run = load_run_config(run_dir)
        model_cfg, method = run.model, run.method.name
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        if not any(o.startswith("data=") for o in overrides):
            data_cfg = _run_data(run, overrides)
    labels = resolve_labels(data_cfg) if data_cfg.task_type == "seq_cls" else None
    model, tokenizer = load_for_eval(model_cfg, run_dir, conf.paths.cache_dir, data_cfg.task_type,
                                     conf.precision.dtype, labels)
    data = TaskDataModule(data_cfg, tokenizer, seed=conf.seed, test_split=conf.split, labels=labels)
    module = PeftLabModule(model.eval(), tokenizer, max_new_tokens=data_cfg.max_new_tokens,
                           task_type=data_cfg.task_type, labels=labels)
    results = make_eval_trainer(conf).test(module, datamodule=data, verbose=False)
    metrics = split_metrics(results[0], "test")
    report = {"run_dir": str(run_dir) if run_dir else None, "model": display_name(model_cfg), "method": method,
              "task": data_cfg.name, "split": conf.split, "examples": data.sizes()[conf.split],
              "metrics": metrics, "versions": versions()}
    write_jsonl(out_dir / "predictions.jsonl", module.predictions)
    write_json(out_dir / "eval.json", report)
    log.info("%s%s on %s/%s: %s", display_name(model_cfg), f" + {method} adapter" if method else "",
             data_cfg.name, conf.split, metrics)
    log.info("written: %s", out_dir / "eval.json")
    return report


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def _hydra_main(cfg: DictConfig) -> Optional[float]:
    return evaluate_cfg(cfg)["metrics"].get("exact_match")


def main() -> None:
    run_app(_hydra_main, "peftlab-eval")


if __name__ == "__main__":
    main()
