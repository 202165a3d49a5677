"""A published claim as an experiment's stated test: ``claim:`` in an experiment file (conf/experiment/
claim_*.yaml), written before the runs, recorded in every run's metrics.json, and judged by
``peftlab-report`` (reporting/claims.py) into one verdict: reproduced, not reproduced, or
inconclusive at this budget.

    claim:
      name: lr_ratio
      paper: "Schulman et al. (2025), LoRA Without Regret, Thinking Machines Lab"
      says: "LoRA's best learning rate is about 10 times full fine-tuning's"
      kind: ratio                  # equivalent | better | not_worse | correlated | ratio
      metric: optim.lr             # a dotted metrics.json key (ratio: the setting the search varied)
      comparisons: [[[recipe=lora], [recipe=full]]]   # pairs of group selectors: first against second
      margin: 3                    # the smallest difference that matters (ratio: a factor)
      expected: 10                 # ratio only
      budget: small                # small | paper (conf/budget/)

A selector is a list of ``key=value`` terms; a group of runs matches when each term is one of its
overrides (``method={r:1}``, ``recipe=lora``) or the value every run of it records at that dotted
metrics.json key (``method=lora``). ``also:`` lists further parts of the same claim, each with its
own kind, metric, comparisons, margin (and ``says``); the claim is reproduced when every part is.
The docs: docs/guides/claims.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from peftlab.errors import ConfigError

KINDS = ("equivalent", "better", "not_worse", "correlated", "ratio")
BUDGETS = ("small", "paper")
DIRECTIONS = ("lower", "higher")
# the keys of the claim itself, and those of each of its parts (the claim is its own first part)
CLAIM_KEYS = ("name", "paper", "says", "budget", "also")
PART_KEYS = ("kind", "metric", "against", "comparisons", "margin", "direction", "expected", "matched", "fewer_params",
             "says")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_DOTTED = re.compile(r"^[A-Za-z_][\w/-]*(\.[\w/-]+)+$")


def check_claim(value: Any) -> None:
    """Null, or a claim whose every field is checked: one line naming ``claim.<field>`` and the bad value."""
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise ConfigError(f"claim must be a mapping (name, paper, says, kind, metric, margin, budget, ...) or null, "
                          f"got {value!r}")
    unknown = [k for k in value if k not in CLAIM_KEYS + PART_KEYS]
    if unknown:
        raise ConfigError(f"claim.{unknown[0]}: unknown key (known keys: {', '.join(CLAIM_KEYS + PART_KEYS)})")
    name = value.get("name")
    _require(isinstance(name, str) and bool(_NAME.match(name)), "claim.name",
             "must be a name of lower-case letters, digits and _ (such as lr_ratio)", name)
    for key in ("paper", "says"):
        text = value.get(key)
        _require(isinstance(text, str) and text.strip() != "", f"claim.{key}", "must be a non-empty text", text)
    _require(value.get("budget") in BUDGETS, "claim.budget", "must be one of " + ", ".join(BUDGETS),
             value.get("budget"))
    check_part("claim", {k: v for k, v in value.items() if k in PART_KEYS})
    also = value.get("also")
    if also is None:
        return
    _require(isinstance(also, (list, tuple)) and len(also) > 0, "claim.also",
             "must be a non-empty list of further parts (each with kind, metric, margin, ...) or null", also)
    for i, part in enumerate(also):
        where = f"claim.also[{i}]"
        if not isinstance(part, Mapping):
            raise ConfigError(f"{where} must be a mapping (kind, metric, margin, ...), got {part!r}")
        unknown = [k for k in part if k not in PART_KEYS]
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key (known keys: {', '.join(PART_KEYS)})")
        text = part.get("says")
        _require(text is None or (isinstance(text, str) and text.strip() != ""), f"{where}.says",
                 "must be a non-empty text or absent", text)
        check_part(where, dict(part))


def check_part(where: str, part: dict[str, Any]) -> None:
    """One test of a claim: its kind and the fields that kind reads (none that it does not)."""
    kind = part.get("kind")
    _require(kind in KINDS, f"{where}.kind", "must be one of " + ", ".join(KINDS), kind)
    metrics = part.get("metric")
    listed = metrics if isinstance(metrics, (list, tuple)) else [metrics]
    _require(len(listed) > 0 and all(isinstance(m, str) and _DOTTED.match(m) for m in listed), f"{where}.metric",
             "must be a dotted metrics.json key (test.exact_match, forgetting.delta, ...) or a list of them", metrics)
    if kind in ("correlated", "ratio"):
        _require(isinstance(metrics, str), f"{where}.metric", f"must be one dotted key for kind {kind}", metrics)
    _check_margin(where, kind, part.get("margin"))
    _only(where, kind, part, "direction", ("better", "not_worse"))
    if part.get("direction") is not None or kind in ("better", "not_worse"):
        _require(part.get("direction") in DIRECTIONS, f"{where}.direction",
                 "must be one of " + ", ".join(DIRECTIONS) + " (which is better)", part.get("direction"))
    _only(where, kind, part, "expected", ("ratio",))
    if kind == "ratio":
        e = part.get("expected")
        _require(_number(e) and e > 0, f"{where}.expected", "must be a finite number > 0 (the paper's ratio)", e)
    _only(where, kind, part, "against", ("correlated",))
    if kind == "correlated":
        a = part.get("against")
        _require(isinstance(a, str) and bool(_DOTTED.match(a)), f"{where}.against",
                 "must be the dotted metrics.json key the metric is correlated with (kl_to_base.kl)", a)
    _only(where, kind, part, "comparisons", ("equivalent", "better", "not_worse", "ratio"))
    if kind != "correlated":
        _check_comparisons(where, kind, part.get("comparisons"))
    _only(where, kind, part, "matched", ("equivalent", "better", "not_worse"))
    if part.get("matched") is not None:
        _check_matched(where, part["matched"])
    _only(where, kind, part, "fewer_params", ("equivalent", "better", "not_worse"))
    f = part.get("fewer_params")
    _require(f is None or isinstance(f, bool), f"{where}.fewer_params", "must be true or false", f)


def _check_margin(where: str, kind: str, m: Any) -> None:
    if kind == "ratio":
        _require(_number(m) and m > 1, f"{where}.margin",
                 "must be a factor > 1 for kind ratio (the ratio counts as the paper's within expected/margin .. "
                 "expected*margin)", m)
    elif kind == "correlated":
        _require(_number(m) and 0 < m < 1, f"{where}.margin",
                 "must be in (0, 1) for kind correlated (the smallest correlation that counts)", m)
    else:
        _require(_number(m) and m > 0, f"{where}.margin",
                 "must be a finite number > 0 (the smallest difference that matters, in the metric's units)", m)


def _check_comparisons(where: str, kind: str, value: Any) -> None:
    key = f"{where}.comparisons"
    shape = "a list of pairs of selectors, each a list of key=value overrides ([[[method=lora], [method=full]]])"
    _require(isinstance(value, (list, tuple)) and len(value) > 0, key, f"must be {shape}", value)
    if kind == "ratio":
        _require(len(value) == 1, key, "must be one pair for kind ratio (first / second)", value)
    for i, pair in enumerate(value):
        _require(isinstance(pair, (list, tuple)) and len(pair) == 2, f"{key}[{i}]",
                 "must be a pair of selectors [first, second]", pair)
        for j, selector in enumerate(pair):
            _require(isinstance(selector, (list, tuple)) and len(selector) > 0
                     and all(isinstance(t, str) and "=" in t and t.split("=", 1)[0].strip() for t in selector),
                     f"{key}[{i}][{j}]", "must be a non-empty list of key=value overrides", selector)
        _require(sorted(map(_norm, pair[0])) != sorted(map(_norm, pair[1])), f"{key}[{i}]",
                 "compares a selector with itself", pair)


def _check_matched(where: str, value: Any) -> None:
    key = f"{where}.matched"
    if not isinstance(value, Mapping) or set(value) != {"by", "within"}:
        raise ConfigError(f"{key} must be {{by: <dotted key, or gain.<metric>>, within: <tolerance>}}, got {value!r}")
    _require(isinstance(value["by"], str) and bool(_DOTTED.match(value["by"])), f"{key}.by",
             "must be a dotted metrics.json key, or gain.<metric> (test minus zero-shot)", value["by"])
    _require(_number(value["within"]) and value["within"] > 0, f"{key}.within", "must be a finite number > 0",
             value["within"])


def _only(where: str, kind: str, part: dict[str, Any], key: str, kinds: tuple[str, ...]) -> None:
    if part.get(key) is not None and kind not in kinds:
        raise ConfigError(f"{where}.{key} applies to kind {' or '.join(kinds)} only, not kind {kind}, "
                          f"got {part[key]!r}")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _require(ok: bool, key: str, requirement: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} {requirement}, got {value!r}")


def _norm(term: str) -> str:
    """A selector term as compared: no spaces, no quotes."""
    return re.sub(r"[\s'\"]", "", term)


def parts(claim: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The claim's tests: itself (its part keys), then each of ``also`` (``says``: its own, else the claim's)."""
    first = {k: claim[k] for k in PART_KEYS if k in claim}
    return [first, *({**p, "says": p.get("says") or claim["says"]} for p in claim.get("also") or [])]
