"""Online RL with an adapter policy: GRPO and RLOO on prompts whose answers the rewards judge.

Each training step samples ``rl.num_generations`` completions of every prompt in the batch from the
current policy (eval mode, sampled at ``rl.temperature`` / ``rl.top_p``), scores them with the
weighted rewards (tasks/rewards.py, and a trained reward model on the same base:
tasks/reward_scorer.py), turns the rewards into advantages within each prompt's group, and takes the
clipped policy-gradient loss per completion token plus ``beta`` times the k3 estimate of the KL
divergence to the reference, ``exp(r - p) - (r - p) - 1`` with p, r the policy's and the reference's
log-probabilities of the token. The loss is the mean over every completion token of the step (as
SFT's over answer tokens). The completions are sampled once per step and trained on once (TRL's
``num_iterations=1``): the ratio to the sampling policy is then exactly 1 in value, its gradient the
policy gradient, and the clip never binds (``clip_fraction`` 0); the clipped form is kept so that
the loss is GRPO's, and several updates per sample would make it bind.

A trained reward model scores the texts it learned from (tasks/reward_scorer.py); what a step
records, and the batches whose rewards gave no gradient: tasks/rl_records.py.

Evaluation is SFT's: greedy exact match and the loss of the reference answers on the test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from peftlab.config.rl import LEARNED
from peftlab.data.tokenize import IGNORE_INDEX
from peftlab.errors import Diverged
from peftlab.tasks.base import register_task
from peftlab.tasks.causal_lm import CausalLMTask
from peftlab.tasks.reference import Clock, as_reference, eval_mode, load_frozen
from peftlab.tasks.rewards import reward_values  # registers the shipped rewards with the config checks


@register_task
class RLTask(CausalLMTask):
    name = "rl"
    takes_rl = True
    probe_setup = None

    def __init__(self, data, labels=None, run=None):
        super().__init__(data, labels, run)
        from peftlab.config.rl import RLSchema

        self.settings = getattr(run, "rl", None) or RLSchema(name="grpo")
        if self.settings.max_new_tokens is None:  # what the run samples with, recorded and read by the rewards
            self.settings.max_new_tokens = data.max_new_tokens
        self.init_adapter = getattr(run, "init_adapter", None)
        self.scorer = None  # a trained reward model (rl.reward_model)
        self.reference_model = None  # rl.reference=separate: a frozen copy of the backbone
        self.reference_bytes = 0
        self.seconds = dict.fromkeys(("generate", "reward", "policy_forward", "reference"), 0.0)  # per phase, summed
        self.step_record: dict[str, float] = {}  # the last step's statistics, for the loggers
        # since the run (re)started: texts cut for the reward model, batches, those without signal
        self.counts = dict.fromkeys(("reward_texts_cut", "batches_sampled", "batches_without_signal"), 0)
        self._told: set[str] = set()  # the warnings already given
        self._cut: Optional[list[bool]] = None  # the last scored texts the reward model saw cut

    @property
    def max_new_tokens(self) -> int:
        return self.settings.max_new_tokens

    def check(self, run: Any) -> list[str]:
        problems = super().check(run)
        s, can = self.settings, run.method.capabilities
        if s.reference == "adapter_off" and not can.adapter:
            problems.append(f"rl.reference=adapter_off: method={run.method.name} has no adapter to switch off; "
                            "use rl.beta=0 rl.reference=none")
        elif s.reference == "adapter_off" and run.init_adapter:
            problems.append("rl.reference=adapter_off with init_adapter: the reference would be the base, not the "
                            "model the policy starts from; use rl.reference=frozen_adapter")
        elif s.reference == "adapter_off" and run.method.adapter_off_differs():
            problems.append(f"rl.reference=adapter_off: {run.method.adapter_off_differs()}, so the base is not the "
                            "model the run starts from; use rl.reference=none with rl.beta=0")
        if s.reference == "frozen_adapter" and not run.init_adapter:
            problems.append("rl.reference=frozen_adapter needs init_adapter=<run_dir>/adapter: the frozen copy is of "
                            "the adapter the run starts from")
        if s.reference == "separate" and run.init_adapter:
            problems.append("rl.reference=separate with init_adapter: the copy is of the base, not the model the "
                            "policy starts from; use rl.reference=frozen_adapter")
        if s.max_new_tokens >= run.data.max_length:
            problems.append(f"rl.max_new_tokens={s.max_new_tokens} leaves no room for a prompt within "
                            f"data.max_length={run.data.max_length}")
        if s.reward_model:
            from peftlab.tasks.reward import reward_model_problems

            problems += reward_model_problems(Path(s.reward_model).expanduser(), run, one_base=not s.reward_separate)
        return problems

    def settings_record(self) -> dict[str, Any]:
        import dataclasses

        bytes_ = {"reference_bytes": self.reference_bytes,
                  "reward_model_bytes": self.scorer.bytes if self.scorer is not None else 0}
        seconds = {k: round(v, 3) for k, v in self.seconds.items()}
        scored = {"reward_text_format": self.scorer.text_format} if self.scorer is not None else {}
        from peftlab.tasks.rl_records import warn_without_signal

        warn_without_signal(self.counts, self._told)
        return {"rl": {**dataclasses.asdict(self.settings), **bytes_, **scored, **self.counts, "seconds": seconds}}

    # -------------------------------------------------------------------------------- the data
    def encoder(self, tokenizer: Any) -> Callable[[dict[str, Any], str], dict[str, Any]]:
        from peftlab.data.tokenize import PromptFormat

        encode_record = super().encoder(tokenizer)
        fmt = PromptFormat.for_tokenizer(tokenizer, self.data.prompt_format, self.data.system_prompt)

        def encode_prompt(row: dict[str, Any], where: str) -> dict[str, Any]:
            prompt = str(row[self.data.prompt_field])
            whole = tokenizer(fmt.prompt_text(tokenizer, prompt), add_special_tokens=not fmt.use_chat).input_ids
            # the prompt is never cut: the policy answers it whole (unusable() refuses one with no room left)
            # the row's other fields go to the reward functions by name (TRL's convention)
            fields = {k: v for k, v in row.items() if k != self.data.prompt_field}
            return {**encode_record(row, where), "prompt": prompt, "prompt_ids": whole, "fields": fields}

        return encode_prompt

    def unusable(self, record: dict[str, Any], example: dict[str, Any]) -> Optional[str]:
        room = self.data.max_length - len(example["prompt_ids"])  # the whole prompt (encoder)
        if room < self.max_new_tokens:
            return (f"prompt leaves no room for {self.max_new_tokens} new tokens (rl.max_new_tokens) within "
                    f"data.max_length={self.data.max_length}")
        if example["truncated"]:  # the test loss scores the reference answer after the whole prompt
            return f"prompt and reference answer longer than data.max_length={self.data.max_length}"
        return super().unusable(record, example)

    def collator(self, tokenizer: Any, evaluation: bool) -> Callable:
        from peftlab.data.collators import CausalLMCollator

        collate = CausalLMCollator(tokenizer.pad_token_id, generation=True)  # training samples from the prompts too
        return lambda examples: {**collate(examples), "prompts": [e["prompt"] for e in examples],
                                 "fields": [e["fields"] for e in examples]}

    # ------------------------------------------------------------------------------ the models
    def before_wrapping(self, backbone: Any) -> None:
        if self.settings.reference == "separate":  # the way without PEFT: a second full copy
            import copy

            from peftlab.tasks.reference import param_bytes

            self.reference_model = copy.deepcopy(backbone).eval().requires_grad_(False)
            self.reference_bytes = param_bytes(self.reference_model.parameters())

    def before_training(self, model: Any, data: Any) -> None:
        s = self.settings
        self.tokenizer = data.tokenizer
        if s.reference == "frozen_adapter":
            self.reference_bytes = load_frozen(model, self.init_adapter)
        if s.reward_model and self.scorer is None:
            from peftlab.tasks.reward_scorer import RewardScorer

            own = None  # rl.reward_format=reward_run: the reward run's prompt format and system prompt
            if s.reward_format == "reward_run":
                from peftlab.runs.config import read_run_config

                own = read_run_config(Path(s.reward_model).expanduser().parent, key="rl.reward_model").data
            self.scorer = RewardScorer(s.reward_model, model, data.tokenizer, self.data, s.reward_separate, own)

    # ------------------------------------------------------------------------------- the step
    def loss(self, model, batch):
        import torch

        s, G = self.settings, self.settings.num_generations
        prompts = batch["gen_input_ids"].repeat_interleave(G, 0)
        prompt_mask = batch["gen_attention_mask"].repeat_interleave(G, 0)
        clock = Clock(self.seconds)
        completion, done = clock("generate", self._sample, model, prompts, prompt_mask)
        rewards, per_reward = clock("reward", self._rewards, model, batch, completion, done, G)
        advantages = self._advantages(rewards.view(-1, G)).view(-1)

        ids = torch.cat([prompts, completion], 1)
        mask = torch.cat([prompt_mask, done.long()], 1)
        labels = torch.cat([torch.full_like(prompts, IGNORE_INDEX), completion.masked_fill(~done, IGNORE_INDEX)], 1)
        joint = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        rows = (labels[:, 1:] != IGNORE_INDEX).nonzero()[:, 0]
        logps = clock("policy_forward", self._token_logps, model, joint)
        ratio = torch.exp(logps - logps.detach())  # to the policy that sampled: one update per sample
        a = advantages[rows].to(logps.dtype)
        clipped = torch.clamp(ratio, 1 - s.epsilon, 1 + s.epsilon) * a
        per_token = -torch.minimum(ratio * a, clipped)
        kl = logps.new_zeros(logps.shape)
        if s.beta > 0:
            with torch.no_grad(), eval_mode(model), as_reference(model, s.reference):
                reference = self.reference_model.to(ids.device) if self.reference_model is not None else model
                ref = clock("reference", self._token_logps, reference, joint)
            diff = ref - logps
            kl = torch.exp(diff) - diff - 1
            per_token = per_token + s.beta * kl
        self._record(batch, completion, done, rewards, per_reward, kl, (ratio * a > clipped).float(), G)
        return per_token.sum(), rows.new_tensor(len(rows))

    def evaluate_batch(self, model, tokenizer, batch, metrics) -> list[dict[str, Any]]:
        if "exact_match" not in metrics.names:  # validation: the reference answers' loss, as SFT's (no sampling)
            metrics.update_loss(*CausalLMTask.loss(self, model, batch))
            return []
        return super().evaluate_batch(model, tokenizer, batch, metrics)

    def _sample(self, model, prompts, prompt_mask):
        """Completions (rows, new tokens) and which of their positions are real: up to and with the
        first end token."""
        import torch
        from transformers import GenerationConfig

        from peftlab.data.loaders import rank_and_world
        from peftlab.tasks.generation import end_tokens

        s, tok = self.settings, self.tokenizer
        ends = end_tokens(model, tok)
        # every sampling setting stated: transformers fills what is left unset from the model's own
        # generation config (a repetition penalty, min_p, ...), which would reshape the distribution
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=True, temperature=s.temperature,
                                  top_p=s.top_p, top_k=0, min_p=0.0, typical_p=1.0, repetition_penalty=1.0,
                                  no_repeat_ngram_size=0, num_beams=1, num_return_sequences=1,
                                  pad_token_id=tok.pad_token_id, eos_token_id=ends)
        synced = rank_and_world()[1] > 1  # a sharded forward is collective: every process decodes to the end
        with torch.no_grad(), eval_mode(model):
            try:
                out = model.generate(input_ids=prompts, attention_mask=prompt_mask, generation_config=config,
                                     synced_gpus=synced)
            except RuntimeError as err:  # torch.multinomial on what overflowed in the last update
                if "probability tensor contains" not in str(err):
                    raise
                raise Diverged(self.step + 1, "sampling met probabilities that are not finite (the policy's "
                               "logits overflowed)") from None
        completion = out[:, prompts.shape[1]:]
        is_end = torch.isin(completion, torch.tensor(ends, device=completion.device))
        after_end = (is_end.long().cumsum(1) - is_end.long()) > 0  # positions after the first end token
        return completion, ~after_end

    def _token_logps(self, model, batch):
        """Log-probabilities of the completion tokens (every labelled position, row-major), with
        each row's positions counted from its first real token as generation counts them."""
        import torch.nn.functional as F

        from peftlab.tasks.heads import answer_logits

        config = getattr(model, "active_peft_config", None)
        positions = None if getattr(config, "is_prompt_learning", False) else (
            (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0))
        logits, targets = answer_logits(model, batch, position_ids=positions)
        # the distribution the tokens were sampled from: the logits at rl.temperature
        return -F.cross_entropy(logits / self.settings.temperature, targets, reduction="none")

    def _rewards(self, model, batch, completion, done, G):
        import torch

        real = completion.masked_fill(~done, self.tokenizer.pad_token_id)
        texts = [t.strip() for t in self.tokenizer.batch_decode(real, skip_special_tokens=True)]
        prompts = [p for p in batch["prompts"] for _ in range(G)]
        rows = [f for f in batch["fields"] for _ in range(G)]
        fields = {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)}
        fields.update(references=[r for r in batch["references"] for _ in range(G)],
                      completion_lengths=done.sum(1).tolist())
        per_reward, self._cut = {}, None
        for name in self.settings.rewards:
            if name == LEARNED:
                from peftlab.tasks.generation import end_tokens

                # ended within rl.max_new_tokens: an end token among the real positions; the others were cut off
                ends = torch.tensor(end_tokens(model, self.tokenizer), device=completion.device)
                finished = (torch.isin(completion, ends) & done).any(1).tolist()
                per_reward[name] = self.scorer.checked_scores(model, prompts, texts, finished, self.step)
                self._cut = self.scorer.cut
                self.counts["reward_texts_cut"] = self.scorer.texts_cut
            else:
                per_reward[name] = torch.tensor(reward_values(name, prompts, texts, fields, self.max_new_tokens),
                                                dtype=torch.float64)
        total = sum(torch.nan_to_num(self.settings.rewards[k] * v, nan=0.0) for k, v in per_reward.items())
        self._texts = texts
        return total.to(completion.device), per_reward

    def _advantages(self, rewards):
        """(prompts, G) rewards -> advantages: GRPO's group-normalised, RLOO's leave-one-out."""
        G = rewards.shape[1]
        mean = rewards.mean(1, keepdim=True)
        if self.settings.algorithm == "rloo":
            return (rewards - (rewards.sum(1, keepdim=True) - rewards) / (G - 1))
        centred = rewards - mean
        return centred / (rewards.std(1, keepdim=True) + 1e-4) if self.settings.scale_rewards else centred

    # ----------------------------------------------------------------------------- the records
    def _record(self, batch, completion, done, rewards, per_reward, kl, clipped, G) -> None:
        from peftlab.data.loaders import rank_and_world
        from peftlab.tasks.rl_records import completion_rows, step_statistics, write_completions

        self.step_record, no_signal = step_statistics(rewards, per_reward, kl, clipped, done, self._cut, G)
        self.counts["batches_sampled"] += 1
        self.counts["batches_without_signal"] += int(no_signal)
        every, run_dir = self.settings.completions_every, getattr(self, "run_dir", None)
        written = getattr(self, "_written_step", None)
        if every and run_dir is not None and self.step % every == 0 and self.writes_records \
                and rank_and_world()[0] == 0 and self.step != written:  # once per optimizer step
            rows = completion_rows(self.step, batch, self._texts, rewards, per_reward, self._cut, G)
            write_completions(run_dir / "completions.jsonl", self.step, rows, resumed=written is None)
            self._written_step = self.step

    def step_logs(self) -> dict[str, float]:
        return self.step_record

