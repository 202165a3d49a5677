"""Generate the shipped classification task (deterministic; the output is committed).

Short product reviews labelled positive or negative. Negation flips the adjective's polarity
("was not great" is negative) and a contrast clause decides the label ("looked cheap, but works
great" is positive), so a bag of words does not solve it.

    python scripts/make_reviews_task.py          # writes src/peftlab/data/files/reviews/*.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ITEMS = ["blender", "headphones", "backpack", "kettle", "phone case", "desk lamp", "keyboard", "jacket", "tent",
         "coffee grinder", "water bottle", "charger", "mattress", "novel", "vacuum", "camera", "router", "chair",
         "frying pan", "watch"]
POSITIVE = ["great", "excellent", "sturdy", "reliable", "comfortable", "wonderful", "solid", "fantastic",
            "well made", "worth the money"]
NEGATIVE = ["terrible", "flimsy", "disappointing", "useless", "awful", "cheap", "broken", "noisy", "overpriced",
            "poorly made"]
OPENERS = ["", "Honestly, ", "After a month, ", "To be fair, ", "Overall, ", "I have to say "]
INTENSIFIERS = ["", "really ", "very ", "quite ", "absolutely "]


def clause(rng: random.Random, item: str) -> tuple[str, bool]:
    positive = rng.random() < 0.5
    adj = rng.choice(POSITIVE if positive else NEGATIVE)
    if rng.random() < 0.35:  # negation flips the polarity
        return f"the {item} was not {adj}", not positive
    return f"the {item} was {rng.choice(INTENSIFIERS)}{adj}", positive


def review(rng: random.Random) -> dict:
    item = rng.choice(ITEMS)
    first, label = clause(rng, item)
    if rng.random() < 0.3:  # contrast: the clause after "but" decides
        second, label2 = clause(rng, item)
        while label2 == label:
            second, label2 = clause(rng, item)
        text, label = f"{first}, but {second.replace('the ' + item, 'it', 1)}", label2
    else:
        text = first
    text = rng.choice(OPENERS) + text
    return {"text": text[0].upper() + text[1:] + ".", "label": "positive" if label else "negative"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/peftlab/data/files/reviews")
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument("--sizes", type=int, nargs=3, default=(2000, 200, 400), metavar=("TRAIN", "VAL", "TEST"))
    args = ap.parse_args()
    rng, seen = random.Random(args.seed), set()
    args.out.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("test", "val", "train"), reversed(args.sizes), strict=True):
        rows = []
        while len(rows) < n:
            r = review(rng)
            if r["text"] not in seen:
                seen.add(r["text"])
                rows.append(r)
        (args.out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{split}: {n} examples, {sum(r['label'] == 'positive' for r in rows)} positive")


if __name__ == "__main__":
    main()
