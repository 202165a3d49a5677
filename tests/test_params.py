"""peftlab-params: counts on the meta device equal peft's on the real model; the papers' shapes."""

from __future__ import annotations

import re

import pytest

from peftlab.config import validate
from peftlab.config.commands import ParamsSchema
from peftlab.engine.params import count
from peftlab.errors import ConfigError
from peftlab.methods import METHODS, BuildContext, apply_method, count_parameters
from peftlab.models import load_backbone
from peftlab.tasks import task_class

from conftest import USER_CACHE, compose, run_cli


def params_conf(*overrides: str) -> ParamsSchema:
    return validate(compose(list(overrides), config_name="params"), ParamsSchema)


def meta_counts_equal_the_instantiated_model(model, task_type, methods, cache):
    task = task_class(task_type)(data=None, labels=["a", "b"])
    for method in methods:
        conf = params_conf(f"model={model}", f"method={method}", f"task_type={task_type}")
        bb = load_backbone(conf.model, cache, task)
        context = BuildContext(task, bb.model, bb.tokenizer, bb.path)
        if not METHODS[method].capabilities.meta_device:  # declared: refused with one line, not miscounted
            with pytest.raises(ConfigError, match=f"^method={method} cannot be counted on the meta device$"):
                count(conf)
            continue
        try:
            row = count(conf)
        except ConfigError as err:  # a method that refuses the architecture refuses it on real weights too
            with pytest.raises(ConfigError, match=re.escape(str(err))):
                apply_method(bb.model, conf.method, context)
            continue
        real = count_parameters(apply_method(bb.model, conf.method, context))
        assert (row["trainable"], row["total"]) == (real["trainable"], real["total"]), (model, method)


@pytest.mark.parametrize("model,task_type", [("tiny_llama", "causal_lm"), ("tiny_gpt2", "causal_lm"),
                                             ("tiny_bert", "seq_cls"), ("minilm_l6", "seq_cls")])
def test_meta_counts_equal_the_instantiated_model(model, task_type, cache_dir):
    meta_counts_equal_the_instantiated_model(model, task_type, sorted(METHODS), cache_dir)


@pytest.mark.slow
def test_meta_counts_equal_the_instantiated_smollm2():
    meta_counts_equal_the_instantiated_model("smollm2_135m", "causal_lm", ["lora", "prefix", "ia3", "full"], USER_CACHE)


@pytest.mark.parametrize("overrides,adapter_only", [
    # LoRA paper, Table 2: RoBERTa-base 0.3M and RoBERTa-large 0.8M (r=8 on W_q, W_v)
    (["model=roberta_base", "method.r=8", "method.target_modules=[query,value]"], 294_912),
    (["model=roberta_large", "method.r=8", "method.target_modules=[query,value]"], 786_432),
    # GPT-2 fuses W_q, W_k, W_v into c_attn: LoRA on c_attn adapts all three (r=4)
    (["model=gpt2_medium", "method.r=4", "method.target_modules=[c_attn]"], 24 * 4 * (1024 + 3 * 1024)),
    # prefix tuning, 20 virtual tokens: 2 * layers * width * tokens
    (["model=gpt2_large", "method=prefix"], 2 * 36 * 1280 * 20),
    (["model=gpt3_175b", "method=prompt"], 20 * 12288),
])
def test_paper_shapes_count_without_weights(overrides, adapter_only):
    assert count(params_conf(*overrides))["adapter_only"] == adapter_only


def test_gpt3_shape_total_is_175b():
    row = count(params_conf("model=gpt3_175b", "method=full"))
    assert 174e9 < row["total"] < 176e9


def test_cli_multirun_prints_one_table(tmp_path):
    proc = run_cli("peftlab-params", "-m", "model=roberta_base", "method=lora,prefix,full",
                   f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "params.md").read_text()
    assert [line.split("|")[2].strip() for line in table.splitlines()[2:]] == ["lora", "prefix", "full"]
    assert table in proc.stdout
    assert "| roberta_base | full | seq_cls | 124,647,170 (124.65M) | 124,647,170 (124.65M)" in table
