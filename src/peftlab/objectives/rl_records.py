"""What an online RL step records: its statistics for the loggers, and ``completions.jsonl`` (one
prompt's sampled answers with every reward, every ``rl.completions_every`` steps)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("peftlab.objectives.online_rl")


def step_statistics(rewards, per_reward: dict[str, Any], loss_stats: dict[str, float], done,
                    cut: Optional[list[bool]], G: int) -> tuple[dict[str, float], bool]:
    """The step's record for the loggers (``loss_stats``: the loss's clip fractions, KL and the
    policy's entropy), and whether every group's completions scored alike (every advantage 0: the
    rewards gave this batch no gradient)."""
    groups = rewards.view(-1, G)
    alike = (groups == groups[:, :1]).all(1)
    record = {"reward": float(rewards.mean()), "reward_std": float(rewards.std()), **loss_stats,
              "completion_length": float(done.sum(1).double().mean()),
              "groups_without_signal": float(alike.double().mean())}
    if cut is not None:
        record["reward_texts_cut"] = float(sum(cut))
    record.update({f"reward/{k}": float(v.nanmean()) for k, v in per_reward.items()})  # None: NaN, not counted
    record.update({f"reward/{k}_std": float(v[~v.isnan()].std()) for k, v in per_reward.items()})
    return record, bool(alike.all())


def completion_rows(step: int, batch: dict[str, Any], texts: list[str], rewards, per_reward: dict[str, Any],
                    cut: Optional[list[bool]], G: int) -> list[dict[str, Any]]:
    """The first prompt's G sampled answers, each with its total and per-reward scores."""
    return [{"step": step, "prompt": batch["prompts"][0], "reference": batch["references"][0],
             "completion": texts[i], "reward": round(float(rewards[i]), 4),
             **{k: None if v[i].isnan() else round(float(v[i]), 4) for k, v in per_reward.items()},
             **({"reward_text_cut": cut[i]} if cut is not None else {})} for i in range(G)]


def write_completions(path: Path, step: int, rows: list[dict[str, Any]], resumed: bool) -> None:
    """Append ``rows``; the first write of a (resumed) process drops the rows of the steps it replays."""
    if resumed and path.exists():  # a line a kill cut in half is no row
        kept = [line for line in path.read_text().splitlines() if (row := _row(line)) and row.get("step", step) < step]
        path.write_text("".join(line + "\n" for line in kept))
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def warn_without_signal(counts: dict[str, int], told: set[str]) -> None:
    """Once, when no sampled batch had a group whose completions scored differently."""
    if counts["batches_sampled"] and counts["batches_without_signal"] == counts["batches_sampled"] \
            and "signal" not in told:
        told.add("signal")
        log.warning("rl: in every one of the %d sampled batches, each prompt's completions all scored the same: "
                    "every advantage was 0 and the rewards gave no gradient (metrics.json rl.batches_without_signal; "
                    "see rl.temperature, rl.rewards)", counts["batches_sampled"])


def _row(line: str) -> Optional[dict[str, Any]]:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None
