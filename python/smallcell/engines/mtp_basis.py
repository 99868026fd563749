"""Untrained MLIP-3 moment tensor potential (MTP) templates, generated from first principles.

Why this exists: an MTP training starts from an *untrained template* (``NN.almtp``) that
fixes the basis (which moment tensors exist and how they are contracted into rotation
invariant scalars). No installable package ships these files and the MLIP-3 ones may not be
copied into this repository, so smallcell writes them itself.

Format (MLIP-3 ``src/mtpr.cpp``)
--------------------------------
* ``alpha_index_basic`` entry ``{mu, a, b, c}``: the basic moment
  ``alpha = sum_j f_mu(r_ij) x^a y^b z^c``, i.e. one unique component of the symmetric
  moment tensor ``M_{mu,nu}`` (``nu = a + b + c``).
* ``alpha_index_times`` entry ``{i, j, mult, k}``: ``alpha_k += mult * alpha_i * alpha_j``,
  processed in order; alphas after the basic ones are numbered in order of first appearance.
* ``alpha_moment_mapping``: the alphas that are the scalar (rotation invariant) basis
  functions; the trained ``moment_coeffs`` follow this order.

Which basis functions (the rule upstream uses)
----------------------------------------------
A basis function is a complete contraction of a multiset of moment tensors, i.e. a
multigraph without self-loops whose vertices are tensors ``M_{mu,nu}`` (vertex degree
``nu``) and whose edges are contracted index pairs; a disconnected graph is the product of
its components. ``level(M_{mu,nu}) = 2 + 4 mu + nu`` and the level of a graph is the sum over
its vertices. A level-``L`` template holds every non-isomorphic graph with

* level ``<= L``,
* ``mu < radial_funcs_count`` (default 2 for ``L <= 8``, 3 for 10/12, 4 for 14/16, i.e.
  ``max(2, (L + 2) // 4)``, continued the same way above 16),
* **at most four tensors** (vertices).

The four-tensor cap is not in the published level definition, but it is what upstream does:
analysing MLIP-3's own templates, no basis function of levels 6..16 has more than four basic
factors (e.g. level 10 has ``M00^2 * M10`` but not ``M00^5``). With this rule the generated
templates reproduce upstream exactly for levels 6, 8, 10, 12, 14 and 16: the same number of
scalar basis functions (5, 9, 16, 29, 52, 92) and the same linear span (checked numerically
in ``tests/test_mtp_basis.py``). Isomorphic graphs are the same function and are emitted
once; the remaining graphs were numerically linearly independent at every level checked
(up to 20), so no further pruning is done. Levels 2 and 4 (deprecated upstream) and levels
above 16 follow the same rule without an upstream file to compare against.

How the contractions are encoded
--------------------------------
A connected graph is evaluated by absorbing its tensors one at a time (every prefix
connected). The partial result's free indices are grouped by the outside tensor they will
be contracted with; because every tensor is symmetric, only the sum over all index tuples
with a given multiset (per group) is needed, so an intermediate alpha is stored per tuple of
multisets and every multiplicity is an integer (brute-force counts of index tuples in
``{x,y,z}^n``; ranks are small). Absorption orders are tried exhaustively and the one needing
the fewest new ``times`` entries (reusing earlier intermediates) wins. A product is built as
``first factor x product of the rest`` (memoised), so each product costs one entry.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from smallcell.formats.errors import FormatError
from smallcell.state import atomic_write_text

__all__ = [
    "default_radial_funcs_count",
    "generate_template",
    "scalar_levels",
    "write_template",
]

# Upstream never multiplies/contracts more than four moment tensors into one basis function.
_MAX_TENSORS = 4

Tensor = tuple[int, int]  # (mu, nu)
Multiset = tuple[int, int, int]  # exponents (a, b, c) of x, y, z
Edges = tuple[tuple[int, ...], ...]  # symmetric matrix of contracted index pairs
Graph = tuple[tuple[Tensor, ...], Edges]  # (vertex labels, edges), canonical
Labels = tuple[Tensor, ...]


# --------------------------------------------------------------------------------------
# small combinatorics
# --------------------------------------------------------------------------------------


def _multisets(n: int) -> list[Multiset]:
    """Unique components of a rank-``n`` symmetric tensor, in MLIP's order (x first)."""
    return [(a, b, n - a - b) for a in range(n, -1, -1) for b in range(n - a, -1, -1)]


def _count(m: Multiset) -> int:
    """Number of index tuples with multiset ``m`` (multinomial coefficient)."""
    a, b, c = m
    return math.factorial(a + b + c) // (math.factorial(a) * math.factorial(b) * math.factorial(c))


def _add(*ms: Multiset) -> Multiset:
    return (sum(m[0] for m in ms), sum(m[1] for m in ms), sum(m[2] for m in ms))


def _level(t: Tensor) -> int:
    return 2 + 4 * t[0] + t[1]


def default_radial_funcs_count(level: int) -> int:
    """Upstream's radial_funcs_count: 2 up to level 8, then one more every 4 levels."""
    return max(2, (level + 2) // 4)


# --------------------------------------------------------------------------------------
# enumeration of contraction graphs
# --------------------------------------------------------------------------------------


def _canonical(labels: Labels, edges: Sequence[Sequence[int]]) -> Graph:
    """Smallest relabelling, so isomorphic contractions (the same function) compare equal."""
    n = len(labels)
    best: Graph | None = None
    for perm in itertools.permutations(range(n)):
        key = (
            tuple(labels[p] for p in perm),
            tuple(tuple(edges[p][q] for q in perm) for p in perm),
        )
        if best is None or key < best:
            best = key
    assert best is not None
    return best


def _edge_assignments(nus: list[int]) -> Iterator[list[list[int]]]:
    """Every loop-free multigraph on ``len(nus)`` labelled vertices with degrees ``nus``."""
    n = len(nus)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    edges = [[0] * n for _ in range(n)]

    def rec(k: int, rem: list[int]) -> Iterator[list[list[int]]]:
        if k == len(pairs):
            if not any(rem):
                yield [row[:] for row in edges]
            return
        i, j = pairs[k]
        for e in range(min(rem[i], rem[j]) + 1):
            rem[i] -= e
            rem[j] -= e
            edges[i][j] = edges[j][i] = e
            yield from rec(k + 1, rem)
            rem[i] += e
            rem[j] += e
        edges[i][j] = edges[j][i] = 0

    yield from rec(0, list(nus))


def _enumerate_graphs(level: int, rfc: int) -> list[Graph]:
    """All distinct contraction graphs with level <= ``level`` and at most four tensors."""
    tensors = [
        (mu, nu) for mu in range(rfc) for nu in range(level + 1) if _level((mu, nu)) <= level
    ]
    seen: set[Graph] = set()
    out: list[Graph] = []

    def combos(start: int, budget: int, acc: list[Tensor]) -> Iterator[tuple[Tensor, ...]]:
        if acc:
            yield tuple(acc)
        if len(acc) == _MAX_TENSORS:
            return
        for idx in range(start, len(tensors)):
            t = tensors[idx]
            if _level(t) <= budget:
                acc.append(t)
                yield from combos(idx, budget - _level(t), acc)
                acc.pop()

    for combo in combos(0, level, []):
        nus = [nu for _, nu in combo]
        if sum(nus) % 2 or 2 * max(nus) > sum(nus):
            continue  # no loop-free multigraph has these degrees
        for edges in _edge_assignments(nus):
            g = _canonical(combo, edges)
            if g not in seen:
                seen.add(g)
                out.append(g)
    return out


def _components(g: Graph) -> list[Graph]:
    """Connected components (each canonical): a disconnected graph is their product."""
    labels, edges = g
    n = len(labels)
    comp = [-1] * n
    parts: list[list[int]] = []
    for s in range(n):
        if comp[s] >= 0:
            continue
        stack, part = [s], []
        comp[s] = len(parts)
        while stack:
            u = stack.pop()
            part.append(u)
            for v in range(n):
                if edges[u][v] and comp[v] < 0:
                    comp[v] = len(parts)
                    stack.append(v)
        parts.append(sorted(part))
    return [
        _canonical(tuple(labels[u] for u in p), [[edges[u][v] for v in p] for u in p])
        for p in parts
    ]


def _graph_level(g: Graph) -> int:
    return sum(_level(t) for t in g[0])


def _sort_key(g: Graph) -> tuple[int, int, Graph]:
    return (len(g[0]), _graph_level(g), g)


# --------------------------------------------------------------------------------------
# encoding into alpha_index_basic / alpha_index_times
# --------------------------------------------------------------------------------------

# A partial contraction: component key (one multiset per outside vertex) -> (coef, alpha).
Components = dict[tuple[Multiset, ...], tuple[int, int]]


@dataclass
class _Builder:
    """Accumulates alphas and times entries; memoises intermediates, scalars and products."""

    basic: dict[tuple[int, Multiset], int]
    n_alpha: int
    times: list[tuple[int, int, int, int]] = field(default_factory=list)
    partial: dict[tuple, Components] = field(default_factory=dict)
    scalar: dict[Graph, int] = field(default_factory=dict)
    product: dict[tuple[Graph, ...], int] = field(default_factory=dict)

    # -- connected graphs ---------------------------------------------------------------

    def _single(self, labels: Labels, edges: Edges, u: int, outside: list[int]) -> Components:
        """One tensor viewed as a partial contraction (no new alphas: scaled basic moments)."""
        mu, _ = labels[u]
        comps: Components = {}
        for key in itertools.product(*(_multisets(edges[u][w]) for w in outside)):
            coef = math.prod(_count(m) for m in key)
            comps[key] = (coef, self.basic[(mu, _add((0, 0, 0), *key))])
        return comps

    @staticmethod
    def _partial_key(labels: Labels, edges: Edges, inside: list[int], outside: list[int]) -> tuple:
        """Identity of a partial contraction's value: inside tensors up to relabelling."""
        best: tuple | None = None
        for perm in itertools.permutations(inside):
            key = (
                tuple(labels[p] for p in perm),
                tuple(tuple(edges[p][q] for q in perm) for p in perm),
                tuple(tuple(edges[p][w] for w in outside) for p in perm),
            )
            if best is None or key < best:
                best = key
        assert best is not None
        return best

    def _absorb(
        self, labels: Labels, edges: Edges, prev: Components, outside: list[int], v: int
    ) -> tuple[dict[tuple[Multiset, ...], dict[tuple[int, int], int]], list[int]]:
        """Terms of the partial contraction after contracting tensor ``v`` into ``prev``.

        ``prev`` has one multiset per vertex in ``outside`` (``v`` among them). Result key:
        one multiset per remaining outside vertex; value: {(i, j): mult}.
        """
        vpos = outside.index(v)
        rest = [w for w in outside if w != v]
        rest_pos = [outside.index(w) for w in rest]
        mu_v = labels[v][0]
        h_choices = list(itertools.product(*(_multisets(edges[v][w]) for w in rest)))
        terms: dict[tuple[Multiset, ...], dict[tuple[int, int], int]] = {}
        for key, (coef, a_prev) in prev.items():
            g_v = key[vpos]
            for hs in h_choices:
                new_key = tuple(_add(key[p], h) for p, h in zip(rest_pos, hs, strict=True))
                a_v = self.basic[(mu_v, _add(g_v, *hs))]
                mult = coef * math.prod(_count(h) for h in hs)
                pair = (min(a_prev, a_v), max(a_prev, a_v))
                bucket = terms.setdefault(new_key, {})
                bucket[pair] = bucket.get(pair, 0) + mult
        return terms, rest

    def _plan(self, g: Graph, order: tuple[int, ...]) -> int:
        """Number of new times entries this absorption order would add (memo reused)."""
        labels, edges = g
        n = len(labels)
        cost = 0
        outside = [w for w in range(n) if w != order[0]]
        prev = self._single(labels, edges, order[0], outside)
        for step, v in enumerate(order[1:], start=1):
            inside = list(order[: step + 1])
            rest = [w for w in outside if w != v]
            pkey = self._partial_key(labels, edges, inside, rest)
            if pkey in self.partial:
                prev, outside = self.partial[pkey], rest
                continue
            terms, outside = self._absorb(labels, edges, prev, outside, v)
            cost += sum(len(b) for b in terms.values())
            # placeholder alphas: only the structure matters for counting
            prev = {k: (1, -1 - i) for i, k in enumerate(terms)}
        return cost

    def connected(self, g: Graph) -> int:
        """Alpha of a connected contraction graph (emitting what is missing)."""
        if g in self.scalar:
            return self.scalar[g]
        labels, edges = g
        n = len(labels)
        if n == 1:
            alpha = self.basic[(labels[0][0], (0, 0, 0))]
            self.scalar[g] = alpha
            return alpha
        orders = [o for o in itertools.permutations(range(n)) if _prefixes_connected(edges, o)]
        order = min(orders, key=lambda o: (self._plan(g, o), o))
        outside = [w for w in range(n) if w != order[0]]
        prev = self._single(labels, edges, order[0], outside)
        for step, v in enumerate(order[1:], start=1):
            inside = list(order[: step + 1])
            rest = [w for w in outside if w != v]
            pkey = self._partial_key(labels, edges, inside, rest)
            if pkey not in self.partial:
                terms, _ = self._absorb(labels, edges, prev, outside, v)
                comps: Components = {}
                for key, bucket in terms.items():
                    k = self.n_alpha
                    self.n_alpha += 1
                    for (i, j), mult in bucket.items():
                        self.times.append((i, j, mult, k))
                    comps[key] = (1, k)
                self.partial[pkey] = comps
            prev, outside = self.partial[pkey], rest
        ((_, alpha),) = prev.values()
        self.scalar[g] = alpha
        return alpha

    # -- products -----------------------------------------------------------------------

    def product_of(self, factors: tuple[Graph, ...]) -> int:
        """Alpha of a product of connected scalars: first factor x product of the rest."""
        if len(factors) == 1:
            return self.connected(factors[0])
        if factors in self.product:
            return self.product[factors]
        a = self.connected(factors[0])
        b = self.product_of(factors[1:])
        k = self.n_alpha
        self.n_alpha += 1
        self.times.append((min(a, b), max(a, b), 1, k))
        self.product[factors] = k
        return k

    def basis_function(self, g: Graph) -> int:
        """Alpha of any basis function; the lowest-level factor is split off first (as upstream)."""
        comps = sorted(_components(g), key=lambda c: (_graph_level(c), len(c[0]), c))
        return self.product_of(tuple(comps))


def _prefixes_connected(edges: Edges, order: tuple[int, ...]) -> bool:
    """Every tensor after the first is contracted with something absorbed before it."""
    return all(any(edges[order[s]][order[t]] for t in range(s)) for s in range(1, len(order)))


@dataclass(frozen=True)
class _Basis:
    basic: list[tuple[int, int, int, int]]
    times: list[tuple[int, int, int, int]]
    mapping: list[int]
    alpha_count: int


def _build_basis(level: int, rfc: int) -> _Basis:
    graphs = sorted(_enumerate_graphs(level, rfc), key=_sort_key)
    used = sorted({t for g in graphs for t in g[0]})
    basic_list: list[tuple[int, int, int, int]] = []
    basic_index: dict[tuple[int, Multiset], int] = {}
    for mu, nu in used:
        for m in _multisets(nu):
            basic_index[(mu, m)] = len(basic_list)
            basic_list.append((mu, *m))
    builder = _Builder(basic=basic_index, n_alpha=len(basic_list))
    mapping = [builder.basis_function(g) for g in graphs]
    return _Basis(basic_list, builder.times, mapping, builder.n_alpha)


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------


def _fmt_num(x: float) -> str:
    return f"{float(x):.15g}"


def _fmt_list(rows: list[tuple[int, ...]]) -> str:
    return "{" + ", ".join("{" + ", ".join(str(v) for v in r) + "}" for r in rows) + "}"


def generate_template(
    level: int,
    *,
    species_count: int = 1,
    min_dist: float = 2.0,
    max_dist: float = 5.0,
    radial_basis_size: int = 8,
    radial_funcs_count: int | None = None,
) -> str:
    """Text of an untrained level-``level`` MTP (``.almtp``) in MLIP-3's layout, LF endings.

    ``radial_funcs_count=None`` picks upstream's value for the level; tensors with
    ``mu >= radial_funcs_count`` are left out. The result is deterministic.
    """
    if isinstance(level, bool) or not isinstance(level, int) or level < 2:
        raise ValueError(f"MTP level must be an integer >= 2, got {level!r}")
    if species_count < 1:
        raise ValueError(f"species_count must be >= 1, got {species_count}")
    if radial_basis_size < 1:
        raise ValueError(f"radial_basis_size must be >= 1, got {radial_basis_size}")
    if not 0 <= min_dist < max_dist:
        raise ValueError(f"need 0 <= min_dist < max_dist, got {min_dist}, {max_dist}")
    rfc = default_radial_funcs_count(level) if radial_funcs_count is None else radial_funcs_count
    if rfc < 1:
        raise ValueError(f"radial_funcs_count must be >= 1, got {rfc}")
    basis = _build_basis(level, rfc)
    lines = [
        "MTP",
        "version = 1.1.0",
        "potential_name = MTP1m",
        f"species_count = {species_count}",
        "potential_tag = ",
        "radial_basis_type = RBChebyshev",
        f"\tmin_dist = {_fmt_num(min_dist)}",
        f"\tmax_dist = {_fmt_num(max_dist)}",
        f"\tradial_basis_size = {radial_basis_size}",
        f"\tradial_funcs_count = {rfc}",
        f"alpha_moments_count = {basis.alpha_count}",
        f"alpha_index_basic_count = {len(basis.basic)}",
        f"alpha_index_basic = {_fmt_list(basis.basic)}",
        f"alpha_index_times_count = {len(basis.times)}",
        f"alpha_index_times = {_fmt_list(basis.times)}",
        f"alpha_scalar_moments = {len(basis.mapping)}",
        "alpha_moment_mapping = {" + ", ".join(str(k) for k in basis.mapping) + "}",
    ]
    return "\n".join(lines) + "\n"


def write_template(path: str | os.PathLike[str], level: int, **kw: object) -> Path:
    """Write :func:`generate_template` output atomically (tmp file + rename); return the path.

    Atomic so that a concurrent training job never reads a half-written template.
    """
    text = generate_template(level, **kw)  # type: ignore[arg-type]
    return atomic_write_text(path, text)


_KEY_RE = re.compile(r"^\s*([A-Za-z_]+)\s*=\s*(.*?)\s*$")
_ROW_RE = re.compile(r"\{([^{}]*)\}")


def scalar_levels(text_or_path: str | os.PathLike[str]) -> list[int]:
    """Level of every scalar basis function of a template, in ``alpha_moment_mapping`` order.

    Works on any MTP/almtp (generated or upstream, LF or CRLF); a string containing a
    newline is taken as the file text, anything else as a path. Useful to document what a
    template contains and to check the level bound.
    """
    if isinstance(text_or_path, str) and "\n" in text_or_path:
        text, where = text_or_path, "<text>"
    else:
        where = str(text_or_path)
        text = Path(text_or_path).read_text(encoding="utf-8")
    fields: dict[str, tuple[int, str]] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#"):
            break  # trained .almtp: binary active-set state follows
        m = _KEY_RE.match(line)
        if m:
            fields[m.group(1)] = (lineno, m.group(2))

    def rows(name: str, width: int) -> list[list[int]]:
        if name not in fields:
            raise FormatError(where, None, f"missing {name}")
        lineno, value = fields[name]
        try:
            out = [[int(v) for v in r.split(",")] for r in _ROW_RE.findall(value) if r.strip()]
        except ValueError as exc:
            raise FormatError(where, lineno, f"bad {name}: {exc}") from None
        if width and any(len(r) != width for r in out):
            raise FormatError(where, lineno, f"{name} entries must have {width} numbers")
        return out

    basic = rows("alpha_index_basic", 4)
    times = rows("alpha_index_times", 4)
    if "alpha_moment_mapping" not in fields:
        raise FormatError(where, None, "missing alpha_moment_mapping")
    lineno, value = fields["alpha_moment_mapping"]
    try:
        mapping = [int(v) for v in value.strip().strip("{}").split(",") if v.strip()]
    except ValueError as exc:
        raise FormatError(where, lineno, f"bad alpha_moment_mapping: {exc}") from None

    level: dict[int, int] = {i: 2 + 4 * mu + a + b + c for i, (mu, a, b, c) in enumerate(basic)}
    for i, j, _, k in times:
        if i not in level or j not in level:
            raise FormatError(where, fields["alpha_index_times"][0], f"alpha {k} uses unset alpha")
        lv = level[i] + level[j]
        if level.setdefault(k, lv) != lv:
            raise FormatError(where, fields["alpha_index_times"][0], f"alpha {k} mixes levels")
    missing = [k for k in mapping if k not in level]
    if missing:
        raise FormatError(where, lineno, f"alpha_moment_mapping names unset alphas {missing}")
    return [level[k] for k in mapping]
