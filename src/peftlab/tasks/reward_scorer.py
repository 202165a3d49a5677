"""A trained reward model scoring an RL policy's completions (``rl.reward_model=<run_dir>/adapter``).

One-base mode (the default): the reward model's adapter is loaded as a second, frozen adapter on the
policy's own base and its score head kept beside it, so policy, reference (adapter off) and reward
model are three models on the memory of one base. A completion is scored by the base's decoder with
the reward adapter active, the head applied to the last real token: what transformers' sequence
classification model computes. ``rl.reward_separate=true`` loads the reward model as a model of its
own, the way without PEFT.

A text is what the reward model learned from: the prompt in its run's prompt format and system
prompt (``rl.reward_format``), and the completion followed by the end of turn only where the policy
ended it. A completion cut off by ``rl.max_new_tokens`` is scored as unfinished, without an end of
turn. A text longer than ``data.max_length`` loses the start of its prompt, as the reward run's own
texts did; ``score`` counts them (``cut``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch

from peftlab.data.collators import pad
from peftlab.data.tokenize import PromptFormat, encode
from peftlab.errors import ConfigError
from peftlab.tasks.reference import eval_mode, load_frozen, param_bytes, use_adapter

log = logging.getLogger("peftlab.objectives.online_rl")

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
    def __init__(self, folder: str, policy: Any, tokenizer: Any, data: Any, separate: bool, text_format: Any = None):
        """``text_format``: the data config whose prompt format and system prompt the texts take (the
        reward run's, with ``rl.reward_format=reward_run``); None: ``data``'s, the policy's."""
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
        text_format = text_format if text_format is not None else data
        self.fmt = PromptFormat.for_tokenizer(tokenizer, text_format.prompt_format, text_format.system_prompt)
        self.text_format = {"prompt_format": text_format.prompt_format, "system_prompt": text_format.system_prompt}
        self.max_length = data.max_length
        self.cut: list[bool] = []  # the last scored texts: which had to be cut (lost the start of their prompt)
        self.texts_cut = 0  # how many, since the run (re)started
        if separate:
            from transformers import AutoModelForSequenceClassification

            from peftlab.runs.adapters import load_adapter

            backbone = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, local_files_only=True,
                                                                          pad_token_id=tokenizer.pad_token_id)
            self.model = load_adapter(backbone, self.folder, "rl.reward_model").eval().requires_grad_(False)
            self.bytes = param_bytes(self.model.parameters())
            return
        if not hasattr(policy, "peft_config"):  # (a transformers model has load_adapter too)
            raise ConfigError("rl.reward_model: the policy has no adapter to put the reward model's beside; "
                              "use rl.reward_separate=true")
        self.head = {k: v.to(next(policy.parameters()).dtype) for k, v in head.items()}
        self.bytes = load_frozen(policy, str(self.folder), NAME, "rl.reward_model") + param_bytes(self.head.values())

    def text_ids(self, prompt: str, completion: str, finished: bool) -> tuple[list[int], bool]:
        """The token ids of one text as the reward model was trained on them, and whether it had to
        be cut: a finished completion is followed by its end of turn (the reward run's answers were),
        an unfinished one is not: it is scored as what it is, an answer cut off."""
        if finished:
            encoded = encode(self.tokenizer, self.fmt, prompt, completion, self.max_length)
            return encoded["input_ids"], encoded["truncated"]
        tok = self.tokenizer
        prompt_ids = tok(self.fmt.prompt_text(tok, prompt), add_special_tokens=not self.fmt.use_chat).input_ids
        answer_ids = tok(completion, add_special_tokens=False).input_ids
        cut = len(prompt_ids) + len(answer_ids) > self.max_length
        if cut:  # as encode() cuts: the answer whole when possible, the prompt from the left
            answer_ids = answer_ids[:self.max_length - 1]
            prompt_ids = prompt_ids[-(self.max_length - len(answer_ids)):]
        return prompt_ids + answer_ids, cut

    def texts(self, prompts: list[str], completions: list[str],
              finished: Optional[list[bool]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts and completions as the reward model was trained on them, right-padded
        (``finished``: which completions ended within the budget; None: all). Sets ``cut``."""
        finished = [True] * len(completions) if finished is None else list(finished)
        encoded = [self.text_ids(p, c, f) for p, c, f in zip(prompts, completions, finished, strict=True)]
        ids, self.cut = [e[0] for e in encoded], [e[1] for e in encoded]
        return pad(ids, self.tokenizer.pad_token_id), pad([[1] * len(i) for i in ids], 0)

    @torch.no_grad()
    def checked_scores(self, policy: Any, prompts: list[str], completions: list[str], finished: list[bool],
                       step: int) -> torch.Tensor:
        """``score`` in float64 on the CPU: a score that is not a finite number ranks nothing and stops
        the run; texts longer than data.max_length lost the start of their prompt: counted
        (``texts_cut``) and said once."""
        scores = self.score(policy, prompts, completions, finished).double().cpu()
        bad = ~torch.isfinite(scores)
        if bad.any():
            raise ConfigError(f"rl.reward_model: the reward model gave {int(bad.sum())} of {len(scores)} completions "
                              f"a score that is not a finite number at step {step + 1} "
                              f"({scores[bad].tolist()[:4]}): check the reward run ({self.folder})")
        n = sum(self.cut)
        if n and not self.texts_cut:
            log.warning("rl.reward_model: %d of %d texts at step %d were longer than data.max_length=%d and lost the "
                        "start of their prompt before scoring (counted: metrics.json rl.reward_texts_cut, "
                        "train/reward_texts_cut)", n, len(self.cut), step + 1, self.max_length)
        self.texts_cut += n
        return scores

    def score(self, policy: Any, prompts: list[str], completions: list[str],
              finished: Optional[list[bool]] = None) -> torch.Tensor:
        device = next(policy.parameters()).device
        input_ids, mask = (t.to(device) for t in self.texts(prompts, completions, finished))
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
