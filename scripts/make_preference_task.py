"""Generate the shipped preference tasks from the date task (deterministic; the output is committed).

``date_prefs``: each pair keeps a date prompt of the date task; ``chosen`` is the right ISO date and
``rejected`` a plausible mistake: day and month swapped, a two-digit year, the wrong separator, or a
day off. ``date_feedback`` (unpaired, for KTO): each prompt once, with either its right answer
(``label`` true) or one such mistake (``label`` false), about half each; no prompt has both.
Train, val and test come from the date task's own splits, so their dates stay disjoint.

    python scripts/make_preference_task.py   # writes src/peftlab/data/files/{date_prefs,date_feedback}/*.jsonl
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
from pathlib import Path

FILES = Path(__file__).resolve().parents[1] / "src/peftlab/data/files"
MISTAKES = ("swapped", "two_digit_year", "separator", "off_by_one")
# date_rewards: also the mistakes a briefly trained model makes itself (a wrong century, month or day,
# no zero padding), so that a reward model trained on them judges the policy's own answers
REWARD_MISTAKES = (*MISTAKES, "century", "month", "day", "unpadded")


def mistake(iso: str, kind: str, rng: random.Random) -> tuple[str, str]:
    """(the wrong answer, the kind of mistake it is); a swap that cannot swap becomes a day off."""
    d = dt.date.fromisoformat(iso)
    if kind == "swapped" and d.day <= 12 and d.day != d.month:
        return f"{d.year:04d}-{d.day:02d}-{d.month:02d}", kind
    if kind == "two_digit_year":
        return f"{d.year % 100:02d}-{d.month:02d}-{d.day:02d}", kind
    if kind == "separator":
        return iso.replace("-", rng.choice(["/", "."])), kind
    if kind == "century":
        year = d.year + 100 if d.year < 2000 else d.year - 100
        return f"{year:04d}-{d.month:02d}-{d.day:02d}", kind
    if kind == "month":
        month = rng.choice([m for m in range(1, 13) if m != d.month])
        return f"{d.year:04d}-{month:02d}-{min(d.day, 28):02d}", kind
    if kind == "day":
        return f"{d.year:04d}-{d.month:02d}-{rng.choice([x for x in range(1, 29) if x != d.day]):02d}", kind
    if kind == "unpadded" and (d.month < 10 or d.day < 10):
        return f"{d.year}-{d.month}-{d.day}", kind
    return (d + dt.timedelta(days=rng.choice([-1, 1]))).isoformat(), "off_by_one"


def write_pairs(out: Path, rng: random.Random, kinds: tuple[str, ...]) -> None:
    """One (prompt, chosen, rejected) pair per date prompt, the mistake drawn from ``kinds``."""
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        rows = [json.loads(line) for line in (FILES / "dates" / f"{split}.jsonl").read_text().splitlines()]
        with open(out / f"{split}.jsonl", "w") as f:
            for row in rows:
                rejected, kind = mistake(row["response"], rng.choice(kinds), rng)
                pair = {"prompt": row["prompt"], "chosen": row["response"], "rejected": rejected, "mistake": kind}
                f.write(json.dumps(pair) + "\n")
        print(f"{split}: {len(rows)} pairs -> {out / (split + '.jsonl')}")


def write_feedback(out: Path, rng: random.Random) -> None:
    """Unpaired answers labelled good or bad: each prompt once, its right answer or a mistake."""
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        rows = [json.loads(line) for line in (FILES / "dates" / f"{split}.jsonl").read_text().splitlines()]
        with open(out / f"{split}.jsonl", "w") as f:
            for row in rows:
                good = rng.random() < 0.5
                answer, kind = ((row["response"], "none") if good
                                else mistake(row["response"], rng.choice(MISTAKES), rng))
                record = {"prompt": row["prompt"], "response": answer, "label": good, "mistake": kind}
                f.write(json.dumps(record) + "\n")
        print(f"{split}: {len(rows)} labelled answers -> {out / (split + '.jsonl')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=FILES / "date_prefs")
    ap.add_argument("--feedback-out", type=Path, default=FILES / "date_feedback")
    ap.add_argument("--rewards-out", type=Path, default=FILES / "date_rewards")
    ap.add_argument("--seed", type=int, default=20261129)
    args = ap.parse_args()
    write_feedback(args.feedback_out, random.Random(args.seed + 1))
    write_pairs(args.rewards_out, random.Random(args.seed + 2), REWARD_MISTAKES)
    write_pairs(args.out, random.Random(args.seed), MISTAKES)

if __name__ == "__main__":
    main()
