"""MLIP-3 ``.almtp`` potential files: the text header, the selection state summary, and
template preparation.

Why a reader of our own: the MLIP-3 adapter has to know, before it calls ``mlp``, whether a
file is an untrained template or a trained potential (only the first training from a
template takes ``--al_mode``), which active-learning mode a trained file carries (a warm
start cannot change it), which level and cutoff it has, and how large its active set is.
Layout (MLIP-3 ``src/mtpr.cpp`` Load/Save, ``cfg_selection.cpp`` Save; facts doc §2)::

    MTP
    version = 1.1.0
    potential_name = MTP1m
    scaling = 7.78e-02                  (trained only)
    species_count = 1                   (optional in the reader)
    potential_tag =
    radial_basis_type = RBChebyshev
    \tmin_dist = 2
    \tmax_dist = 5
    \tradial_basis_size = 8
    \tradial_funcs_count = 2
    \tradial_coeffs                     (trained only: one "i-j" block per species pair,
    \t\t0-0                              radial_funcs_count rows of radial_basis_size)
    \t\t\t{c1, ..., c8}
    alpha_moments_count = 18
    ...
    alpha_scalar_moments = 9
    alpha_moment_mapping = {0, 10, ...}
    species_coeffs = {...}              (trained only)
    moment_coeffs = {...}               (trained only)
    #MVS_v1.1                           (active-learning state, after training)
    energy_weight 1.0e+00               cfg mode: energy 1, site energy 0
    force_weight 0.0e+00
    stress_weight 0.0e+00
    site_en_weight 0.0e+00              nbh mode: site energy 1, energy 0
    weight_scaling 2
    #<binary: A and A^-1, 2 n^2 doubles>
    #
    <n lines "cfg_index eqn_index">
    #
    BEGIN_CFG ... END_CFG               (the active-set configurations)

The file is binary after the ``#`` that follows the weights, so the header reader works on
bytes, never reads past that line, and tolerates CRLF (upstream templates use CRLF).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from smallcell.formats.errors import FormatError

__all__ = [
    "KNOWN_LEVELS",
    "AlmtpHeader",
    "SelectionState",
    "read_almtp_header",
    "read_selection_state",
    "set_template_fields",
]

# (alpha_moments_count, alpha_scalar_moments) of MLIP-3's MTP_templates/<level>.almtp,
# counted in the upstream files (levels 6..28; 18..28 read from the templates of the
# build of ../shared/vendor/mlip-3-7fe598d.tar.gz, tests/test_mlip3.py checks every one).
KNOWN_LEVELS: dict[int, tuple[int, int]] = {
    6: (8, 5),
    8: (18, 9),
    10: (41, 16),
    12: (84, 29),
    14: (174, 52),
    16: (350, 92),
    18: (718, 163),
    20: (1352, 288),
    22: (2621, 500),
    24: (4991, 864),
    26: (9396, 1464),
    28: (17366, 2445),
}

_VERSION = "1.1.0"
_INT_KEYS = (
    "species_count",
    "radial_basis_size",
    "radial_funcs_count",
    "alpha_moments_count",
    "alpha_index_basic_count",
    "alpha_index_times_count",
    "alpha_scalar_moments",
)
_FLOAT_KEYS = ("scaling", "min_dist", "max_dist")
_TEXT_KEYS = ("potential_name", "potential_tag", "radial_basis_type")
_LIST_KEYS = (
    "alpha_index_basic",
    "alpha_index_times",
    "alpha_moment_mapping",
    "species_coeffs",
    "moment_coeffs",
)
_REQUIRED = (
    "radial_basis_type",
    "min_dist",
    "max_dist",
    "radial_basis_size",
    "radial_funcs_count",
    "alpha_moments_count",
    "alpha_scalar_moments",
)
_SELECTION_KEYS = ("energy_weight", "force_weight", "stress_weight", "site_en_weight",
                   "weight_scaling")
_CHUNK = 1 << 20  # bytes per readline call; long text lines are joined, binary is not read
_PAIR = re.compile(r"^(\d+)-(\d+)$")
_LEVEL_HINT = re.compile(r"level\s*[=:_-]?\s*(\d+)", re.IGNORECASE)


@dataclass
class AlmtpHeader:
    """What the text part of an .almtp file says (see the module docstring)."""

    path: str
    version: str
    potential_name: str
    species_count: int | None  # None: not in the file (untrained templates may omit it)
    radial_basis_type: str
    min_dist: float
    max_dist: float
    radial_basis_size: int
    radial_funcs_count: int
    alpha_moments_count: int
    alpha_scalar_moments: int
    level: int | None  # from the basis counts or a `level` hint; None when unknown
    trained: bool  # has radial_coeffs and moment_coeffs
    al_mode: str | None  # "cfg" / "nbh" from the #MVS weights; None without them
    has_active_set: bool  # an #MVS selection state follows the header
    potential_tag: str = ""
    scaling: float | None = None
    species_pairs: list[tuple[int, int]] = field(default_factory=list)
    selection_weights: dict[str, float] = field(default_factory=dict)

    @property
    def cutoff(self) -> float:
        """The interaction cutoff (Å): MLIP-3's max_dist."""
        return self.max_dist


@dataclass
class SelectionState:
    """Summary of the MaxVol state stored after the header (MLIP-3 cfg_selection Save)."""

    weights: dict[str, float]
    size: int  # n: rows of the active set = number of fitted coefficients
    owners: list[tuple[int, int]]  # per row: (active-set configuration, equation); -1 unfilled
    n_configs: int  # configurations stored after the index table

    @property
    def filled(self) -> int:
        """Rows of the active set that belong to a configuration."""
        return sum(1 for c, _ in self.owners if c >= 0)


def _iter_lines(fh: io.BufferedReader) -> Iterator[tuple[int, str]]:
    """(line number, text line without its line ending). A line starting with ``#`` is
    read only up to 256 bytes, so the binary block after the weights is never slurped; the
    caller stops after the ``#`` line that starts it."""
    lineno = 0
    while True:
        if fh.peek(1)[:1] == b"#":
            chunk = fh.readline(256)
            lineno += 1
            yield lineno, chunk.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
            continue
        chunk = fh.readline(_CHUNK)
        if not chunk:
            return
        lineno += 1
        while not chunk.endswith(b"\n"):
            more = fh.readline(_CHUNK)
            if not more:
                break
            chunk += more
        yield lineno, chunk.rstrip(b"\r\n").decode("utf-8", errors="replace")


def _parse_list(path: str, lineno: int, key: str, value: str) -> list[float]:
    """Numbers of a ``{...}`` value, nested braces flattened."""
    v = value.strip()
    if not (v.startswith("{") and v.endswith("}")):
        raise FormatError(path, lineno, f"{key}: expected a {{...}} list, got {v[:40]!r}")
    body = v.replace("{", " ").replace("}", " ").replace(",", " ").split()
    try:
        return [float(t) for t in body]
    except ValueError:
        raise FormatError(path, lineno, f"{key}: non-numeric entry in {v[:60]!r}") from None


def _level_of(n_alpha: int, n_scalar: int, tag: str, hint: str | None) -> int | None:
    """The upstream level whose basis has these counts, else a `level` line or a
    ``level<N>`` in potential_tag, else None."""
    for level, counts in KNOWN_LEVELS.items():
        if counts == (n_alpha, n_scalar):
            return level
    if hint is not None and hint.strip().isdigit():
        return int(hint.strip())
    m = _LEVEL_HINT.search(tag)
    return int(m.group(1)) if m else None


def _al_mode(weights: dict[str, float]) -> str | None:
    ene, site = weights.get("energy_weight", 0.0), weights.get("site_en_weight", 0.0)
    if site > 0 and ene == 0:
        return "nbh"
    if ene > 0 and site == 0:
        return "cfg"
    return None


def read_almtp_header(path: str | os.PathLike[str]) -> AlmtpHeader:
    """The header of an .almtp file (template or trained), with its selection weights.

    Reads in binary mode and stops at the line that starts the binary section, so a
    100 MB potential costs as much as a template. Raises FormatError (file, line, what was
    expected) for anything MLIP-3's loader would reject or that this summary needs.
    """
    p = os.fspath(path)
    values: dict[str, object] = {}
    seen_line: dict[str, int] = {}
    pairs: list[tuple[int, int]] = []
    radial_rows: list[tuple[int, int]] = []  # (line, row length)
    weights: dict[str, float] = {}
    has_mvs = False
    level_hint: str | None = None
    in_radial = False
    first = True
    with open(p, "rb") as fh:
        lines = _iter_lines(fh)
        for lineno, raw in lines:
            line = raw.strip()
            if first:
                if not line:
                    continue
                if line != "MTP":
                    raise FormatError(p, lineno, f"expected 'MTP' (an .almtp potential), "
                                      f"got {line[:40]!r}")
                first = False
                continue
            if raw.startswith("#"):
                if line.startswith("#MVS_v"):
                    has_mvs = True
                    for wline, wraw in lines:
                        if wraw.startswith("#"):
                            break
                        toks = wraw.split()
                        if not toks:
                            continue
                        if len(toks) != 2 or toks[0] not in _SELECTION_KEYS:
                            raise FormatError(p, wline, "expected '<weight name> <value>' "
                                              f"({', '.join(_SELECTION_KEYS)}) in the #MVS "
                                              f"block, got {wraw.strip()[:40]!r}")
                        try:
                            weights[toks[0]] = float(toks[1])
                        except ValueError:
                            raise FormatError(p, wline, f"{toks[0]}: not a number: "
                                              f"{toks[1]!r}") from None
                break
            if not line:
                continue
            if "=" not in line:
                if line == "radial_coeffs":
                    in_radial = True
                    seen_line["radial_coeffs"] = lineno
                    continue
                m = _PAIR.match(line)
                if in_radial and m:
                    pairs.append((int(m.group(1)), int(m.group(2))))
                    continue
                if in_radial and line.startswith("{"):
                    if not pairs:
                        raise FormatError(p, lineno, "radial_coeffs row before an 'i-j' "
                                          "species-pair line")
                    radial_rows.append((lineno, len(_parse_list(p, lineno, "radial_coeffs",
                                                                line))))
                    continue
                raise FormatError(p, lineno, f"expected 'key = value', got {line[:40]!r}")
            in_radial = False
            key, _, value = (s.strip() for s in line.partition("="))
            seen_line[key] = lineno
            if key == "version":
                if value != _VERSION:
                    raise FormatError(p, lineno, f"version {value!r}: MLIP-3 reads only "
                                      f"'version = {_VERSION}'")
                values[key] = value
            elif key in _INT_KEYS or key in _FLOAT_KEYS:
                kind, what = (int, "an integer") if key in _INT_KEYS else (float, "a number")
                try:
                    values[key] = kind(value)
                except ValueError:
                    raise FormatError(p, lineno, f"{key}: expected {what}, got "
                                      f"{value!r}") from None
            elif key in _TEXT_KEYS:
                values[key] = value
            elif key in _LIST_KEYS:
                values[key] = _parse_list(p, lineno, key, value)
            elif key == "level":
                level_hint = value
            # other keys (future MLIP-3 additions) are tolerated: the summary does not
            # need them and mlp itself is the judge of what it accepts
    if first:
        raise FormatError(p, None, "empty file: expected an .almtp potential starting "
                          "with 'MTP'")
    if "version" not in values:
        raise FormatError(p, None, f"no 'version = {_VERSION}' line")
    for key in _REQUIRED:
        if key not in values:
            raise FormatError(p, None, f"no '{key} = ...' line in the header")
    n_alpha = int(values["alpha_moments_count"])  # type: ignore[call-overload]
    n_scalar = int(values["alpha_scalar_moments"])  # type: ignore[call-overload]
    mapping = values.get("alpha_moment_mapping")
    if isinstance(mapping, list) and len(mapping) != n_scalar:
        raise FormatError(p, seen_line["alpha_moment_mapping"], f"alpha_moment_mapping has "
                          f"{len(mapping)} entries, alpha_scalar_moments = {n_scalar}")
    moments = values.get("moment_coeffs")
    if isinstance(moments, list) and len(moments) != n_scalar:
        raise FormatError(p, seen_line["moment_coeffs"], f"moment_coeffs has {len(moments)} "
                          f"entries, alpha_scalar_moments = {n_scalar}")
    rbs = int(values["radial_basis_size"])  # type: ignore[call-overload]
    rfc = int(values["radial_funcs_count"])  # type: ignore[call-overload]
    for lineno, length in radial_rows:
        if length != rbs:
            raise FormatError(p, lineno, f"radial_coeffs row has {length} numbers, "
                              f"radial_basis_size = {rbs}")
    if pairs and len(radial_rows) != rfc * len(pairs):
        raise FormatError(p, seen_line["radial_coeffs"], f"radial_coeffs has "
                          f"{len(radial_rows)} rows for {len(pairs)} species pairs, expected "
                          f"radial_funcs_count = {rfc} per pair")
    species = values.get("species_count")
    if species is None and pairs:
        species = max(max(a, b) for a, b in pairs) + 1
    trained = "moment_coeffs" in values and bool(pairs)
    tag = str(values.get("potential_tag", ""))
    return AlmtpHeader(
        path=p,
        version=str(values["version"]),
        potential_name=str(values.get("potential_name", "")),
        species_count=None if species is None else int(species),  # type: ignore[call-overload]
        radial_basis_type=str(values["radial_basis_type"]),
        min_dist=float(values["min_dist"]),  # type: ignore[arg-type]
        max_dist=float(values["max_dist"]),  # type: ignore[arg-type]
        radial_basis_size=rbs,
        radial_funcs_count=rfc,
        alpha_moments_count=n_alpha,
        alpha_scalar_moments=n_scalar,
        level=_level_of(n_alpha, n_scalar, tag, level_hint),
        trained=trained,
        al_mode=_al_mode(weights) if has_mvs else None,
        has_active_set=has_mvs,
        potential_tag=tag,
        scaling=values.get("scaling"),  # type: ignore[arg-type]
        species_pairs=pairs,
        selection_weights=weights,
    )


_INDEX_LINE = re.compile(rb"^(-?\d+) (-?\d+)$")


def read_selection_state(path: str | os.PathLike[str]) -> SelectionState | None:
    """The size and owners of the active set stored in a trained .almtp, or None when the
    file has no #MVS state.

    The binary block holds A and A^-1 (2 n^2 doubles) with no size field, so n is found as
    the one size after which the layout continues as MLIP-3 writes it (``\\n#\\n``, n index
    lines, ``#``). Raises FormatError when no size fits (a truncated or foreign file).
    """
    p = os.fspath(path)
    with open(p, "rb") as fh:
        data = fh.read()
    start = data.find(b"\n#MVS_v")
    if start < 0:
        return None
    header = read_almtp_header(p)
    # the binary starts right after the '#' of the first '#' line following the weights
    pos = data.find(b"\n#", start + 1)
    if pos < 0:
        raise FormatError(p, None, "#MVS block without its binary section")
    binary = pos + 2
    n = 1
    while binary + 16 * n * n + 3 <= len(data):
        end = binary + 16 * n * n
        if data[end:end + 3] == b"\n#\n":
            lines = data[end + 3:].split(b"\n", n + 1)
            if (len(lines) > n and all(_INDEX_LINE.match(x) for x in lines[:n])
                    and lines[n].startswith(b"#")):
                owners = [(int(a), int(b)) for a, b in (x.split() for x in lines[:n])]
                tail = lines[n + 1] if len(lines) > n + 1 else b""
                return SelectionState(header.selection_weights, n, owners,
                                      tail.count(b"BEGIN_CFG"))
        n += 1
    raise FormatError(p, None, "could not find the end of the binary active-set block "
                      "(truncated file?)")


def _format_number(x: float) -> str:
    """A number the way a person edits a template (``2``, ``4.5``), exact for C++ stod."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def set_template_fields(text: str, *, species_count: int, min_dist: float, max_dist: float,
                        radial_basis_size: int, path: str = "<template>") -> str:
    """An untrained template with the lines upstream's readme says to edit set to these
    values (``species_count``, ``min_dist``, ``max_dist``, ``radial_basis_size``).

    Everything else is preserved byte for byte, including CRLF line endings and the tab
    indentation of the radial-basis lines; a missing ``species_count`` line (optional in
    MLIP-3's reader) is inserted after ``potential_name``. A trained potential is refused:
    changing its basis size would no longer match its coefficients.
    """
    if int(species_count) != species_count or species_count < 1:
        raise ValueError(f"species_count must be a positive integer, got {species_count!r}")
    if int(radial_basis_size) != radial_basis_size or radial_basis_size < 2:
        raise ValueError(f"radial_basis_size must be an integer >= 2, got "
                         f"{radial_basis_size!r}")
    if not 0 < min_dist < max_dist:
        raise ValueError(f"need 0 < min_dist < max_dist, got min_dist={min_dist!r}, "
                         f"max_dist={max_dist!r}")
    wanted = {
        "species_count": str(int(species_count)),
        "min_dist": _format_number(min_dist),
        "max_dist": _format_number(max_dist),
        "radial_basis_size": str(int(radial_basis_size)),
    }
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    done: set[str] = set()
    name_at: int | None = None
    started = False
    for lineno, line in enumerate(lines, 1):
        body = line.rstrip("\r\n")
        ending = line[len(body):]
        stripped = body.strip()
        if not started:
            if not stripped:
                out.append(line)
                continue
            if stripped != "MTP":
                raise FormatError(path, lineno, f"expected 'MTP', got {stripped[:40]!r}")
            started = True
            out.append(line)
            continue
        if body.startswith("#"):
            out.extend(lines[lineno - 1:])
            break
        key = stripped.partition("=")[0].strip()
        if stripped in ("radial_coeffs",) or key in ("moment_coeffs", "species_coeffs"):
            raise ValueError(f"{path}: line {lineno}: this is a trained potential "
                             f"({key or stripped}); only an untrained template can be edited")
        if "=" in stripped and key in wanted:
            if key in done:
                raise FormatError(path, lineno, f"{key} appears twice")
            indent = body[: len(body) - len(body.lstrip())]
            out.append(f"{indent}{key} = {wanted[key]}{ending}")
            done.add(key)
            continue
        if key == "potential_name":
            name_at = len(out)
        out.append(line)
    if not started:
        raise FormatError(path, None, "empty template: expected a file starting with 'MTP'")
    for key in ("min_dist", "max_dist", "radial_basis_size"):
        if key not in done:
            raise FormatError(path, None, f"no '{key} = ...' line to set")
    if "species_count" not in done:
        if name_at is None:
            raise FormatError(path, None, "no 'potential_name' line after which to insert "
                              "'species_count'")
        ref = out[name_at]
        ending = ref[len(ref.rstrip("\r\n")):] or "\n"
        out.insert(name_at + 1, f"species_count = {wanted['species_count']}{ending}")
    return "".join(out)
