"""MaxVol active sets and extrapolation grades (Podryabinkin & Shapeev 2017), in numpy.

An MTP is linear in its coefficients after linearization: every configuration (cfg mode)
or every atomic neighbourhood (nbh mode) contributes one row b = dE/dtheta. The active set
is the n x n submatrix A of training rows with (locally) maximal |det|; the grade of a new
row b is gamma = max_j |c_j| with c = b A^-1, i.e. how far outside the parallelotope of the
active set b lies. gamma <= 1 interpolates, gamma > 1 extrapolates. D-optimal selection
(MLIP-3's `select_add`) swaps candidate rows into A while some gamma exceeds a threshold:
each swap multiplies |det A| by that gamma, so the loop terminates.

This module knows nothing of MTPs or files beyond `save`/`load`; the trainer adapters give
it rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.linalg import qr

# Rows added where the training rows leave directions of parameter space uncovered (fewer
# rows than coefficients, or a singular set): a tiny pseudo-row so that anything moving
# along such a direction grades as strongly extrapolative, as MLIP-3's unfilled active set
# does.
_PAD = 1e-8


@dataclass
class ActiveSet:
    """The active set: rows A, their inverse, and which training row each came from."""

    rows: np.ndarray  # (n, n)
    inverse: np.ndarray  # (n, n)
    owners: np.ndarray  # (n, 2) int: (configuration index, atom index or -1); (-1, -1) = pad

    @property
    def size(self) -> int:
        return int(self.rows.shape[0])

    @property
    def n_configs(self) -> int:
        """Training configurations represented in the active set (MLIP-3's lower bound)."""
        real = self.owners[self.owners[:, 0] >= 0, 0]
        return int(np.unique(real).size)

    def grades(self, rows: np.ndarray) -> np.ndarray:
        """gamma of each row: max |c| with c = b A^-1."""
        return np.abs(np.atleast_2d(rows) @ self.inverse).max(axis=1)

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as fh:
            np.savez(fh, rows=self.rows, inverse=self.inverse, owners=self.owners)

    @classmethod
    def load(cls, path: str | Path) -> ActiveSet:
        with np.load(path) as data:
            return cls(data["rows"].copy(), data["inverse"].copy(), data["owners"].copy())


def _refine(rows: np.ndarray, idx: np.ndarray, tol: float, max_swaps: int) -> np.ndarray:
    """Classical maxvol: swap rows into the submatrix while some |c| exceeds 1 + tol."""
    idx = idx.copy()
    for _ in range(max_swaps):
        c = rows @ np.linalg.inv(rows[idx])
        i, j = np.unravel_index(np.argmax(np.abs(c)), c.shape)
        if abs(c[i, j]) <= 1.0 + tol:
            break
        idx[j] = i
    return idx


def build_active_set(rows: np.ndarray, owners: np.ndarray, *, tol: float = 1e-3,
                     max_swaps: int = 10_000) -> ActiveSet:
    """Choose the MaxVol active set among training rows (owners: (m, 2) labels)."""
    rows = np.asarray(rows, dtype=float)
    n = rows.shape[1]
    scale = float(np.abs(rows).max()) if rows.size else 1.0
    # QR with column pivoting on rows.T ranks rows by how much new volume each adds.
    _, r, piv = qr(rows.T, pivoting=True, mode="economic")
    diag = np.abs(np.diag(r)) if r.size else np.zeros(0)
    rank = int(np.sum(diag > 1e-10 * max(scale, 1e-300)))
    chosen = piv[:rank]
    if rank == n:
        chosen = _refine(rows, chosen, tol, max_swaps)
        a = rows[chosen]
        return ActiveSet(a, np.linalg.inv(a), owners[chosen].astype(int))
    # Rank-deficient: keep the independent rows, pad the uncovered directions.
    if rank:
        _, _, vt = np.linalg.svd(rows[chosen])
        # maxvol within the span of the training rows (their coordinates in it), so that
        # training rows grade <= 1 + tol here too
        chosen = _refine(rows @ vt[:rank].T, chosen, tol, max_swaps)
        _, _, vt = np.linalg.svd(rows[chosen])
        null = vt[rank:]
    else:
        null = np.eye(n)
    a_real = rows[chosen]
    a = np.vstack([a_real, _PAD * scale * null]) if rank else _PAD * max(scale, 1.0) * null
    own = np.vstack([owners[chosen].astype(int), -np.ones((n - rank, 2), dtype=int)])
    return ActiveSet(a, np.linalg.inv(a), own)


@dataclass
class Selection:
    """Outcome of D-optimal selection among candidates."""

    selected: list[int]  # candidates owning rows of the final active set, by entry order
    initial_grades: np.ndarray  # per candidate, before any swap
    active: ActiveSet  # the enlarged active set
    # select_batch only: grade of each selected candidate when it was taken, every
    # candidate's grade against the final set, candidates left out by the cap
    at_pick: np.ndarray | None = None
    final_grades: np.ndarray | None = None
    over_cap: list[int] = field(default_factory=list)


def _swap(inv: np.ndarray, rows: np.ndarray, j: int, new: np.ndarray) -> np.ndarray:
    """Replace row j of `rows` (in place) by `new`; return the updated inverse
    (Sherman-Morrison on the row change, O(n^2))."""
    delta = new - rows[j]
    u = inv[:, j]
    inv = inv - np.outer(u, delta @ inv) / (1.0 + delta @ u)
    rows[j] = new
    return inv


def select_add(active: ActiveSet, cand_rows: np.ndarray, cand_owner: np.ndarray, *,
               threshold: float = 1.001, max_swaps: int | None = None) -> Selection:
    """Greedy D-optimal selection: swap the row with the largest |c| into A until no
    candidate row exceeds `threshold`. The candidates that own rows of the final A are
    selected; each swap is an update of A^-1 by Sherman-Morrison, O(n^2)."""
    cand_rows = np.atleast_2d(np.asarray(cand_rows, dtype=float))
    cand_owner = np.asarray(cand_owner, dtype=int)
    n_cand = int(cand_owner.max()) + 1 if cand_owner.size else 0
    rows = active.rows.copy()
    inv = active.inverse.copy()
    owners = active.owners.copy()
    row_grades = np.abs(cand_rows @ inv).max(axis=1) if cand_rows.size else np.zeros(0)
    initial = np.zeros(n_cand)
    np.maximum.at(initial, cand_owner, row_grades)
    in_set = np.full(len(cand_rows), False)
    entry_order: list[int] = []
    limit = max_swaps if max_swaps is not None else 10 * rows.shape[0] + len(cand_rows)
    for _ in range(limit):
        if not cand_rows.size:
            break
        c = cand_rows @ inv
        c[in_set] = 0.0
        i, j = np.unravel_index(np.argmax(np.abs(c)), c.shape)
        if abs(c[i, j]) <= threshold:
            break
        inv = _swap(inv, rows, j, cand_rows[i])
        if owners[j, 0] <= -2:  # a candidate row leaves the set again
            in_set[-owners[j, 0] - 2] = False
        owners[j] = (-2 - i, cand_owner[i])
        in_set[i] = True
        entry_order.append(int(cand_owner[i]))
    present = {int(o) for k, o in owners if k <= -2}
    picked = list(dict.fromkeys(o for o in entry_order if o in present))
    final = owners.copy()
    mask = final[:, 0] <= -2
    final[mask, 0] = -1  # candidate rows: owner index not in the training set yet
    return Selection(picked, initial, ActiveSet(rows, np.linalg.inv(rows), final))


def select_batch(active: ActiveSet, cand_rows: np.ndarray, cand_owner: np.ndarray, *,
                 threshold: float = 1.001, max_configs: int | None = None) -> Selection:
    """Batch-diverse D-optimal selection, one configuration at a time.

    `select_add` swaps single rows, so in nbh mode two near-identical frames of one MD run
    can both enter: one brings atom 1's neighbourhood, the other atom 2's. Labeling either
    frame teaches the potential every neighbourhood of it, so here the unit is the
    configuration: take the candidate with the highest grade, swap all of its rows that
    still grade above `threshold` into the active set (as training on it would), regrade
    the rest, repeat until no candidate grades above `threshold` or `max_configs` are
    taken. Near-duplicates of a taken frame then grade ~1 and are left out."""
    cand_rows = np.atleast_2d(np.asarray(cand_rows, dtype=float))
    cand_owner = np.asarray(cand_owner, dtype=int)
    n_cand = int(cand_owner.max()) + 1 if cand_owner.size else 0
    rows, inv, owners = active.rows.copy(), active.inverse.copy(), active.owners.copy()

    def grades() -> np.ndarray:
        g = np.zeros(n_cand)
        if cand_rows.size:
            np.maximum.at(g, cand_owner, np.abs(cand_rows @ inv).max(axis=1))
        return g

    initial = grades()
    picked: list[int] = []
    at_pick: list[float] = []
    g = initial.copy()
    over_cap: list[int] = []
    while n_cand:
        g[picked] = 0.0
        k = int(np.argmax(g))
        if g[k] <= threshold:
            break
        if max_configs is not None and len(picked) >= max_configs:
            over_cap = [int(j) for j in np.flatnonzero(g > threshold)]
            break
        picked.append(k)
        at_pick.append(float(g[k]))
        mine = np.flatnonzero(cand_owner == k)
        for _ in range(10 * rows.shape[0]):
            c = cand_rows[mine] @ inv
            i, j = np.unravel_index(np.argmax(np.abs(c)), c.shape)
            if abs(c[i, j]) <= threshold:
                break
            inv = _swap(inv, rows, j, cand_rows[mine[i]])
            owners[j] = (-1, k)
        inv = np.linalg.inv(rows)  # no drift from the rank-one updates between picks
        g = grades()
    final_grades = g
    final_grades[picked] = 0.0
    return Selection(picked, initial, ActiveSet(rows, inv, owners), np.array(at_pick),
                     final_grades, over_cap)
