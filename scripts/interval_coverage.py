"""The coverage of every interval peftlab prints, by simulation, for more distributions than the
tests check (tests/test_intervals.py holds the gate): the share of groups whose 95% interval holds
the truth, each interval computed by the code reports run.

    python scripts/interval_coverage.py              # 2,000 groups per cell (about half a minute)
    python scripts/interval_coverage.py --groups 20000

Prints three tables: the seeds interval at a fixed number of seeds; the seed budget's two-stage
rule beside the one-seed-at-a-time rule it replaced; the seeds-and-items interval beside a two-way
bootstrap (seeds and items resampled, percentile interval), on binary answers.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from peftlab.reporting.intervals import crossed_interval
from peftlab.reporting.runs import stats
from peftlab.reporting.seed_budget import Budget, GroupBudget

# name -> (draw(rng, shape) with mean 0.9 and sd 0.02, skewness)
DISTRIBUTIONS = {
    "normal": (lambda rng, size: rng.normal(0.9, 0.02, size), 0.0),
    "gamma(16), skew 0.5": (lambda rng, size: 0.9 + 0.005 * (rng.gamma(16.0, 1.0, size) - 16.0), 0.5),
    "gamma(4), skew 1": (lambda rng, size: 0.9 + 0.01 * (rng.gamma(4.0, 1.0, size) - 4.0), 1.0),
    "gamma(2), skew 1.4": (lambda rng, size: 0.9 + 0.02 / math.sqrt(2) * (rng.gamma(2.0, 1.0, size) - 2.0), 1.41),
    "exponential, skew 2": (lambda rng, size: 0.9 + 0.02 * (rng.exponential(1.0, size) - 1.0), 2.0),
}


def fixed_seeds(groups: int) -> None:
    print("\nThe seeds interval (Student t) at a fixed number of seeds")
    print(f"{'distribution':<24}" + "".join(f"{f'n={n}':>8}" for n in (2, 3, 5, 10)))
    for name, (draw, _) in DISTRIBUTIONS.items():
        row = []
        for n in (2, 3, 5, 10):
            values = draw(np.random.default_rng(n), (groups, n)).tolist()
            row.append(sum(abs(s["mean"] - 0.9) <= s["ci95"] for s in map(stats, values)) / groups)
        print(f"{name:<24}" + "".join(f"{c:>8.3f}" for c in row))


def seed_budget(groups: int) -> None:
    print("\nThe seed budget (pilot 3, target ±0.015, at most 10 seeds): coverage, mean seeds")
    print(f"{'distribution':<24}{'two-stage':>12}{'seeds':>7}{'one at a time':>15}{'seeds':>7}")
    budget = Budget(half_width=0.015, min_seeds=3, max_seeds=10)
    for name, (draw, _) in DISTRIBUTIONS.items():
        cells = []
        for rule in (_two_stage, _one_at_a_time):
            rng = np.random.default_rng(7)
            results = [rule(lambda k, rng=rng, draw=draw: draw(rng, k).tolist(), budget) for _ in range(groups)]
            cells += [sum(abs(m - 0.9) <= h for m, h, _ in results) / groups, float(np.mean([n for *_, n in results]))]
        print(f"{name:<24}{cells[0]:>12.3f}{cells[1]:>7.1f}{cells[2]:>15.3f}{cells[3]:>7.1f}")


def _two_stage(draw, budget):
    group = GroupBudget(["x"], seeds=list(range(1, budget.min_seeds + 1)), values=list(draw(budget.min_seeds)))
    group.values += list(draw(group.plan(budget)))
    found = group.interval()
    return found.mean, found.half, len(group.values)


def _one_at_a_time(draw, budget):
    values = list(draw(budget.min_seeds))
    while True:
        s = stats(values)
        if s["ci95"] <= budget.half_width or len(values) >= budget.max_seeds:
            return s["mean"], s["ci95"], len(values)
        values += list(draw(1))


def _truth(mu: float, sd: float) -> float:
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    return float(np.sum(weights / (1 + np.exp(-(mu + sd * nodes)))) / math.sqrt(2 * math.pi))


def seeds_and_items(groups: int) -> None:
    print("\nSeeds and items: 3 seeds x 128 binary answers, P(right) = sigmoid(mu + seed + item)")
    print(f"{'mu, seed sd, item sd':<24}{'crossed':>10}{'bootstrap':>11}")
    for mu, seed_sd, item_sd in [(2.2, 0.3, 1.5), (2.2, 0.05, 1.5), (0.0, 0.5, 0.5), (2.2, 0.0, 2.0),
                                 (1.0, 0.2, 3.0), (2.2, 0.6, 1.0)]:
        rng = np.random.default_rng(11)
        truth, crossed, boot = _truth(mu, math.hypot(seed_sd, item_sd)), 0, 0
        boot_groups = min(groups, 1000)  # the bootstrap is 400 resamples a group
        for g in range(groups):
            logits = mu + rng.normal(0, seed_sd, (3, 1)) + rng.normal(0, item_sd, (1, 128))
            table = (rng.random((3, 128)) < 1 / (1 + np.exp(-logits))).astype(float)
            found = crossed_interval(table)
            crossed += abs(found.mean - truth) <= found.half
            if g < boot_groups:
                seeds, items = rng.integers(0, 3, (400, 3)), rng.integers(0, 128, (400, 128))
                means = [table[seeds[b]][:, items[b]].mean() for b in range(400)]
                low, high = np.percentile(means, [2.5, 97.5])
                boot += low <= truth <= high
        print(f"{f'{mu}, {seed_sd}, {item_sd}':<24}{crossed / groups:>10.3f}{boot / boot_groups:>11.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=2000)
    args = parser.parse_args()
    fixed_seeds(args.groups)
    seed_budget(args.groups)
    seeds_and_items(args.groups)


if __name__ == "__main__":
    main()
