"""Generate the shipped multi-turn task (deterministic; the output is committed).

Each record is a short conversation in the ``messages`` format (``data.format=messages``): a system
message, a date written in one of the date task's styles to be rewritten as ISO 8601, then one or
two follow-ups, each either another date to rewrite or a part of the last date (its year, or its
month or day as two digits), which the model can answer only from the turns before. Train, val and
test hold disjoint dates.

    python scripts/make_date_chats_task.py       # writes src/peftlab/data/files/date_chats/*.jsonl
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
from pathlib import Path

from make_dates_task import PROMPTS, styles

SYSTEM = "You convert dates to ISO 8601 (YYYY-MM-DD). Answer with only what is asked."
ANOTHER = ["And this one: {}", "Now convert {}", "Next: {}"]
PARTS = [
    ("Only the year, please.", lambda d: f"{d.year}"),
    ("Which month is that, as two digits?", lambda d: f"{d.month:02d}"),
    ("And the day of the month, as two digits?", lambda d: f"{d.day:02d}"),
]


def new_date(rng: random.Random, used: set) -> dt.date:
    start, span = dt.date(1900, 1, 1), (dt.date(2099, 12, 31) - dt.date(1900, 1, 1)).days
    while True:
        d = start + dt.timedelta(days=rng.randrange(span + 1))
        if d not in used:
            used.add(d)
            return d


def conversation(rng: random.Random, used: set) -> dict:
    d = new_date(rng, used)
    turns = [{"role": "system", "content": SYSTEM},
             {"role": "user", "content": rng.choice(PROMPTS).format(rng.choice(styles(d)))},
             {"role": "assistant", "content": d.isoformat()}]
    asked = None  # the part of the last date asked for, not asked again
    for _ in range(rng.choice((1, 2))):
        if rng.random() < 0.4:
            d, asked = new_date(rng, used), None
            question, answer = rng.choice(ANOTHER).format(rng.choice(styles(d))), d.isoformat()
        else:
            question, part = asked = rng.choice([p for p in PARTS if p != asked])
            answer = part(d)
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": turns}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    out = Path(__file__).resolve().parents[1] / "src/peftlab/data/files/date_chats"
    ap.add_argument("--out", type=Path, default=out)
    ap.add_argument("--seed", type=int, default=20270115)
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--val", type=int, default=32)
    ap.add_argument("--test", type=int, default=64)
    args = ap.parse_args()
    rng, used = random.Random(args.seed), set()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, n in (("test", args.test), ("val", args.val), ("train", args.train)):
        rows = [conversation(rng, used) for _ in range(n)]
        with open(args.out / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        print(f"{split}: {n} conversations -> {args.out / (split + '.jsonl')}")


if __name__ == "__main__":
    main()
