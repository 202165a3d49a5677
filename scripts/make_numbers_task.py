"""Generate the shipped number-words task (deterministic; the output is committed).

Each example asks for a number written in English words, in one of several styles, to be written
in digits (no separators). It is the second skill of the adapter-combination study, disjoint from
the date task: no prompt names a date and no answer has the date's YYYY-MM-DD shape. Train, val and
test hold disjoint numbers.

    python scripts/make_numbers_task.py          # writes src/peftlab/data/files/numbers/*.jsonl
"""

from __future__ import annotations

import random
from pathlib import Path

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
SCALES = [(10**9, "billion"), (10**6, "million"), (1000, "thousand")]
PROMPTS = [
    "Write this number in digits: {}",
    "Convert the number words to digits: {}",
    "What is {} written as a number?",
    "Write {} using digits only.",
]


def below_100(n: int, hyphen: bool) -> str:
    if n < 20:
        return ONES[n]
    tens, ones = divmod(n, 10)
    return TENS[tens] + (("-" if hyphen else " ") + ONES[ones] if ones else "")


def below_1000(n: int, hyphen: bool, use_and: bool) -> str:
    hundreds, rest = divmod(n, 100)
    words = [f"{ONES[hundreds]} hundred"] if hundreds else []
    if rest:
        words.append(("and " if use_and and hundreds else "") + below_100(rest, hyphen))
    return " ".join(words)


def words(n: int, hyphen: bool = True, use_and: bool = False, commas: bool = False) -> str:
    """``n`` in English words (British ``and`` after hundreds where ``use_and``)."""
    if n == 0:
        return "zero"
    parts = []
    for value, name in SCALES:
        if n >= value:
            parts.append(f"{below_1000(n // value, hyphen, use_and)} {name}")
            n %= value
    if n:
        last = below_1000(n, hyphen, use_and)
        parts.append(("and " if use_and and parts and n < 100 else "") + last)
    return (", " if commas else " ").join(parts)


def styles(n: int) -> list[str]:
    out = [words(n), words(n, use_and=True), words(n, hyphen=False), words(n, commas=True),
           words(n).capitalize(), words(n, use_and=True).upper()]
    if 1100 <= n < 10000 and n % 1000 >= 100 and (n // 100) % 10:  # "forty-two hundred and seven"
        out.append(f"{below_100(n // 100, True)} hundred" + (f" and {below_100(n % 100, True)}" if n % 100 else ""))
    return out


def magnitude(rng: random.Random) -> int:
    """Numbers of every size: a digit count drawn uniformly from 1 to 10, then a number with it."""
    digits = rng.randint(1, 10)
    return rng.randrange(10 ** (digits - 1) if digits > 1 else 0, 10**digits)


def make(n: int, rng: random.Random, used: set) -> list[dict]:
    out = []
    while len(out) < n:
        number = magnitude(rng)
        if number in used:
            continue
        used.add(number)
        out.append({"prompt": rng.choice(PROMPTS).format(rng.choice(styles(number))), "response": str(number)})
    return out


def main() -> None:
    from make_dates_task import write_splits  # the same command line and split drawing

    write_splits(make, Path(__file__).resolve().parents[1] / "src/peftlab/data/files/numbers", 20261206,
                 __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
