"""Alpha spending functions for the looks of an adaptive study (ftlab.study.sequential): how much
of the family-wise error rate alpha may be spent by information time t in [0, 1]. Each is a
Lan-DeMets spending function (Lan & DeMets 1983, Biometrika 70:659), registered by name for the
study file's `adaptive.spending`; `hwang-shih-decani:GAMMA` names another member of that family
(`spending`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable

from ftlab.errors import FtlabError
from ftlab.registry import Registry

_NORMAL = NormalDist()


@dataclass(frozen=True)
class Spending:
    name: str
    doc: str
    spent: Callable[[float, float], float]  # (t, alpha) -> alpha spent by t; alpha at t = 1


SPENDING: Registry[Spending] = Registry("alpha spending function")


def _obrien_fleming(t: float, alpha: float) -> float:
    """2 - 2 Phi(z_(1 - alpha/2) / sqrt(t)): the O'Brien-Fleming (1979) boundary's spending."""
    if t <= 0:
        return 0.0
    if t >= 1:
        return alpha
    return min(alpha, 2 * (1 - _NORMAL.cdf(_NORMAL.inv_cdf(1 - alpha / 2) / math.sqrt(t))))


def _pocock(t: float, alpha: float) -> float:
    """alpha ln(1 + (e - 1) t): Pocock's (1977) boundary's spending."""
    return alpha * math.log(1 + (math.e - 1) * min(max(t, 0.0), 1.0))


def hwang_shih_decani(gamma: float) -> Callable[[float, float], float]:
    """alpha (1 - e^(-gamma t)) / (1 - e^(-gamma)): the Hwang-Shih-DeCani (1990, Statistics in
    Medicine 9:1439) family; gamma -4 is close to O'Brien-Fleming, 1 to Pocock, and a more negative
    gamma keeps more of alpha for the last look. Gamma 0 is the family's limit, alpha t."""
    def spent(t: float, alpha: float) -> float:
        t = min(max(t, 0.0), 1.0)
        if gamma == 0:
            return alpha * t
        return alpha * math.expm1(-gamma * t) / math.expm1(-gamma)
    return spent


HSD_GAMMA = -8.0  # the registered member (the default): why -8, benchmarks/adaptive_study.md
DEFAULT = "hwang-shih-decani"  # a study file's `adaptive.spending` when it names none

# The default first: an unknown name's error lists the valid ones in this order.
SPENDING.add(DEFAULT, Spending(
    DEFAULT, f"Hwang-Shih-DeCani with gamma {HSD_GAMMA:g}: less than O'Brien-Fleming before the last "
                         "look (at t 0.75, 0.007 of 0.05 against 0.024), so the last look tests nearly at alpha and "
                         "the verdict is the fixed design's more often; early looks decide less", hwang_shih_decani(HSD_GAMMA)))
SPENDING.add("obrien-fleming", Spending(
    "obrien-fleming", "O'Brien-Fleming type: almost nothing early, most of alpha at the end (keeps the last "
                      "look's power; decides early only what is far apart)", _obrien_fleming))
SPENDING.add("pocock", Spending(
    "pocock", "Pocock type: alpha spread evenly over information time (decides more early, less power at the "
              "end)", _pocock))


def spending(name: str) -> Spending:
    """The spending function a study file names: a registered one, or `hwang-shih-decani:GAMMA`,
    that family's member with another gamma. Gamma -16 has spent 0.0009 of alpha 0.05 by three
    quarters of the information (the registered -8: 0.0068), so the last look tests at nearly all
    of alpha and the verdict is the fixed design's more often, for more compute
    (benchmarks/adaptive_study.md, "Trading compute for the fixed design's verdict")."""
    family, sep, gamma = str(name).partition(":")
    also = f"or {DEFAULT}:GAMMA (e.g. {DEFAULT}:-16)"
    if not sep:
        try:
            return SPENDING.get(name)
        except FtlabError as e:
            raise FtlabError(f"{e}, {also}") from None
    if family.lower() != DEFAULT:
        raise FtlabError(f"only {DEFAULT}:GAMMA takes a parameter; valid: {', '.join(SPENDING.names())}, {also}")
    try:
        value = float(gamma)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise FtlabError(f"GAMMA in {DEFAULT}:GAMMA must be a number (e.g. {DEFAULT}:-16; the registered "
                         f"{DEFAULT} is gamma {HSD_GAMMA:g})")
    return Spending(f"{DEFAULT}:{value:g}", f"Hwang-Shih-DeCani with gamma {value:g}", hwang_shih_decani(value))
