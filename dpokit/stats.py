"""Uncertainty for the lessons' verdicts: intervals for pass rates and for means over seeds, and a
verdict that only takes sides when the intervals separate.

* `wilson(k, n)`: the Wilson score interval of a proportion (sound at 0 of n and n of n, unlike p ± 2σ).
* `mean_interval(values)`: mean, standard deviation and Student-t interval over seeds (or any
  repeated measurement); one value has no interval.
* `verdict(low, high, claim)`: "confirmed" when the group the guide favours is better with the
  intervals apart, "corrected" when it is worse with the intervals apart, else "not distinguishable at
  this scale". `Estimate` carries a figure with its interval and prints it ("41.7% [35.1, 48.6]").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

CONFIRMED = "confirmed"
CORRECTED = "corrected"
QUALIFIED = "qualified"
NOT_DISTINGUISHABLE = "not distinguishable at this scale"
NOT_TESTABLE = "not testable here"
VERDICTS = (CONFIRMED, CORRECTED, QUALIFIED, NOT_DISTINGUISHABLE, NOT_TESTABLE)


@dataclass(frozen=True)
class Estimate:
    """A measured figure with its interval. `kind`: wilson, t (over n repeats) or single (no interval)."""

    value: float
    low: float
    high: float
    n: int
    kind: str
    unit: str = ""

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    def format(self, digits: int | None = None) -> str:
        """`value [low, high]`: proportions as percent with `digits` decimals (default 1), other figures
        with 3 significant digits (or `digits` decimals)."""
        scale = 100 if self.unit == "%" else 1
        if digits is None and self.unit != "%":
            num = lambda x: f"{x * scale:.3g}"
        else:
            num = lambda x: f"{x * scale:.{1 if digits is None else digits}f}"
        if not self.has_interval:
            return f"{num(self.value)}{self.unit} (n={self.n}, no interval)"
        return f"{num(self.value)}{self.unit} [{num(self.low)}, {num(self.high)}]"

    def __str__(self) -> str:
        return self.format()

    def as_dict(self) -> dict:
        return asdict(self)


def z_value(confidence: float = 0.95) -> float:
    """The two-sided normal quantile for a confidence level (1.96 for 0.95)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(successes: int, n: int, confidence: float = 0.95) -> Estimate:
    """The Wilson score interval of `successes` out of `n` (a proportion, 0..1; `.format()` shows %)."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "wilson", "%")
    z, p = z_value(confidence), successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)
    return Estimate(p, max(0.0, low), min(1.0, high), n, "wilson", "%")


def t_quantile(df: int, confidence: float = 0.95) -> float:
    """Two-sided Student-t quantile with `df` degrees of freedom (4.303 for df=2 at 0.95), by
    bisection on the exact CDF (no scipy needed)."""
    if df < 1:
        raise ValueError("a t interval needs at least two values")
    target = 0.5 + confidence / 2
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < target else (lo, mid)
    return (lo + hi) / 2


def t_cdf(x: float, df: int) -> float:
    """Student-t CDF through the regularised incomplete beta function."""
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + x * x))
    return 1 - tail if x >= 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) (Lentz's continued fraction, Numerical Recipes 6.4)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    if x > (a + 1) / (a + b + 2):
        return 1 - _betainc(b, a, 1 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x))
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return front * h / a


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for fewer than two values)."""
    xs = [float(v) for v in values]
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, math.nan
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def mean_interval(values, confidence: float = 0.95, unit: str = "") -> Estimate:
    """Mean of repeated measurements (seeds) with its Student-t interval; one value has none."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    m, sd = mean_sd(xs)
    if len(xs) < 2:
        return Estimate(m, math.nan, math.nan, len(xs), "single", unit)
    half = t_quantile(len(xs) - 1, confidence) * sd / math.sqrt(len(xs))
    return Estimate(m, m - half, m + half, len(xs), "t", unit)


def pooled_wilson(passes_per_seed, confidence: float = 0.95) -> Estimate:
    """A Wilson interval over every judged prompt of every seed (lists of booleans, one list per seed)."""
    flat = [bool(p) for seed in passes_per_seed for p in seed]
    return wilson(sum(flat), len(flat), confidence)


def separated(a: Estimate, b: Estimate) -> bool:
    """True when both have an interval and the intervals do not overlap."""
    return a.has_interval and b.has_interval and (a.high < b.low or b.high < a.low)


def verdict(favoured: Estimate, other: Estimate, higher_is_better: bool = True) -> str:
    """The guide says `favoured` is better than `other`: confirmed / corrected when the intervals
    separate in that / the opposite direction, otherwise not distinguishable at this scale."""
    if not separated(favoured, other):
        return NOT_DISTINGUISHABLE
    better = favoured.value > other.value if higher_is_better else favoured.value < other.value
    return CONFIRMED if better else CORRECTED


def direction(low: Estimate, high: Estimate) -> str:
    """How a figure moves from the `low` setting to the `high` one: rises, falls, or not
    distinguishable at this scale (intervals overlap)."""
    if not separated(low, high):
        return NOT_DISTINGUISHABLE
    return "rises" if high.value > low.value else "falls"
