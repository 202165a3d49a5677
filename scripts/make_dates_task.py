"""Generate the shipped date-normalisation task (deterministic; the output is committed).

Each example asks for a date written in one of many styles to be rewritten as ISO 8601
(YYYY-MM-DD). Ambiguous numeric styles say their field order. Train, val and test hold
disjoint dates.

    python scripts/make_dates_task.py            # writes src/peftlab/data/files/dates/*.jsonl
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
from pathlib import Path

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
PROMPTS = [
    "Rewrite this date in ISO 8601 format (YYYY-MM-DD): {}",
    "Convert the date to YYYY-MM-DD: {}",
    "What is {} in ISO format (YYYY-MM-DD)?",
    "Normalize this date to YYYY-MM-DD: {}",
]


def ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def styles(d: dt.date) -> list[str]:
    m, mon = MONTHS[d.month - 1], MONTHS[d.month - 1][:3]
    return [
        f"{m} {d.day}, {d.year}",
        f"{d.day} {m} {d.year}",
        f"{mon} {d.day}, {d.year}",
        f"{ordinal(d.day)} of {m}, {d.year}",
        f"{m} {ordinal(d.day)}, {d.year}",
        f"{d.month:02d}/{d.day:02d}/{d.year} (month/day/year)",
        f"{d.day:02d}/{d.month:02d}/{d.year} (day/month/year)",
        f"{d.year}.{d.month:02d}.{d.day:02d}",
        f"{d.year}/{d.month}/{d.day}",
        f"{d.year}{d.month:02d}{d.day:02d} (YYYYMMDD)",
        f"{WEEKDAYS[d.weekday()]}, {m} {d.day}, {d.year}",
        f"{d.day}-{mon}-{d.year}",
        f"the {ordinal(d.day)} day of {m} in the year {d.year}",
        f"{m.upper()} {d.day} {d.year}",
        f"{d.day}.{d.month}.{d.year} (day.month.year)",
    ]


def make(n: int, rng: random.Random, used: set) -> list[dict]:
    out = []
    start, span = dt.date(1900, 1, 1), (dt.date(2099, 12, 31) - dt.date(1900, 1, 1)).days
    while len(out) < n:
        d = start + dt.timedelta(days=rng.randrange(span + 1))
        if d in used:
            continue
        used.add(d)
        text = rng.choice(styles(d))
        out.append({"prompt": rng.choice(PROMPTS).format(text), "response": d.isoformat()})
    return out


def write_splits(make, out: Path, seed: int, description: str) -> None:
    """The shipped generated tasks' command line (``--out``, ``--seed``, the split sizes): test, val
    and train drawn in that order from one generator by ``make(n, rng, used)``, which never repeats
    a value in ``used``, so the splits are disjoint."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path, default=out)
    ap.add_argument("--seed", type=int, default=seed)
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--val", type=int, default=64)
    ap.add_argument("--test", type=int, default=128)
    args = ap.parse_args()
    rng, used = random.Random(args.seed), set()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, n in (("test", args.test), ("val", args.val), ("train", args.train)):
        rows = make(n, rng, used)
        with open(args.out / f"{split}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"{split}: {n} examples -> {args.out / (split + '.jsonl')}")


def main() -> None:
    write_splits(make, Path(__file__).resolve().parents[1] / "src/peftlab/data/files/dates", 20261128,
                 __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
