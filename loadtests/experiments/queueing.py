"""The models the experiments are held against, and the few statistics they need.

M/G/1 (Pollaczek-Khinchine): Poisson arrivals at rate lambda, one server, service time S with
mean E[S] and squared coefficient of variation cs2 = Var[S] / E[S]^2; utilisation rho = lambda E[S].
Mean wait in the queue:  Wq = rho * E[S] * (1 + cs2) / (2 * (1 - rho)).
M/D/1 is cs2 = 0 (every request takes the same time); M/M/1 is cs2 = 1. For a p95 of the wait,
the M/M/1 tail P(W > t) = rho * exp(-(1 - rho) t / E[S]) is a fair upper guide (M/D/1's is lighter).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def mg1_wait(rho: float, mean_service: float, cs2: float = 0.0) -> float:
    """Mean time in the queue (not counting service) of an M/G/1 queue; inf at rho >= 1."""
    if rho >= 1.0:
        return math.inf
    return rho * mean_service * (1.0 + cs2) / (2.0 * (1.0 - rho))


def md1_wait(rho: float, mean_service: float) -> float:
    return mg1_wait(rho, mean_service, 0.0)


def mm1_wait_quantile(rho: float, mean_service: float, q: float) -> float:
    """q-quantile of the M/M/1 queue wait (0 while P(wait > 0) = rho is below 1 - q)."""
    if rho >= 1.0:
        return math.inf
    if rho <= 1.0 - q:
        return 0.0
    return mean_service / (1.0 - rho) * math.log(rho / (1.0 - q))


def rho_for_wait(target_wait: float, mean_service: float, cs2: float = 0.0) -> float:
    """The utilisation at which the M/G/1 mean queue wait reaches `target_wait`."""
    k = mean_service * (1.0 + cs2) / 2.0
    return target_wait / (target_wait + k)


def pct(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation, None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def cs2(values: Sequence[float]) -> float:
    """Squared coefficient of variation (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    m = statistics.fmean(values)
    return statistics.pvariance(values) / (m * m) if m else 0.0
