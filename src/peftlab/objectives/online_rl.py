"""Online RL with an adapter policy: GRPO and RLOO on prompts whose answers the rewards judge.

One training step is five named steps. Every ``rl.num_iterations`` steps a rollout is made
(objectives/rl_rollout.py): ``sample`` draws ``rl.num_generations`` completions of every prompt of the
batch from the current policy (eval mode, ``rl.temperature`` / ``rl.top_p``); ``score`` weighs the
rewards of each (tasks/rewards.py, and a trained reward model on the same base:
tasks/reward_scorer.py); ``advantages`` compares each with its prompt's group; ``reference`` takes
the reference's log-probabilities (tasks/reference.py: one strategy with preference training).
``loss``, on every step, is the clipped policy-gradient loss plus ``beta`` times the k3 estimate of
the KL divergence to the reference (objectives/rl_loss.py has the formulas and the loss types). The
ratio is taken against the log-probabilities of the policy that sampled: 1 on the sampling step, so
the clip binds on the later ones only (``clip_fraction`` is 0 with ``rl.num_iterations=1``).

An objective of one's own subclasses ``OnlineRL`` and overrides one step (docs/guides/objectives.md). What
a step records, and the batches whose rewards gave no gradient: objectives/rl_records.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from peftlab.config.rl import LEARNED
from peftlab.objectives.base import Clock, Objective, register_objective
from peftlab.tasks.reference import Reference
from peftlab.tasks.rewards import reward_values

if TYPE_CHECKING:  # torch loads with the first model, not with the config checks
    import torch

    from peftlab.objectives.rl_rollout import Rollout


@register_objective
class OnlineRL(Objective):
    name = "online_rl"
    steps = ("sample", "score", "advantages", "reference", "loss")

    def __init__(self, task, run=None):
        super().__init__(task, run)
        from peftlab.config.rl import RLSchema

        # the task's where it has them (it encodes the prompts with room for rl.max_new_tokens); on other
        # data, check() refuses the run before any work
        self.settings = getattr(task, "settings", None) or getattr(run, "rl", None) or RLSchema(name="grpo")
        self.init_adapter = getattr(run, "init_adapter", None)
        self.tokenizer: Any = None
        self.scorer = None  # a trained reward model (rl.reward_model)
        self.ref = Reference(self.settings.reference, self.init_adapter)  # the reference strategy: tasks/reference.py
        self.seconds = dict.fromkeys(("generate", "reward", "policy_forward", "reference"), 0.0)  # per phase, summed
        self.step_record: dict[str, float] = {}  # the last step's statistics, for the loggers
        # since the run (re)started: texts cut for the reward model, batches, those without signal
        self.counts = dict.fromkeys(("reward_texts_cut", "batches_sampled", "batches_without_signal"), 0)
        self._told: set[str] = set()  # the warnings already given
        self.rollout: Optional["Rollout"] = None  # the sampled batch the steps train on (objectives/rl_rollout.py)
        # each prompt read once for its group (rl_rollout.shared_prompts), where the model continues
        # from a shared cache as from the whole prompt: checked on the first rollout
        self.share_prompts: Optional[bool] = None

    @property
    def max_new_tokens(self) -> int:
        return self.settings.max_new_tokens

    def check(self, run: Any) -> list[str]:
        problems = super().check(run)
        if not self.task.takes_rl:  # with rl=..., the task has said so (tasks/base.py)
            return problems if run.rl is not None else [
                f"training_objective={self.name}: data.task_type={run.data.task_type} is not online RL (use data "
                "of task type rl, e.g. data=date_prompts)"]
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
        if s.num_iterations > 1 and run.trainer.accumulate_grad_batches > 1:
            problems.append(f"rl.num_iterations={s.num_iterations} with trainer.accumulate_grad_batches="
                            f"{run.trainer.accumulate_grad_batches}: a rollout is one batch, trained on for whole "
                            "steps; raise data.batch_size instead")
        if s.reward_model:
            from peftlab.tasks.reward import reward_model_problems

            problems += reward_model_problems(Path(s.reward_model).expanduser(), run, one_base=not s.reward_separate)
        return problems

    def settings_record(self) -> dict[str, Any]:
        import dataclasses

        from peftlab.objectives.rl_records import warn_without_signal

        bytes_ = {"reference_bytes": self.ref.bytes,
                  "reward_model_bytes": self.scorer.bytes if self.scorer is not None else 0}
        seconds = {k: round(v, 3) for k, v in self.seconds.items()}
        scored = {"reward_text_format": self.scorer.text_format} if self.scorer is not None else {}
        warn_without_signal(self.counts, self._told)
        return {"rl": {**dataclasses.asdict(self.settings), **bytes_, **scored, **self.counts, "seconds": seconds,
                       "shared_prompts": self.share_prompts}}

    # ------------------------------------------------------------------------------ the models
    def before_wrapping(self, backbone: Any) -> None:
        self.ref.before_wrapping(backbone)  # separate: the way without PEFT, a second full copy

    def before_training(self, model: Any, data: Any) -> None:
        s = self.settings
        self.tokenizer = data.tokenizer
        self.ref.before_training(model)
        if s.reward_model and self.scorer is None:
            from peftlab.tasks.reward_scorer import RewardScorer

            own = None  # rl.reward_format=reward_run: the reward run's prompt format and system prompt
            if s.reward_format == "reward_run":
                from peftlab.runs.config import read_run_config

                own = read_run_config(Path(s.reward_model).expanduser().parent, key="rl.reward_model").data
            self.scorer = RewardScorer(s.reward_model, model, data.tokenizer, self.task.data, s.reward_separate, own)

    # ------------------------------------------------------------------------------- the step
    def loss(self, model, batch):
        """Make a rollout every ``rl.num_iterations`` steps (the batches of the steps between go
        unused) and take the policy loss (objectives/rl_loss.py) on the current one."""
        from peftlab.objectives.rl_loss import policy_loss

        s = self.settings
        fresh = (self.rollout is None or self.step % s.num_iterations == 0
                 or not 0 <= self.step - self.rollout.step < s.num_iterations)
        if fresh:
            self.rollout = self.roll_out(model, batch)
        r = self.rollout.to(batch["input_ids"].device)
        clock = Clock(self.seconds)
        logps, entropy = clock("policy_forward", self.token_logps, model, r.joint(), True)
        logps = r.tokens(logps)
        if fresh:  # the policy that sampled: the ratio is 1 on this step, and the later ones' reference
            r.old = logps.detach()
        out = policy_loss(logps, r.old, r.reference, r.advantages, r.loss_mask(s.mask_truncated), s,
                          self.max_new_tokens)
        self._record(batch, r, {**out.stats, "entropy": float(entropy.mean()) if entropy.numel() else 0.0}, fresh)
        return out.total, out.count

    def roll_out(self, model, batch) -> "Rollout":
        """The rollout the next ``rl.num_iterations`` steps train on: sample, score, advantages, reference."""
        from peftlab.objectives.rl_rollout import Rollout, finished, sharing_holds

        G, clock = self.settings.num_generations, Clock(self.seconds)
        if self.share_prompts is None:
            self.share_prompts = sharing_holds(model, batch["gen_input_ids"], batch["gen_attention_mask"], G)
        completion, done = clock("generate", self.sample, model, batch["gen_input_ids"], batch["gen_attention_mask"])
        prompts = batch["gen_input_ids"].repeat_interleave(G, 0)
        prompt_mask = batch["gen_attention_mask"].repeat_interleave(G, 0)
        ended = finished(model, self.tokenizer, completion, done)
        rewards, per_reward, texts, cut = clock("reward", self.score, model, batch, completion, done, ended)
        r = Rollout(step=self.step, prompts=prompts, prompt_mask=prompt_mask, completion=completion, done=done,
                    finished=ended, rewards=rewards, per_reward=per_reward, texts=texts, cut=cut,
                    advantages=self.advantages(rewards))
        if self.settings.beta > 0:
            r.reference = clock("reference", self.reference, model, r)
        self.counts["batches_sampled"] += 1
        return r

    # --------------------------------------------------------------------------- the named steps
    def sample(self, model, prompts: "torch.Tensor", prompt_mask: "torch.Tensor"):
        """(completion tokens, which of them are real): ``rl.num_generations`` answers of each of the
        batch's prompts, in a row."""
        from peftlab.objectives.rl_rollout import sample

        G = self.settings.num_generations
        if not self.share_prompts:  # each row read whole
            prompts, prompt_mask, G = prompts.repeat_interleave(G, 0), prompt_mask.repeat_interleave(G, 0), 1
        return sample(model, self.tokenizer, self.settings, self.max_new_tokens, prompts, prompt_mask, self.step, G)

    def score(self, model, batch, completion, done, ended):
        """(the weighted total, each reward's values, the decoded completions, which of them the reward
        model saw cut); ``ended``: the completions that ended within rl.max_new_tokens."""
        import torch

        G = self.settings.num_generations
        real = completion.masked_fill(~done, self.tokenizer.pad_token_id)
        texts = [t.strip() for t in self.tokenizer.batch_decode(real, skip_special_tokens=True)]
        prompts = [p for p in batch["prompts"] for _ in range(G)]
        rows = [f for f in batch["fields"] for _ in range(G)]
        fields = {k: [r.get(k) for r in rows] for k in dict.fromkeys(k for r in rows for k in r)}
        fields.update(references=[r for r in batch["references"] for _ in range(G)],
                      completion_lengths=done.sum(1).tolist())
        per_reward, cut = {}, None
        for name in self.settings.rewards:
            if name == LEARNED:  # a cut-off completion is scored without an end of turn
                per_reward[name] = self.scorer.checked_scores(model, prompts, texts, ended.tolist(), self.step)
                cut = self.scorer.cut
                self.counts["reward_texts_cut"] = self.scorer.texts_cut
            else:
                per_reward[name] = torch.tensor(reward_values(name, prompts, texts, fields, self.max_new_tokens),
                                                dtype=torch.float64)
        total = sum(torch.nan_to_num(self.settings.rewards[k] * v, nan=0.0) for k, v in per_reward.items())
        return total.to(completion.device), per_reward, texts, cut

    def advantages(self, rewards: "torch.Tensor") -> "torch.Tensor":
        """Each completion's advantage within its prompt's group (rl.algorithm, rl.scale_rewards)."""
        from peftlab.objectives.rl_loss import advantages

        G, s = self.settings.num_generations, self.settings
        return advantages(rewards.view(-1, G), s.algorithm, s.scale_rewards).view(-1)

    def reference(self, model, r: "Rollout") -> "torch.Tensor":
        """The reference's log-probabilities of the completion tokens (rl.reference)."""
        return r.tokens(self.ref(model, self.token_logps, r.joint())[0])

    def token_logps(self, model, batch, entropy: bool = False):
        """Log-probabilities of the completion tokens (every labelled position, row-major), with
        each row's positions counted from its first real token as generation counts them; with
        ``entropy``, the entropy of each of those positions' distributions too (no gradient)."""
        import torch
        import torch.nn.functional as F

        from peftlab.objectives.rl_rollout import shared_prompts
        from peftlab.tasks.heads import answer_logits

        config = getattr(model, "active_peft_config", None)
        positions = None if getattr(config, "is_prompt_learning", False) else (
            (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0))
        G, w = self.settings.num_generations, batch.get("prompt_width", 0) if self.share_prompts else 0
        # each prompt read once for its group (rl_rollout.shared_prompts), the completions go on from it;
        # with gradient: the group's gradients flow back into the one reading of its prompt
        shared = shared_prompts(model, batch["input_ids"][::G, :w], batch["attention_mask"][::G, :w], G) if w else {}
        if shared:
            batch = {"input_ids": batch["input_ids"][:, w - 1:], "labels": batch["labels"][:, w - 1:],
                     "attention_mask": batch["attention_mask"]}
            positions = positions[:, w - 1:]
        logits, targets = answer_logits(model, batch, position_ids=positions, **shared)
        # the distribution the tokens were sampled from: the logits at rl.temperature
        logits = logits / self.settings.temperature
        logps = -F.cross_entropy(logits, targets, reduction="none")
        if not entropy:
            return logps, None
        with torch.no_grad():
            spread = torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)
        return logps, spread

    # ------------------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        """The rollout the next steps still train on (rl.num_iterations > 1), for a checkpoint, and
        whether prompts are shared (a resumed run reads them as the uninterrupted one did)."""
        keep = self.rollout is not None and self.settings.num_iterations > 1
        shared = {"share_prompts": self.share_prompts} if self.share_prompts is not None else {}
        return {**shared, **({"rollout": self.rollout.state()} if keep else {})}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        from peftlab.objectives.rl_rollout import Rollout

        self.rollout = Rollout.from_state(state["rollout"]) if state.get("rollout") else None
        self.share_prompts = state.get("share_prompts", self.share_prompts)

    # ----------------------------------------------------------------------------- the records
    def _record(self, batch, r: "Rollout", stats: dict[str, float], fresh: bool) -> None:
        from peftlab.data.loaders import rank_and_world
        from peftlab.objectives.rl_records import completion_rows, step_statistics, write_completions

        G = self.settings.num_generations
        self.step_record, no_signal = step_statistics(r.rewards, r.per_reward, stats, r.done, r.cut, G)
        if not fresh:  # the rollout's own counts were taken when it was sampled
            return
        self.counts["batches_without_signal"] += int(no_signal)
        every, run_dir = self.settings.completions_every, self.run_dir
        written = getattr(self, "_written_step", None)
        if every and run_dir is not None and self.step % every == 0 and self.writes_records \
                and rank_and_world()[0] == 0 and self.step != written and r.texts is not None:  # once per step
            rows = completion_rows(self.step, batch, r.texts, r.rewards, r.per_reward, r.cut, G)
            write_completions(run_dir / "completions.jsonl", self.step, rows, resumed=written is None)
            self._written_step = self.step

    def step_logs(self) -> dict[str, float]:
        return self.step_record
