"""A trained reward model scoring an RL policy's completions (``rl.reward_model=<run_dir>/adapter``).

One-base mode (the default): the reward model's adapter is loaded as a second, frozen adapter on the
policy's own base and its score head kept beside it, so policy, reference (adapter off) and reward
model are three models on the memory of one base. A completion is scored by the base's decoder with
the reward adapter active, the head applied to the last real token: what transformers' sequence
classification model computes. ``rl.reward_separate=true`` loads the reward model as a model of its
own, the way without PEFT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from peftlab.data.collators import pad
from peftlab.data.tokenize import PromptFormat, encode
from peftlab.errors import ConfigError
from peftlab.tasks.reference import eval_mode, load_frozen, param_bytes, use_adapter

NAME = "reward"  # the reward model's adapter beside the policy's


def read_head(folder: Path) -> dict[str, torch.Tensor]:
    """The score head saved with a reward adapter: its weight (1, hidden) and bias, if any."""
    from safetensors.torch import load_file

    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        raise ConfigError(f"rl.reward_model: {folder} holds no adapter_model.safetensors")
    state = load_file(path)
    head = {k.rsplit(".", 1)[1]: v for k, v in state.items() if k.rsplit(".", 2)[-2] == "score"}
    if "weight" not in head or head["weight"].shape[0] != 1:
        raise ConfigError(f"rl.reward_model: {folder} holds no score head of one output: train a reward model "
                          "with data.task_type=reward")
    return head


class RewardScorer:
    def __init__(self, folder: str, policy: Any, tokenizer: Any, data: Any, separate: bool):
        from peftlab.runs.config import read_adapter_config

        self.folder, self.tokenizer, self.separate = Path(folder).expanduser(), tokenizer, separate
        config = read_adapter_config(self.folder, "rl.reward_model")
        if config.get("task_type") != "SEQ_CLS":
            raise ConfigError(f"rl.reward_model: {self.folder} is a {config.get('task_type')} adapter, not a reward "
                              "model (train one with data.task_type=reward)")
        base = policy.peft_config[policy.active_adapter].base_model_name_or_path if hasattr(policy, "peft_config") \
            else policy.config.name_or_path
        # a reward run's folder names its base, which the config checks compared (reward_model_problems); a
        # bare adapter folder has only the path it was trained from
        bare = not (self.folder.parent / "config.yaml").is_file()
        if bare and Path(str(config.get("base_model_name_or_path"))).resolve() != Path(str(base)).resolve():
            raise ConfigError(f"rl.reward_model: {self.folder} was trained on {config.get('base_model_name_or_path')}, "
                              f"the policy's base is {base}: a reward model scores on the base it was trained on")
        head = read_head(self.folder)
        self.fmt = PromptFormat.for_tokenizer(tokenizer, data.prompt_format, data.system_prompt)
        self.max_length = data.max_length
        if separate:
            from peft import PeftModel
            from transformers import AutoModelForSequenceClassification

            backbone = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, local_files_only=True,
                                                                          pad_token_id=tokenizer.pad_token_id)
            self.model = PeftModel.from_pretrained(backbone, self.folder).eval().requires_grad_(False)
            self.bytes = param_bytes(self.model.parameters())
            return
        if not hasattr(policy, "peft_config"):  # (a transformers model has load_adapter too)
            raise ConfigError("rl.reward_model: the policy has no adapter to put the reward model's beside; "
                              "use rl.reward_separate=true")
        self.head = {k: v.to(next(policy.parameters()).dtype) for k, v in head.items()}
        self.bytes = load_frozen(policy, str(self.folder), NAME) + param_bytes(self.head.values())

    def texts(self, prompts: list[str], completions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt and completion as the reward model was trained on them, right-padded."""
        ids = [encode(self.tokenizer, self.fmt, p, c, self.max_length)["input_ids"]
               for p, c in zip(prompts, completions, strict=True)]
        return pad(ids, self.tokenizer.pad_token_id), pad([[1] * len(i) for i in ids], 0)

    @torch.no_grad()
    def score(self, policy: Any, prompts: list[str], completions: list[str]) -> torch.Tensor:
        device = next(policy.parameters()).device
        input_ids, mask = (t.to(device) for t in self.texts(prompts, completions))
        if self.separate:
            return self.model.to(device)(input_ids=input_ids, attention_mask=mask).logits[:, 0].float()
        with eval_mode(policy), use_adapter(policy, NAME):
            decoder = policy.get_base_model().base_model
            hidden = decoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        # the last token that is not padding, as transformers' sequence classification models pool: by
        # the model config's pad id, which the reward model trained with (the same base's)
        real = (input_ids != policy.config.pad_token_id).int()
        last = (torch.arange(input_ids.shape[1], device=device) * real).argmax(-1)
        pooled = hidden[torch.arange(len(last), device=device), last]
        head = {k: v.to(device) for k, v in self.head.items()}
        return torch.nn.functional.linear(pooled, head["weight"], head.get("bias")).float()[:, 0]
