"""How well gamma ranks the true error: rank and log-log correlation coefficients.

A base module (numpy and scipy only): the sample stage writes them into summary.json and
the study draws them, and neither layer may import the other.

Spearman's rho is the headline number: gamma is only meant to order configurations by
how far the potential extrapolates, not to be proportional to the error, so a rank
statistic is what the question "does gamma correlate with the error" asks. Pearson's r
of log10(gamma) against log10(error) is given beside it because the figures are log-log.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def correlations(gamma: Sequence[float], error: Sequence[float]) -> dict[str, float | None]:
    """spearman, pearson_log and n over the pairs where both values are finite and > 0;
    None for a coefficient that needs more than that (under 3 pairs, or a constant)."""
    g, e = np.asarray(gamma, float), np.asarray(error, float)
    ok = np.isfinite(g) & np.isfinite(e) & (g > 0) & (e > 0)
    g, e = g[ok], e[ok]
    out: dict[str, float | None] = {"n": int(ok.sum()), "spearman": None, "pearson_log": None}
    if g.size < 3 or np.ptp(g) == 0 or np.ptp(e) == 0:
        return out
    from scipy.stats import pearsonr, spearmanr

    rho = float(spearmanr(g, e).statistic)
    r = float(pearsonr(np.log10(g), np.log10(e)).statistic)
    out["spearman"] = rho if math.isfinite(rho) else None
    out["pearson_log"] = r if math.isfinite(r) else None
    return out


def roc_auc(score: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve of `score` for telling the `positive` items from the
    others: the probability that a random positive scores above a random negative, a tie
    counting one half (the Mann-Whitney U statistic over n_pos x n_neg, from average
    ranks, so tied scores are handled exactly). Items with a non-finite score are left
    out; None when no positive or no negative remains.

    Why rank-based: an uncertainty (gamma, a committee's deviation) is used as a
    threshold, so what matters is how it orders the configurations, not its scale; and
    ties are common (gamma is clipped at 1 inside the training domain)."""
    s = np.asarray(score, float)
    p = np.asarray(positive, bool)
    if s.shape != p.shape:
        raise ValueError(f"roc_auc: {s.size} scores but {p.size} labels")
    ok = np.isfinite(s)
    s, p = s[ok], p[ok]
    n_pos = int(p.sum())
    n_neg = int(p.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(s)  # average ranks of tied scores
    u = float(ranks[p].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)
