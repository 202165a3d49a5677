"""What each run answered, item by item: the ``correct`` of every line of its
``test_predictions.jsonl``, read as data. A group whose runs answered the same items (the same
references, in the split's order) forms a seeds x items table, the input of the seeds-and-items
interval and of the item-paired test (reporting/intervals.py).

Only a primary metric that is the mean of ``correct`` over the test items has such a table (exact
match, accuracy, pair accuracy): each run's mean of ``correct`` must equal its ``test.<metric>``,
otherwise the group has none (a test cut short by ``trainer.limit_test_batches``, a metric that is
not a mean over items).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional

from peftlab.errors import ConfigError
from peftlab.reporting.runs import Group, Run
from peftlab.runs.metrics import metric_at

PREDICTIONS = "test_predictions.jsonl"


@dataclass(frozen=True)
class Answers:
    references: tuple[str, ...]
    correct: tuple[float, ...]  # 1.0 or 0.0 per item, in the split's order


def read_answers(run: Run, metric: str) -> Optional[Answers]:
    """The run's items, when its ``test.<metric>`` is their mean of ``correct``; None otherwise. A
    predictions file that cannot be read stops the report with its name and line."""
    path = run.path / PREDICTIONS
    value = metric_at(run.metrics, f"test.{metric}")
    if run.status != "finished" or value is None or not path.is_file():
        return None
    references, correct = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise ConfigError(f"{path}:{number}: not a JSON line ({err})") from None
        mark = row.get("correct") if isinstance(row, dict) else None
        if not isinstance(mark, bool):
            return None  # not a task whose items are right or wrong
        references.append(str(row.get("reference")))
        correct.append(1.0 if mark else 0.0)
    if not correct or not math.isclose(sum(correct) / len(correct), value, abs_tol=1e-6):
        return None
    return Answers(tuple(references), tuple(correct))


@dataclass(frozen=True)
class ItemTable:
    seeds: tuple[int, ...]
    references: tuple[str, ...]
    rows: tuple[tuple[float, ...], ...]  # one per seed, in the order of ``seeds``


def item_table(group: Group, metric: str) -> Optional[ItemTable]:
    """The seeds x items table of a group whose finished runs (two or more, one per seed) all
    answered the same items; None otherwise."""
    runs = sorted((r for r in group.finished if r.seed is not None), key=lambda r: r.seed)
    if len(runs) < 2 or len({r.seed for r in runs}) != len(runs):
        return None
    answers = [read_answers(r, metric) for r in runs]
    if any(a is None for a in answers) or len({a.references for a in answers}) != 1:
        return None
    return ItemTable(tuple(r.seed for r in runs), answers[0].references, tuple(a.correct for a in answers))


def paired_table(first: Optional[ItemTable], second: Optional[ItemTable]) -> Optional[list[list[float]]]:
    """``second - first`` item by item, seed by seed, when both groups ran the same seeds on the
    same items; None otherwise."""
    if first is None or second is None or first.seeds != second.seeds or first.references != second.references:
        return None
    return [[y - x for x, y in zip(a, b, strict=True)] for a, b in zip(first.rows, second.rows, strict=True)]
