"""The run configuration: schema, defaults, validation, and the frozen effective config.

The schema is one declarative table (`SCHEMA`): every key has a type, a default, a range or
a set of choices, and a one-line doc. Validation walks the user's YAML against it and
reports every problem, each with the file, the line and the key path (a refused key keeps
its default so the walk goes on); unknown keys get a "did you mean" suggestion. What costs
a file read or a subprocess (FILL IN lines, programs after setup lines, file contents) is
checked once per command by engines/preflight.py. `docs/config.md` is generated from the
same table (`smallcell config-doc`), so the reference cannot drift from the code.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smallcell.commands import parse_command
from smallcell.errors import SmallcellError


@dataclass(frozen=True)
class Key:
    """One configuration key."""

    kind: str  # int | float | str | bool | path | list[float] | list[int] | list[str] |
    # values (list[float], or a range {start, stop, step} with stop included)
    default: Any
    doc: str
    low: float | None = None  # inclusive lower bound (numbers, list items)
    high: float | None = None
    low_open: bool = False  # lower bound excluded
    choices: tuple[str, ...] | None = None
    nullable: bool = False
    length: int | None = None  # exact list length
    min_length: int = 0
    unit: str = ""


@dataclass(frozen=True)
class Section:
    """A mapping of keys, with the text that introduces it in the reference."""

    doc: str
    keys: dict[str, Key | Section | Seq] = field(default_factory=dict)


@dataclass(frozen=True)
class Seq:
    """A list of mappings, each validated against `item` (default: an empty list)."""

    doc: str
    item: Section


def _slurm_stage(doc: str, time: str, cpus: int = 1) -> Section:
    """The resources of one kind of job: the same keys for every stage, so a cluster's
    sbatch header is written once per stage and nothing is hard-coded."""
    return Section(doc, {
        "partition": Key("str", None, "Partition of this stage's jobs; null = slurm.partition.",
                         nullable=True),
        "account": Key("str", None, "Account; null = slurm.account.", nullable=True),
        "qos": Key("str", None, "QOS; null = slurm.qos.", nullable=True),
        "time": Key("str", time, "Walltime (sbatch --time: minutes, MM:SS, HH:MM:SS, D-HH, "
                    "D-HH:MM or D-HH:MM:SS; Slurm rounds it up to whole minutes)."),
        "nodes": Key("int", 1, "sbatch --nodes.", low=1),
        "ntasks": Key("int", 1, "sbatch --ntasks (MPI ranks of the programs the job runs).",
                      low=1),
        "cpus_per_task": Key("int", cpus, "sbatch --cpus-per-task.", low=1),
        "mem": Key("str", None, "sbatch --mem, e.g. 4G; null = the cluster's default.",
                   nullable=True),
        "setup": Key("list[str]", [], "Shell lines run before smallcell in this stage's jobs, "
                     "after slurm.setup (module loads, exports; shell by design)."),
        "launcher": Key("list[str]", [], "Words put before this stage's smallcell command, "
                        "e.g. [srun] to run it as a job step; VASP's, LAMMPS's and mlp's own MPI "
                        "launchers belong in their command keys."),
        "extra": Key("list[str]", [], "More sbatch options for this stage, one per item, "
                     "e.g. ['--constraint=haswell', '--gres=gpu:1']."),
    })


_SLURM = Section(
    "SLURM (engines.scheduler: slurm). `make submit` submits per iteration an explore array, "
    "a select job, a label array and a collect+train job, chained by "
    "--dependency=afterany and each checking the markers; the error sample's labels run "
    "beside them in an array of their own, with a job that measures them and completes "
    "the summary, so training never waits for the study (unless the stop rule reads it: "
    "stop.rule accuracy with stop.metric sample). Unlike every other section, "
    "this one is read from the run's config file at every submission (never from the "
    "iteration's frozen copy): resources may change between submissions, results do not "
    "depend on them.",
    {
        "partition": Key("str", None, "Default partition; null = the cluster's default.",
                         nullable=True),
        "account": Key("str", None, "Default account (sbatch --account).", nullable=True),
        "qos": Key("str", None, "Default QOS (sbatch --qos).", nullable=True),
        "max_array_size": Key("int", 1000,
                              "Most elements of one job array (keep it below the cluster's "
                              "MaxArraySize); more tasks are sliced into this many elements.",
                              low=1),
        "throttle": Key("int", 0, "Most elements of an array running at once (--array=...%K); "
                        "0 = no limit.", low=0),
        "element_minutes": Key("float", 30.0,
                               "Target length of one label array element: it runs as many "
                               "label tasks one after another as their expected duration "
                               "fits in this (10 s of it kept for its own start), so short "
                               "labels make few long jobs, not one job per label, each "
                               "paying a queue wait. Capped at slurm.label.time minus "
                               "walltime_margin. The expected duration is the mean wall "
                               "time of finished tasks (their done/failed markers) of the "
                               "same kind (training or error-sample labels; the other kind "
                               "next) and atom count, from the iteration itself (a "
                               "resubmission) or the latest earlier one; else the nearest "
                               "atom count measured, scaled; else first_task_seconds.",
                               low=0, low_open=True, unit="min"),
        "first_task_seconds": Key("float", None,
                                  "Expected duration of one label task before any has been "
                                  "measured (the first iteration, a new labeler). null = the "
                                  "labeler's own first estimate for a 4-atom cell: eam 0.2 "
                                  "s, gpaw 30 s, vasp 120 s, scaled by (atoms/4)^2 for gpaw "
                                  "and vasp (DFT at a fixed k-point density) and linearly for "
                                  "eam.", nullable=True, low=0, low_open=True, unit="s"),
        "tasks_per_element": Key("int", None,
                                 "Label (and explore) tasks run one after another by one array "
                                 "element: an explicit override of element_minutes; null = "
                                 "label elements sized by element_minutes, one explore run "
                                 "per element. Raised when the array would exceed "
                                 "max_array_size.",
                                 nullable=True, low=1),
        "walltime_margin": Key("float", 300.0,
                               "An array element stops taking new tasks when less than this "
                               "is left of its walltime (at least one task's duration); the "
                               "checking job resubmits what is left. The pilot job stops its "
                               "loop this long before its walltime and resubmits itself.",
                               low=0, unit="s"),
        "resubmit": Key("int", 3,
                        "How often the missing runs or tasks of a stage (killed or crashed "
                        "elements) are resubmitted in a row without any of them finishing; a "
                        "round that finished some does not count. Then the chain stops with "
                        "a message in iter/<i>/stopped. 0 = never resubmit.", low=0),
        "setup": Key("list[str]", [], "Shell lines run first in every job (module loads, "
                     "exports; shell by design)."),
        "extra": Key("list[str]", [], "sbatch options for every job, one per item, "
                     "e.g. ['--mail-type=FAIL']."),
        "explore": _slurm_stage("Explore array elements: one MD run each (or a slice).",
                                "02:00:00"),
        "select": _slurm_stage("The select job: checks the runs, selects, prepares the label "
                               "tasks and submits the label array (small).", "00:30:00"),
        "label": _slurm_stage("Label array elements (training and error-sample labels): a "
                              "slice of the label tasks each (VASP runs inside them: size "
                              "ntasks/nodes for vasp.command).",
                              "04:00:00"),
        "train": _slurm_stage("The collect+train job: failure policy, collect, train, "
                              "summary, then the next iteration's submission; also the "
                              "error sample's job (the trainer's errors on the sample).",
                              "02:00:00"),
        "pilot": _slurm_stage("The pilot job (`make pilot`): the whole local loop in one "
                              "allocation, cpus_per_task worker processes.", "1-00:00:00",
                              cpus=4),
    },
)


SCHEMA = Section(
    "A smallcell run: one YAML file. Every key is optional; the defaults are the embedded "
    "fcc Pb example.",
    {
        "species": Key(
            "list[str]", ["Pb"], "Chemical symbols in type order (cfg type 0 = first).",
            min_length=1,
        ),
        "masses": Key(
            "list[float]", None, "Atomic masses in species order; null takes ASE's values.",
            nullable=True, low=0, low_open=True, unit="amu",
        ),
        "structure": Section(
            "The simulation cell of the explore runs (Algorithm 2).",
            {
                "lattice": Key("str", "fcc", "Crystal lattice.", choices=("fcc", "bcc")),
                "a": Key("float", 4.95, "Cubic lattice parameter.", low=0, low_open=True,
                         unit="Å"),
                "cell": Key("list[int]", [1, 1, 1],
                            "Repetitions n1 n2 n3 of the conventional cubic cell "
                            "(fcc: 4 atoms each, bcc: 2).", length=3, low=1),
                "displacement": Key("float", 0.1,
                                    "Amplitude of the random displacement of every atom from "
                                    "its lattice site at the start of each MD run.",
                                    low=0, unit="Å"),
                "displacement_kind": Key(
                    "str", "uniform",
                    "uniform: each Cartesian component uniform in [-d, d]; gaussian: each "
                    "component normal with standard deviation d.",
                    choices=("uniform", "gaussian")),
            },
        ),
        "grid": Section(
            "The (T, P) grid of the explore runs: one MD run per temperature x pressure x "
            "seed.",
            {
                "temperatures": Key("values", [200.0, 300.0, 400.0],
                                    "Temperatures of the MD runs: a list, or a range "
                                    "{start: 100, stop: 600, step: 100} (stop included).",
                                    low=0, low_open=True, min_length=1, unit="K"),
                "pressures": Key("values", [1.0],
                                 "Pressures of the MD runs (used by the npt ensemble): a "
                                 "list or a range.", min_length=1, unit="bar"),
                "seeds_per_point": Key("int", 1, "Independent MD runs per (T, P).", low=1),
                "draws": Key("int", 0,
                             "If > 0: instead of the grid, this many (T, P) points drawn "
                             "at random, anew in every iteration, uniformly between the "
                             "smallest and largest temperature and pressure (Meng et al. "
                             "2025); 0 = the grid.", low=0),
            },
        ),
        "md": Section(
            "Molecular dynamics of the embedded explorer (and the rendered in.lammps).",
            {
                "ensemble": Key(
                    "str", "npt",
                    "npt: Langevin-BAOAB with an isotropic barostat (ASE LangevinBAOAB), as "
                    "in the report; nvt: Langevin thermostat at fixed cell. Default npt by "
                    "measurement: see 'Choice of ensemble' below.",
                    choices=("nvt", "npt")),
                "timestep": Key("float", 2.0, "MD time step.", low=0, low_open=True, unit="fs"),
                "steps": Key("int", 1000, "MD steps per run (a run stops earlier when it "
                             "breaks).", low=1),
                "grade_every": Key("int", 1,
                                   "Evaluate gamma every k-th step (1 = every step, as "
                                   "MLIP-3 does; a grade costs about one force call). The "
                                   "embedded explorer only: MLIP-3 in LAMMPS grades every "
                                   "force call.", low=1),
                "barostat": Key("str", "iso",
                                "npt cell fluctuations: iso (one length scale, the cell "
                                "stays cubic) or aniso (each axis on its own).",
                                choices=("iso", "aniso")),
                "thermostat_tau": Key("float", 100.0, "Thermostat time constant.",
                                      low=0, low_open=True, unit="fs"),
                "barostat_tau": Key("float", 1000.0, "Barostat time constant (npt).",
                                    low=0, low_open=True, unit="fs"),
            },
        ),
        "extrapolation": Section(
            "Extrapolation control (MLIP-3's threshold_save / threshold_break).",
            {
                "gamma_save": Key("float", 2.1,
                                  "Configurations graded above this go to preselected.cfg.",
                                  low=1.0),
                "gamma_break": Key("float", 10.0,
                                   "An MD run stops at the first configuration graded above "
                                   "this; must exceed gamma_save.", low=1.0),
            },
        ),
        "select": Section(
            "Which preselected configurations are labeled.",
            {
                "policy": Key(
                    "str", "dopt",
                    "threshold: every preselected configuration with gamma_save < gamma < "
                    "gamma_max (the report's rule); dopt: D-optimal MaxVol selection, only "
                    "configurations that enlarge the active set (like mlp select_add); "
                    "dopt_batch: dopt one configuration at a time, so near-duplicate frames "
                    "are not taken together (embedded trainer only).",
                    choices=("threshold", "dopt", "dopt_batch")),
                "gamma_max": Key("float", None,
                                 "Upper gamma bound of the threshold rule; null = gamma_break.",
                                 nullable=True, low=1.0),
                "max_selected": Key("int", None,
                                    "Cap on the labels per iteration (threshold: highest "
                                    "gamma first; dopt: first to enter the active set); "
                                    "null = no cap.", nullable=True, low=1),
                "swap_threshold": Key("float", 1.001,
                                      "dopt, dopt_batch: a candidate enlarges the active set "
                                      "when one of its rows grades above this (mlp "
                                      "select_add's --threshold).", low=1.0, low_open=True),
            },
        ),
        "sample": Section(
            "The error study: a random sample of every configuration the MD queried, to "
            "compare gamma with the true error. The LAMMPS explorer needs "
            "lammps.grade_floor for it (MLIP-3 otherwise saves only configurations above "
            "gamma_save), and samples nothing when MPI ranks split configurations.",
            {
                "size": Key("int", 200,
                            "Configurations each MD run keeps, drawn uniformly from all its "
                            "queries with gamma_min < gamma < gamma_max (explore/<run>/"
                            "queried.cfg), and the iteration's draw over all runs "
                            "(select/sample.cfg): labeled in iter/<i>/sample/, never "
                            "trained on, to measure the errors of the potential that ran "
                            "the MD (sample/errors.json). Each costs one reference "
                            "calculation. 0 = no sample.", low=0),
                "gamma_min": Key("float", 0.1, "Lower gamma bound of the sample.", low=0.0),
                "gamma_max": Key("float", 10.0, "Upper gamma bound of the sample.",
                                 low=0.0, low_open=True),
            },
        ),
        "initial": Section(
            "The initial data set that iteration 0 trains on.",
            {
                "source": Key("str", "generate",
                              "generate: displaced and strained cells labeled by the labeler; "
                              "cfg: a labeled MLIP-3 cfg file; outcar: a folder of VASP "
                              "OUTCARs (every ionic step); import: every entry of "
                              "initial.paths.",
                              choices=("generate", "cfg", "outcar", "import")),
                "path": Key("path", None, "The cfg file or OUTCAR folder (source cfg/outcar), "
                            "relative to the config file.", nullable=True),
                "paths": Key("list[path]", [],
                             "source import: labeled data sets, each a cfg file, an extended "
                             "XYZ file (.extxyz/.xyz, energy and forces) or a folder searched "
                             "for OUTCARs (e.g. the report's eq/neq 32- and 108-atom sets); "
                             "relative to the config file."),
                "dedup": Key("bool", True,
                             "Imported data: drop a configuration equal to an earlier one "
                             "(same atoms, types, cell and positions to 1e-5 Å), e.g. the "
                             "same OUTCAR imported twice."),
                "test_fraction": Key("float", 0.0,
                                     "Imported data: this fraction, drawn at random, is held "
                                     "out as a test set (iter/0/select/test.cfg), never "
                                     "trained on; every iteration's potential is tested on "
                                     "it (summary.json test_errors).", low=0, high=0.9),
                "n_configs": Key("int", 24, "Number of generated configurations.", low=1),
                "strain": Key("float", 0.04,
                              "Maximal random strain component of a generated cell.",
                              low=0, high=0.5),
                "displacement": Key("float", 0.15,
                                    "Random displacement amplitude of generated cells.",
                                    low=0, unit="Å"),
            },
        ),
        "trainer": Section(
            "The MTP and its fit (embedded trainer: motep).",
            {
                "level": Key("int", 8, "MTP level (basis size grows with it).", low=2, high=28),
                "max_dist": Key("float", 5.0, "Cutoff radius of the MTP.", low=0, low_open=True,
                                unit="Å"),
                "min_dist": Key("float", 2.0, "Smallest distance of the radial basis (the "
                                "first fit's, when min_dist_update moves it).", low=0,
                                low_open=True, unit="Å"),
                "min_dist_update": Key(
                    "bool", True,
                    "Every fit moves min_dist to 0.99 x the training set's shortest "
                    "interatomic distance, as mlp train does by default (false: keep "
                    "min_dist; MLIP-3: --no_mindist_update). Measured on the default run: "
                    "with the fixed 2 Å on fcc Pb (shortest distances ~3 Å) motep's fits "
                    "ended ~3x less accurate (BENCHMARKS.md \"MLIP-3's mlp against "
                    "motep\")."),
                "radial_basis_size": Key("int", 8, "Chebyshev radial basis functions.", low=2),
                "max_iter": Key("int", 1000, "Iteration limit of the BFGS fit (a limit, not "
                                "a budget: fits stop at `tolerance`; BENCHMARKS.md "
                                "\"Fit protocols\").", low=1),
                "restarts": Key("int", 2,
                                "This many more fits from fresh random templates (motep: "
                                "other seeds; MLIP-3: --init_random=true) besides the warm "
                                "start; each start runs 100 BFGS iterations and the "
                                "lowest loss goes on to convergence. Measured: the warm "
                                "start won every such screen (it is ahead after 100 "
                                "iterations), so these cost little and change little; the "
                                "final refit (final_restarts) is what leaves the warm "
                                "start's basin (BENCHMARKS.md \"Fit protocols\").",
                                low=0),
                "tolerance": Key("float", 0.01,
                                 "Embedded trainer: the fit has converged when 50 BFGS "
                                 "iterations lower the loss by less than this fraction "
                                 "(max_iter still caps it).",
                                 low=0, low_open=True),
                "final_restarts": Key(
                    "int", 3,
                    "The final refit: when an iteration meets the stop rule, its potential is "
                    "refitted from the previous one and from this many fresh templates, "
                    "each to final_tolerance (no screen), the lowest training loss winning; "
                    "the refit must then pass one more MD (a check iteration) before the "
                    "stage hands it on. 0: no final refit. Measured: on a 779-configuration "
                    "set the loop's warm-started fit had a held-out force RMSE of 18.7 "
                    "meV/Å, the lowest-loss of 3 fresh converged fits 11.6 (BENCHMARKS.md "
                    "\"Label efficiency\").", low=0),
                "final_tolerance": Key("float", 0.001,
                                       "Embedded trainer: the final refit's tolerance (see "
                                       "tolerance); MLIP-3 uses mlip3.tolerance.",
                                       low=0, low_open=True),
                "final_max_iter": Key("int", 3000, "Iteration limit of each final-refit "
                                      "start.", low=1),
                "warm_start": Key("bool", True,
                                  "Start each fit from the previous iteration's potential."),
                "energy_weight": Key("float", 1.0, "Loss weight of energies (per atom).", low=0),
                "force_weight": Key("float", 0.01, "Loss weight of forces.", low=0),
                "stress_weight": Key("float", 0.001, "Loss weight of stresses.", low=0),
                "al_mode": Key("str", "nbh",
                               "Active-set mode of the grader: nbh (one row per atomic "
                               "neighbourhood, MLIP-3's default) or cfg (one row per "
                               "configuration).", choices=("nbh", "cfg")),
            },
        ),
        "label": Section(
            "Labeling (DFT or its stand-in) and its failure policy.",
            {
                "retries": Key("int", 1, "Retries of a failing label task before it is "
                               "marked failed.", low=0),
                "min_success_ratio": Key("float", 0.5,
                                         "The iteration stops with a list of failed tasks "
                                         "when fewer than this fraction succeed.",
                                         low=0, high=1),
                "max_force": Key("float", 50.0,
                                 "Labels with a force component above this (or NaN) are "
                                 "rejected as failed.", low=0, low_open=True, unit="eV/Å"),
            },
        ),
        "engines": Section(
            "Which adapter plays each role.",
            {
                "explorer": Key("str", "embedded",
                                "MD with extrapolation control: embedded (ASE MD with the "
                                "motep MTP) or lammps (LAMMPS with pair_style mlip; needs "
                                "trainer mlip3).", choices=("embedded", "lammps")),
                "labeler": Key("str", "eam", "Reference labels: eam (Zhou 2004 Pb EAM, "
                               "embedded), vasp, or gpaw (open-source DFT; `make setup "
                               "EXTRAS=gpaw`).", choices=("eam", "vasp", "gpaw")),
                "trainer": Key("str", "motep", "Fitting and grading: motep (embedded) or "
                               "mlip3 (MLIP-3's mlp).", choices=("motep", "mlip3")),
                "scheduler": Key("str", "local",
                                 "Where tasks run: local (`make iter`: worker processes on this "
                                 "machine) or slurm (`make submit`: job arrays chained by "
                                 "dependencies; `make pilot`: the local loop inside one "
                                 "allocation). `make iter` works with either, and `make "
                                 "submit` / `make pilot` use SLURM whatever this says.",
                                 choices=("local", "slurm")),
            },
        ),
        "vasp": Section(
            "The VASP labeler (engines.labeler: vasp): one single point per task folder.",
            {
                "command": Key("command", ["vasp_std"],
                               "How to run VASP in a task folder, split like a shell would "
                               "but never run by one (e.g. 'mpirun -np 16 vasp_std', "
                               "'srun vasp_std'); a list of words is taken as is."),
                "setup": Key("list[str]", [],
                             "Shell lines run before the command in the same shell, e.g. "
                             "'module load vasp/6.4' (these are shell by design)."),
                "potcar_dir": Key("path", None, "Your POTCAR library: <potcar_dir>/<name>/"
                                  "POTCAR (POTCARs are never copied into the repo).",
                                  nullable=True),
                "potcars": Key("mapping", {}, "POTCAR folder per species, e.g. {Pb: Pb_d}; "
                               "default the symbol."),
                "incar": Key("mapping",
                             {"ENCUT": 400, "PREC": "Accurate", "EDIFF": 1e-6, "NELM": 100,
                              "ISMEAR": 1, "SIGMA": 0.1, "ISYM": 0, "LREAL": False},
                             "INCAR tags of the single point (IBRION = -1 and NSW = 0 are "
                             "forced); NCORE, KPAR and any other tag may be added; null "
                             "removes a tag."),
                "kspacing": Key("float", 0.15,
                                "k-point spacing in Å^-1 (VASP's KSPACING convention, 2π "
                                "included): every cell size gets an appropriate mesh.",
                                nullable=True, low=0, low_open=True, unit="Å^-1"),
                "kppra": Key("int", None, "k-points per reciprocal atom instead of kspacing.",
                             nullable=True, low=1),
                "gamma_centered": Key("bool", True, "Gamma-centred mesh (else Monkhorst-Pack)."),
                "energy": Key("str", "free", "Training energy: free (TOTEN, as MLIP-3 uses) or "
                              "sigma0 (energy(sigma->0)).", choices=("free", "sigma0")),
                "timeout": Key("float", None, "Seconds before a VASP run is killed and the task "
                               "failed; null = no limit.", nullable=True, low=0, low_open=True,
                               unit="s"),
            },
        ),
        "gpaw": Section(
            "The GPAW labeler (engines.labeler: gpaw): a plane-wave DFT single point per task "
            "folder, run by the Python that has GPAW (Debian's, installed by `make setup "
            "EXTRAS=gpaw`), one process per task.",
            {
                "python": Key("str", "/usr/bin/python3",
                              "The interpreter with GPAW and its ASE (not the venv's)."),
                "launcher": Key("command", None,
                                "MPI launcher in front of the interpreter for parallel runs, "
                                "e.g. 'mpirun -np 4' or 'srun'; null = one process.",
                                nullable=True),
                "setup": Key("list[str]", [], "Shell lines run first (module loads, "
                             "GPAW_SETUP_PATH)."),
                "ecut": Key("float", 500.0, "Plane-wave cutoff. The stress converges slowly "
                            "with it (Pulay stress): fcc Pb at 5.04 Å has -7.3 GPa at 300 eV, -0.9 "
                            "at 500, -0.6 at 700 eV; check yours before lowering it.", low=0,
                            low_open=True, unit="eV"),
                "xc": Key("str", "PBE", "Exchange-correlation functional (its PAW setups must "
                          "be installed: gpaw-data has LDA, PBE, revPBE, RPBE)."),
                "kspacing": Key("float", 0.25, "k-point spacing in Å^-1, 2π included (the "
                                "VASP KSPACING rule): every cell size gets a mesh of the same "
                                "density.", nullable=True, low=0, low_open=True, unit="Å^-1"),
                "kppra": Key("int", None, "k-points per reciprocal atom instead of kspacing.",
                             nullable=True, low=1),
                "gamma_centered": Key("bool", True, "Gamma-centred mesh (else Monkhorst-Pack)."),
                "smearing": Key("str", "fermi-dirac", "Occupation smearing.",
                                choices=("fermi-dirac", "marzari-vanderbilt",
                                         "methfessel-paxton")),
                "width": Key("float", 0.1, "Smearing width.", low=0, low_open=True, unit="eV"),
                "convergence": Key("mapping", {}, "SCF criteria passed to GPAW: energy (eV per "
                                   "valence electron), density, eigenstates, forces (eV/Å); "
                                   "unset ones keep GPAW's defaults."),
                "maxiter": Key("int", 333, "SCF iterations before the task fails as not "
                               "converged.", low=1),
                "symmetry": Key("bool", True, "Use the structure's symmetry (displaced "
                                "configurations have none; perfect cells run faster)."),
                "energy": Key("str", "free", "Training energy: free (the force-consistent "
                              "free energy, as VASP's TOTEN) or sigma0 (extrapolated to zero "
                              "width).", choices=("free", "sigma0")),
                "timeout": Key("float", None, "Seconds before a GPAW run is killed and the "
                               "task failed; null = no limit.", nullable=True, low=0,
                               low_open=True, unit="s"),
            },
        ),
        "deepmd": Section(
            "DeePMD-kit models (`make setup EXTRAS=deepmd`: its own venv .venv-deepmd/, "
            "TensorFlow backend) for comparisons with the MTP (`smallcell compare`), never "
            "for the loop's exploration: DeePMD has no extrapolation grade. Defaults are "
            "sized for a one-element metal (fcc Pb) on small cells: one model on 60 "
            "four-atom configurations trains and freezes in 15.6 s wall on 2 cores "
            "(README \"DeePMD-kit\"). A committee member k trains with seed + k.",
            {
                "descriptor": Key("str", "se_e2_a", "Descriptor type (two-body embedding, "
                                  "all angular information: DeePMD's smooth edition).",
                                  choices=("se_e2_a",)),
                "rcut": Key("float", 5.0, "Cutoff radius; the default is trainer.max_dist's "
                            "default, so both potentials see the same neighbours.", low=0,
                            low_open=True, unit="Å"),
                "rcut_smth": Key("float", 0.5, "Where the smooth switching of 1/r to zero "
                                 "at rcut starts (DeePMD's examples: 0.5).", low=0, unit="Å"),
                "sel": Key("int", 32, "Most neighbours within rcut (per type; one element: "
                           "one number). fcc Pb has 18 within 5 Å at 4.95 Å; DeePMD "
                           "refuses data with more.", low=1),
                "neuron": Key("list[int]", [8, 16, 32], "Embedding net layer widths.",
                              min_length=1, low=1),
                "axis_neuron": Key("int", 4, "Columns of the embedding matrix kept for the "
                                   "descriptor (M2).", low=1),
                "fitting_neuron": Key("list[int]", [32, 32, 32], "Fitting net layer widths.",
                                      min_length=1, low=1),
                "steps": Key("int", 2000, "Training steps (batches). Measured on 2 cores: "
                             "`dp train` of the defaults 11-15 s (the 2000 steps "
                             "themselves 6.8 s, the rest TensorFlow's start-up), `dp "
                             "freeze` 4.6 s; 4000 steps 33 s for a held-out "
                             "force RMSE of 35 instead of 39 meV/Å.", low=1),
                "start_lr": Key("float", 1e-3, "Learning rate at step 0 (exponential decay).",
                                low=0, low_open=True),
                "stop_lr": Key("float", 1e-5, "Learning rate at the last step.", low=0,
                               low_open=True),
                "decay_steps": Key("int", None, "Steps between learning-rate decays; null = "
                                   "steps / 20 (DeePMD's default, 5000, would not decay a "
                                   "short fit at all).", nullable=True, low=1),
                "start_pref_e": Key("float", 0.02, "Loss prefactor of energies at the start.",
                                    low=0),
                "limit_pref_e": Key("float", 1.0, "... at the end (the prefactors move with "
                                    "the learning rate).", low=0),
                "start_pref_f": Key("float", 1000.0, "Loss prefactor of forces at the start.",
                                    low=0),
                "limit_pref_f": Key("float", 1.0, "... at the end.", low=0),
                "start_pref_v": Key("float", 0.02, "Loss prefactor of virials at the start "
                                    "(0 and 0: stresses not fitted; the MTP fits them).",
                                    low=0),
                "limit_pref_v": Key("float", 1.0, "... at the end.", low=0),
                "batch_size": Key("int", 1, "Configurations per training step (null = "
                                  "DeePMD's auto: 32 atoms, 8 four-atom cells, measured "
                                  "about 5x slower per step here).", nullable=True, low=1),
                "seed": Key("int", 1, "Seed of the network initialisation and batches; "
                            "committee member k uses seed + k.", low=0),
                "committee": Key("int", 4, "Models per committee (the spread of their "
                                 "forces is the uncertainty estimate).", low=4),
                "threads": Key("int", 1, "TensorFlow intra-op and inter-op threads (and "
                               "OMP_NUM_THREADS) of each DeePMD process. Measured: one "
                               "thread per model is the fastest on these small cells.",
                               low=1),
                "venv": Key("path", None, "The venv with DeePMD-kit (its bin/dp and "
                            "bin/python); null = $SMALLCELL_DEEPMD_VENV, else the repo's "
                            ".venv-deepmd/.", nullable=True),
                "timeout": Key("float", None, "Seconds before a dp call is killed; null = "
                               "no limit.", nullable=True, low=0, low_open=True, unit="s"),
            },
        ),
        "mlip3": Section(
            "MLIP-3's mlp (engines.trainer: mlip3): training, grades, selection, errors.",
            {
                "mlp": Key("command", ["mlp"], "How to run mlp, e.g. 'mlp' or "
                           "'mpirun -np 8 mlp_mpi'. Unset: the bin/mlp of the build `make "
                           "setup EXTRAS=mlip3` made (else 'mlp' on PATH)."),
                "setup": Key("list[str]", [], "Shell lines run before mlp (module loads)."),
                "templates_dir": Key("path", None, "MLIP-3's MTP_templates folder: the template "
                                     "is <dir>/<level>.almtp. Unset (and no template): the "
                                     "MTP_templates of the build `make setup EXTRAS=mlip3` "
                                     "made.", nullable=True),
                "template": Key("path", None, "An untrained .almtp to start from instead of "
                                "templates_dir.", nullable=True),
                "tolerance": Key("float", 1e-3, "mlp train --tolerance.", low=0, low_open=True),
                "weight_scaling": Key("int", 1, "mlp train --weight_scaling (0, 1 or 2).",
                                      low=0, high=2),
                "timeout": Key("float", None, "Seconds before an mlp call is killed.",
                               nullable=True, low=0, low_open=True, unit="s"),
            },
        ),
        "lammps": Section(
            "LAMMPS with MLIP-3's pair_style mlip (engines.explorer: lammps).",
            {
                "command": Key("command", ["lmp"], "How to run LAMMPS, e.g. 'lmp' or "
                               "'mpirun -np 4 lmp_mpi' (-in and -log are appended)."),
                "setup": Key("list[str]", [], "Shell lines run before LAMMPS (module loads)."),
                "grade_floor": Key(
                    "float", None,
                    "If set (e.g. 0.1, as the report did), in.lammps saves every configuration "
                    "graded above this so that the gamma distribution of all queries is "
                    "known (and the error study can sample them); selection then applies "
                    "the real gamma_save. Costs disk during the run: about one cfg block "
                    "per MD step (see 'Recording every grade' below). null = MLIP-3's own "
                    "threshold_save: statistics of the saved grades only, no error sample.",
                    nullable=True, low=0, low_open=True),
                "dump_every": Key("int", 0, "Trajectory dump interval (0 = none).", low=0),
                "timeout": Key("float", None, "Seconds before a LAMMPS run is killed.",
                               nullable=True, low=0, low_open=True, unit="s"),
            },
        ),
        "slurm": _SLURM,
        "run": Section(
            "The run as a whole.",
            {
                "seed": Key("int", 2026, "Master seed: structures, MD and fits derive from it.",
                            low=0),
                "jobs": Key("int", 2, "Parallel worker processes (0 = all cores).", low=0),
                "converged_iterations": Key(
                    "int", 1, "Consecutive converged iterations (no MD run broke, max gamma "
                    "< gamma_break) after which the loop stops (with `stages`: after "
                    "which a stage ends).", low=1),
                "max_iterations": Key(
                    "int", 3, "The last iteration `make iter` / `smallcell iter` runs when "
                    "N / --upto is not given.", low=0),
            },
        ),
        "stop": Section(
            "When a stage (a run without `stages`) ends. Both rules need "
            "run.converged_iterations consecutive iterations in which no MD run broke "
            "(max gamma < gamma_break). The stage then ends with a potential that passed "
            "such an MD itself: when the iteration that met the rule added labels, its "
            "refitted potential runs one more explore (a check iteration, which labels "
            "nothing for training when it passes) before it is handed on.",
            {
                "rule": Key("str", "gamma",
                            "gamma: the report's rule, no MD run broke; accuracy: also the "
                            "force error of the potential that ran the MD has stopped "
                            "falling (at or below force_target, or not min_improvement "
                            "below the best of the stage's last `window` measured "
                            "iterations).",
                            choices=("gamma", "accuracy")),
                "metric": Key("str", "sample",
                              "accuracy rule: the force error it reads. sample: the mean "
                              "per-configuration force error on the iteration's labeled MD "
                              "sample (needs sample.size > 0); test: the force RMSE on the "
                              "held-out set (needs initial.test_fraction > 0).",
                              choices=("sample", "test")),
                "force_target": Key("float", None,
                                    "accuracy rule: a force error at or below this is good "
                                    "enough whatever the trend; null = the trend decides.",
                                    nullable=True, low=0, low_open=True, unit="eV/Å"),
                "window": Key("int", 2,
                              "accuracy rule: how many of the stage's earlier measured "
                              "iterations the error is compared with (their best).", low=1),
                "min_improvement": Key("float", 0.05,
                                       "accuracy rule: the error is still falling while it "
                                       "is more than this fraction below the best of the "
                                       "window (the error sample's mean scatters by a few "
                                       "% between iterations).", low=0, high=1),
            },
        ),
        "validation": Section(
            "After the last stage: the final potential on a larger cell (e.g. 3x3x3 = 108 "
            "atoms), MD at the last stage's temperatures and pressures, its gamma "
            "statistics and, with the labeler, its errors on a random sample of the MD: "
            "the evidence that small cells were enough (validation/, `make validate`).",
            {
                "cell": Key("list[int]", None, "The larger cell (repetitions of the cubic "
                            "cell); null = no validation.", nullable=True, length=3, low=1),
                "temperatures": Key("values", None, "null = the last stage's.",
                                    nullable=True, low=0, low_open=True, min_length=1,
                                    unit="K"),
                "pressures": Key("values", None, "null = the last stage's.", nullable=True,
                                 min_length=1, unit="bar"),
                "steps": Key("int", 500, "MD steps per run.", low=1),
                "sample": Key("int", 20, "Configurations drawn at random from the MD "
                              "(0.1 < gamma < 10) and labeled to measure the potential's "
                              "errors; 0 = gamma statistics only.", low=0),
                "every_stage": Key("bool", True, "Per-stage validation: also validate the "
                                   "potential that ends each stage but the last (the final "
                                   "validation measures that one), in iter/<i>/validate/, so "
                                   "the large-cell error is seen falling stage by stage."),
                "every": Key("int", None, "Also validate every this many iterations "
                             "(iterations i with i % every == 0); null = stage ends only.",
                             nullable=True, low=1),
                "stage_steps": Key("int", None, "MD steps per run of a per-stage "
                                   "validation; null = steps.", nullable=True, low=1),
                "stage_sample": Key("int", 10, "Configurations of each per-stage "
                                    "validation's own MD labeled to measure its errors.",
                                    low=0),
                "test_set": Key("int", 20, "The fixed large-cell test set: drawn once, from "
                                "the first per-stage validation's MD, labeled once, and "
                                "every later validation (the final one included) is measured "
                                "on it, so stages are compared on the same configurations; "
                                "0 = none.", low=0),
            },
        ),
        "stages": Seq(
            "The small-cell protocol (the report's Algorithm 3): active learning on one "
            "cell after another, e.g. 1x1x1, 1x1x2, 2x2x2, the data set and the potential "
            "carried forward. A stage ends when it converges (run.converged_iterations) "
            "or reaches its max_iterations; the next iteration then starts the next stage. "
            "Every key of a stage is optional and defaults to the top-level setting named "
            "beside it. An empty list: one stage, the top-level settings.",
            Section("One stage of the protocol.", {
                "name": Key("str", None, "Shown by status and the report; null = the cell, "
                            "e.g. '1x1x2'.", nullable=True),
                "cell": Key("list[int]", None, "structure.cell of this stage.",
                            nullable=True, length=3, low=1),
                "lattice": Key("str", None, "structure.lattice.", nullable=True,
                               choices=("fcc", "bcc")),
                "a": Key("float", None, "structure.a.", nullable=True, low=0, low_open=True,
                         unit="Å"),
                "displacement": Key("float", None, "structure.displacement.", nullable=True,
                                    low=0, unit="Å"),
                "temperatures": Key("values", None, "grid.temperatures (list or range).",
                                    nullable=True, low=0, low_open=True, min_length=1,
                                    unit="K"),
                "pressures": Key("values", None, "grid.pressures (list or range).",
                                 nullable=True, min_length=1, unit="bar"),
                "seeds_per_point": Key("int", None, "grid.seeds_per_point.", nullable=True,
                                       low=1),
                "draws": Key("int", None, "grid.draws (random (T, P) points).",
                             nullable=True, low=0),
                "md_steps": Key("int", None, "md.steps: MD length of this stage.",
                                nullable=True, low=1),
                "policy": Key("str", None, "select.policy.", nullable=True,
                              choices=("threshold", "dopt", "dopt_batch")),
                "max_selected": Key("int", None, "select.max_selected.", nullable=True,
                                    low=1),
                "max_iterations": Key("int", None,
                                      "Iteration cap of the stage: it ends after this many "
                                      "explore iterations even if not converged (iteration "
                                      "0, the initial fit, does not count; null: no cap).",
                                      nullable=True, low=1),
            }),
        ),
        "stage": Key("int", 0, "Set by smallcell in each iteration's frozen config.yaml: "
                     "the index of the `stages` entry the iteration runs. Leave it out of "
                     "your config.", low=0),
    },
)


def defaults(section: Section = SCHEMA) -> dict[str, Any]:
    """The configuration with every key at its default."""
    return {
        name: defaults(spec) if isinstance(spec, Section) else
        [] if isinstance(spec, Seq) else copy.deepcopy(spec.default)
        for name, spec in section.keys.items()
    }


# libyaml's parser when PyYAML was built with it: every label task loads its iteration's
# frozen config, and the pure-Python parser made that 80 % of a 4-atom task's time.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):  # type: ignore[valid-type,misc]
    """YAML with two fixes for configs: numbers like 1e-3 are numbers (YAML 1.2; PyYAML's
    1.1 resolver reads them as strings), and a key given twice is an error instead of the
    last one silently winning."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (lines {seen[key]} and {line})",
                    key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _Lines:
    """Line numbers of every key path in the YAML text, for error messages."""

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[str, ...], int] = {}
        try:
            node = yaml.compose(text, Loader=_SafeLoader)
        except yaml.YAMLError:
            return
        if node is not None:  # the top level itself (e.g. "must be a mapping")
            self.lines[()] = node.start_mark.line + 1
        self._walk(node, ())

    def _walk(self, node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = (*path, str(key.value))
                self.lines[sub] = key.start_mark.line + 1
                self._walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):  # list items: path element "[k]"
            for k, item in enumerate(node.value):
                sub = (*path, f"[{k}]")
                self.lines[sub] = item.start_mark.line + 1
                self._walk(item, sub)

    def get(self, path: tuple[str, ...]) -> int | None:
        """The line of `path`, else of the nearest enclosing key the file has; None for a
        key whose whole section the file leaves out (a default: no line to point to)."""
        while path and path not in self.lines:
            path = path[:-1]
            if not path:
                return None
        return self.lines.get(path)


@dataclass
class Config:
    """A validated configuration: `data` holds every key, `source` the file it came from."""

    data: dict[str, Any]
    source: Path | None = None
    lines: _Lines | None = field(default=None, repr=False, compare=False)
    name: str | None = field(default=None, repr=False, compare=False)  # source as given

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def problem(self, dotted: str, msg: str) -> str:
        """`msg` as the loader words a problem: "<file>:<line of dotted>: msg"."""
        line = self.lines.get(tuple(dotted.split("."))) if self.lines else None
        name = self.name or self.source or "<config>"
        return f"{name}{':' + str(line) if line else ''}: {msg}"

    def given(self, dotted: str) -> bool:
        """Whether the config file sets `dotted` (a default otherwise)."""
        return bool(self.lines) and tuple(dotted.split(".")) in self.lines.lines

    def get(self, dotted: str) -> Any:
        value: Any = self.data
        for part in dotted.split("."):
            value = value[part]
        return value

    @property
    def gamma_max(self) -> float:
        g = self.data["select"]["gamma_max"]
        return float(self.data["extrapolation"]["gamma_break"] if g is None else g)

    def resolve(self, value: str | None) -> Path | None:
        """A path from the config, relative to the config file's folder."""
        if value is None:
            return None
        base = self.source.parent if self.source else Path.cwd()
        return (base / os.path.expanduser(value)).resolve()

    def dump(self) -> str:
        """YAML text of the effective configuration (frozen into each iteration), with
        paths made absolute so that the frozen copy means the same wherever it lies."""
        data = copy.deepcopy(self.data)

        def absolute(section: Section, values: dict[str, Any]) -> None:
            for name, spec in section.keys.items():
                if isinstance(spec, Section):
                    absolute(spec, values[name])
                elif isinstance(spec, Seq):
                    for item in values[name]:
                        absolute(spec.item, item)
                elif spec.kind == "path" and values[name] is not None:
                    values[name] = str(self.resolve(values[name]))
                elif spec.kind == "list[path]":
                    values[name] = [str(self.resolve(v)) for v in values[name]]

        absolute(SCHEMA, data)
        header = f"{SOURCE_HEADER}{self.source})\n" if self.source else ""
        return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _type_name(kind: str) -> str:
    return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true/false",
            "path": "a path (string)", "list[float]": "a list of numbers",
            "list[int]": "a list of integers", "list[str]": "a list of strings",
            "list[path]": "a list of paths (strings)",
            "command": "a command (string or list of words)",
            "mapping": "a mapping of keys to values",
            "values": "a list of numbers or a range {start, stop, step}"}[kind]


def _check_scalar(kind: str, spec: Key, value: Any, where: str) -> Any:
    base = "float" if kind == "values" else kind.removeprefix("list[").removesuffix("]")
    if base == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
    elif base == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{where} must be finite, got {value!r}")
    elif base in ("str", "path"):
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        if spec.choices and value not in spec.choices:
            hint = difflib.get_close_matches(value, spec.choices, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(f"{where} must be one of {', '.join(spec.choices)}; "
                             f"got {value!r}{extra}")
        if base == "str" and ("\n" in value or "\x00" in value):
            raise ValueError(f"{where} must be one line")
        return value
    if spec.low is not None and (value < spec.low or (spec.low_open and value == spec.low)):
        op = ">" if spec.low_open else ">="
        raise ValueError(f"{where} must be {op} {spec.low:g}{' ' + spec.unit if spec.unit else ''}"
                         f", got {value!r}")
    if spec.high is not None and value > spec.high:
        raise ValueError(f"{where} must be <= {spec.high:g}, got {value!r}")
    return value


def _check_command(value: Any, where: str) -> list[str]:
    """A command as argv: a string is split like a shell would (quotes respected) but is
    never given to a shell, so `;`, `$()` or spaces in a path cannot run anything."""
    if isinstance(value, str):
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"{where}: cannot split {value!r} into words ({exc})") from None
    elif isinstance(value, list) and all(isinstance(w, str) for w in value):
        words = list(value)
    else:
        raise ValueError(f"{where} must be a command (string or list of words), got {value!r}")
    if not words or any(not w or "\n" in w or "\x00" in w for w in words):
        raise ValueError(f"{where} must be a non-empty command of one-line words")
    return words


def _expand_range(value: dict[str, Any], where: str) -> list[float]:
    """{start, stop, step} -> [start, start + step, ..., stop] (stop included when the steps
    reach it within rounding)."""
    if set(value) != {"start", "stop", "step"}:
        raise ValueError(f"{where} as a range needs exactly the keys start, stop, step; got "
                         f"{', '.join(map(str, value)) or 'none'}")
    nums = {}
    for k in ("start", "stop", "step"):
        v = value[k]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{where}.{k} must be a number, got {v!r}")
        nums[k] = float(v)
    start, stop, step = nums["start"], nums["stop"], nums["step"]
    if step <= 0 or stop < start:
        raise ValueError(f"{where}: a range needs step > 0 and stop >= start, got start "
                         f"{start:g}, stop {stop:g}, step {step:g}")
    n = math.floor((stop - start) / step + 1e-9) + 1
    if n > 10_000:
        raise ValueError(f"{where}: the range has {n} values; at most 10000")
    return [round(start + k * step, 10) for k in range(n)]


def _check_key(spec: Key, value: Any, where: str) -> Any:
    if value is None:
        if spec.nullable:
            return None
        raise ValueError(f"{where} must be {_type_name(spec.kind)}, got null")
    if spec.kind == "command":
        return _check_command(value, where)
    if spec.kind == "mapping":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"{where} must be a mapping of names to values, got {value!r}")
        for k, v in value.items():
            if not (v is None or isinstance(v, bool | int | float | str)):
                raise ValueError(f"{where}.{k} must be a number, string, true/false or null")
            if isinstance(v, str) and ("\n" in v or "\x00" in v):
                raise ValueError(f"{where}.{k} must be one line")
        return dict(value)
    if spec.kind == "values" and isinstance(value, dict):
        value = _expand_range(value, where)
    if spec.kind.startswith("list[") or spec.kind == "values":
        if not isinstance(value, list):
            raise ValueError(f"{where} must be {_type_name(spec.kind)}, got {value!r}")
        if spec.length is not None and len(value) != spec.length:
            raise ValueError(f"{where} must have exactly {spec.length} items, got {len(value)}")
        if len(value) < spec.min_length:
            raise ValueError(f"{where} must have at least {spec.min_length} item(s)")
        return [_check_scalar(spec.kind, spec, v, f"{where}[{i}]") for i, v in enumerate(value)]
    return _check_scalar(spec.kind, spec, value, where)


def _dotted(path: tuple[str, ...]) -> str:
    """A key path as written in messages: stages[1].cell."""
    return "".join(p if p.startswith("[") or not k else "." + p for k, p in enumerate(path))


class _Report:
    """Collects every problem of a config instead of stopping at the first: each message
    is "<file>:<line>: <key and what was expected>". A cross-check that involves a key the
    schema already refused is left out: it would only repeat that problem with a default."""

    def __init__(self, lines: _Lines, source: str) -> None:
        self.lines, self.source = lines, source
        self.messages: list[str] = []
        self.refused: list[str] = []  # dotted keys the schema refused

    def at(self, path: tuple[str, ...], msg: str) -> str:
        line = self.lines.get(path)
        return f"{self.source}{':' + str(line) if line else ''}: {msg}"

    def schema(self, path: tuple[str, ...], msg: str) -> None:
        self.messages.append(self.at(path, msg))
        self.refused.append(_dotted(path) or "the top level")

    def cross(self, dotted: str, msg: str) -> None:
        if any(dotted.startswith(k) or k in msg for k in self.refused):
            return
        self.messages.append(self.at(tuple(dotted.split(".")), msg))


def _merge(section: Section, user: Any, path: tuple[str, ...], report: _Report) -> dict[str, Any]:
    """The section's values: the user's where valid, else the defaults (every invalid key
    is reported)."""
    where = _dotted(path) or "the top level"
    out = defaults(section)
    if user is None:
        user = {}
    if not isinstance(user, dict):
        report.schema(path, f"{where} must be a mapping of keys, got {user!r}")
        return out
    for name, value in user.items():
        sub = (*path, str(name))
        dotted = _dotted(sub)
        spec = section.keys.get(str(name))
        if spec is None:
            hint = difflib.get_close_matches(str(name), list(section.keys), n=1)
            extra = f"; did you mean {_dotted((*path, hint[0]))!r}?" if hint else ""
            known = ", ".join(section.keys)
            report.schema(sub, f"unknown key {dotted!r}{extra} (known here: {known})")
        elif isinstance(spec, Section):
            out[name] = _merge(spec, value, sub, report)
        elif isinstance(spec, Seq):
            if value is None:
                value = []
            if not isinstance(value, list):
                report.schema(sub, f"{dotted} must be a list of mappings, got {value!r}")
                continue
            out[name] = [_merge(spec.item, v, (*sub, f"[{k}]"), report)
                         for k, v in enumerate(value)]
        else:
            try:
                out[name] = _check_key(spec, value, dotted)
            except ValueError as exc:
                report.schema(sub, str(exc))
    return out


def _cross_checks(cfg: Config, report: _Report) -> None:
    """Rules between keys and what the files named must be; every broken one reported."""
    fail = report.cross

    ex = cfg["extrapolation"]
    if ex["gamma_break"] <= ex["gamma_save"]:
        fail("extrapolation.gamma_break",
             f"extrapolation.gamma_break ({ex['gamma_break']:g}) must be greater than "
             f"extrapolation.gamma_save ({ex['gamma_save']:g})")
    sm = cfg["sample"]
    if sm["gamma_max"] <= sm["gamma_min"]:
        fail("sample.gamma_max", f"sample.gamma_max ({sm['gamma_max']:g}) must be "
             f"greater than sample.gamma_min ({sm['gamma_min']:g})")
    if cfg.gamma_max <= ex["gamma_save"]:
        fail("select.gamma_max", "select.gamma_max must be greater than "
             "extrapolation.gamma_save")
    masses = cfg["masses"]
    if masses is not None and len(masses) != len(cfg["species"]):
        fail("masses", f"masses has {len(masses)} values but species has "
             f"{len(cfg['species'])}")
    from ase.data import atomic_numbers  # lazy: keeps `status` free of ase

    for i, sym in enumerate(cfg["species"]):
        if sym not in atomic_numbers:
            fail("species", f"species[{i}] = {sym!r} is not a chemical symbol")
    if len(set(cfg["species"])) != len(cfg["species"]):
        fail("species", "species lists a symbol twice")
    for k, st in enumerate(cfg["stages"]):
        if cfg["engines"]["trainer"] == "mlip3" and st["policy"] == "dopt_batch":
            fail(f"stages.[{k}].policy", f"stages[{k}].policy dopt_batch needs the "
                 "embedded grader (engines.trainer: motep)")
    stop = cfg["stop"]
    if stop["rule"] == "accuracy" and stop["metric"] == "sample" and not cfg["sample"]["size"]:
        fail("stop.metric", "stop.rule accuracy with stop.metric sample needs an error "
             "sample: set sample.size > 0 (or stop.metric: test with "
             "initial.test_fraction > 0)")
    if stop["rule"] == "accuracy" and stop["metric"] == "test" \
            and not cfg["initial"]["test_fraction"]:
        fail("stop.metric", "stop.rule accuracy with stop.metric test needs a held-out "
             "set: set initial.test_fraction > 0 (or stop.metric: sample)")
    _engine_checks(cfg, fail)
    _slurm_checks(cfg, fail)
    if cfg["engines"]["labeler"] == "eam" and cfg["species"] != ["Pb"]:
        fail("engines.labeler", "the eam labeler knows only Pb; set species: [Pb]")
    dm = cfg["deepmd"]
    if dm["rcut_smth"] >= dm["rcut"]:
        fail("deepmd.rcut_smth", f"deepmd.rcut_smth ({dm['rcut_smth']:g}) must be smaller "
             f"than deepmd.rcut ({dm['rcut']:g})")
    if dm["stop_lr"] > dm["start_lr"]:
        fail("deepmd.stop_lr", f"deepmd.stop_lr ({dm['stop_lr']:g}) must not exceed "
             f"deepmd.start_lr ({dm['start_lr']:g})")
    if dm["decay_steps"] is not None and dm["decay_steps"] > dm["steps"]:
        fail("deepmd.decay_steps", f"deepmd.decay_steps ({dm['decay_steps']}) must not "
             f"exceed deepmd.steps ({dm['steps']}): the learning rate would never decay")
    if cfg["trainer"]["min_dist"] >= cfg["trainer"]["max_dist"]:
        fail("trainer.min_dist", "trainer.min_dist must be smaller than trainer.max_dist")
    init = cfg["initial"]
    if init["source"] == "import":
        if not init["paths"]:
            fail("initial.source", "initial.source is 'import': list the data sets in "
                 "initial.paths")
        for k, entry in enumerate(init["paths"]):
            where = cfg.resolve(entry)
            if where is None or not where.exists():
                fail("initial.paths", f"initial.paths[{k}]: no such file or folder: {where}")
    elif init["source"] != "generate":
        path = cfg.resolve(init["path"])
        want_dir = init["source"] == "outcar"
        if path is None:
            fail("initial.source", f"initial.source is {init['source']!r}: set "
                 "initial.path to the file or folder to import")
        elif not (path.is_dir() if want_dir else path.is_file()):
            kind = "folder" if want_dir else "file"
            fail("initial.path", f"initial.path: no such {kind}: {path}")


_SLURM_TIME = re.compile(r"^(?:(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?|(\d+)(?::(\d+)(?::(\d+))?)?)$")
SLURM_STAGES = ("explore", "select", "label", "train", "pilot")


def slurm_seconds(value: str) -> int:
    """Seconds of a Slurm time limit (sbatch --time formats), rounded up to whole minutes
    as Slurm does; ValueError when `value` is not one of the formats."""
    m = _SLURM_TIME.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a Slurm time (minutes, MM:SS, HH:MM:SS, D-HH, "
                         "D-HH:MM or D-HH:MM:SS)")
    d, dh, dm, ds, a, b, c = m.groups()
    if d is not None:
        secs = int(d) * 86400 + int(dh) * 3600 + int(dm or 0) * 60 + int(ds or 0)
    elif c is not None:  # HH:MM:SS
        secs = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        secs = int(a) * 60 + int(b)
    else:  # minutes
        secs = int(a) * 60
    if secs <= 0:
        raise ValueError(f"{value!r}: a time limit must be positive")
    return -(-secs // 60) * 60


def _slurm_checks(cfg: Config, fail: Any) -> None:
    """#SBATCH values are read by sbatch, not by a shell, and split at whitespace: refuse
    what cannot be written there, and time limits that leave no time for the margin."""
    sl = cfg["slurm"]
    for name in ("partition", "account", "qos"):
        _sbatch_word(sl[name], f"slurm.{name}", fail)
    for k, opt in enumerate(sl["extra"]):
        _sbatch_option(opt, f"slurm.extra[{k}]", fail)
    for stage in SLURM_STAGES:
        st = sl[stage]
        for name in ("partition", "account", "qos", "mem", "time"):
            _sbatch_word(st[name], f"slurm.{stage}.{name}", fail)
        for k, opt in enumerate(st["extra"]):
            _sbatch_option(opt, f"slurm.{stage}.extra[{k}]", fail)
        try:
            secs = slurm_seconds(st["time"])
        except ValueError as exc:
            fail(f"slurm.{stage}.time", f"slurm.{stage}.time: {exc}")
            continue
        if stage in ("explore", "label", "pilot") and secs <= sl["walltime_margin"]:
            fail("slurm.walltime_margin",
                 f"slurm.walltime_margin ({sl['walltime_margin']:g} s) must be shorter "
                 f"than slurm.{stage}.time ({st['time']} = {secs} s): its jobs would "
                 "stop before doing anything")


def _sbatch_word(value: str | None, where: str, fail: Any) -> bool:
    if value is not None and (not value or any(c.isspace() for c in value)):
        fail(where, f"{where} must be one word without spaces, got {value!r}")
        return False
    return True


def _sbatch_option(value: str, where: str, fail: Any) -> None:
    if _sbatch_word(value, where, fail) and not value.startswith("-"):
        fail(where, f"{where} must be an sbatch option such as --gres=gpu:1, got {value!r}")


# the stages (SLURM jobs) in which each engine section's programs run
ENGINE_STAGES = {"vasp": ("label",), "gpaw": ("label",), "lammps": ("explore",),
                 "mlip3": ("select", "train")}


def job_setups(cfg: Config, section: str) -> list[list[tuple[str, str]]]:
    """The shell lines that run before `section`'s programs, once per kind of job that runs
    them, each with its key (e.g. ("vasp.setup[0]", "module load vasp")): with
    engines.scheduler slurm, slurm.setup and slurm.<stage>.setup (the job script) first;
    then the section's own setup lines (the task's shell)."""
    own = [(f"{section}.setup[{k}]", x) for k, x in enumerate(cfg[section].get("setup") or [])]
    if cfg["engines"]["scheduler"] != "slurm":
        return [own]
    sl = cfg["slurm"]
    first = [(f"slurm.setup[{k}]", x) for k, x in enumerate(sl["setup"])]
    return [[*first, *((f"slurm.{st}.setup[{k}]", x) for k, x in enumerate(sl[st]["setup"])),
             *own] for st in ENGINE_STAGES[section]]


def _program(cfg: Config, section: str, key: str, fail: Any) -> None:
    """Every program of a command (a launcher such as mpirun or srun and the program it
    starts, commands.parse_command) must exist, unless setup lines (module loads) run
    first: then `smallcell check-config` resolves them after those lines, in a subshell."""
    if any(job_setups(cfg, section)):
        return
    for prog in parse_command(cfg[section][key]).programs:
        if shutil.which(prog) is None and not Path(prog).is_file():
            fail(f"{section}.{key}", f"{section}.{key}: program {prog!r} not found on PATH "
                 f"(give its full path, or load its module in {section}.setup)")


def _engine_checks(cfg: Config, fail: Any) -> None:
    """What the production engines need, checked before anything runs."""
    eng = cfg["engines"]
    if (eng["explorer"] == "lammps") != (eng["trainer"] == "mlip3"):
        fail("engines.explorer", "engines.explorer lammps and engines.trainer mlip3 go "
             "together: LAMMPS runs MLIP-3 potentials (pot.almtp), the embedded "
             "explorer runs motep potentials")
    if eng["labeler"] == "vasp":
        v = cfg["vasp"]
        if (v["kspacing"] is None) == (v["kppra"] is None):
            fail("vasp.kspacing", "set exactly one of vasp.kspacing and vasp.kppra")
        lib = cfg.resolve(v["potcar_dir"])
        if lib is None or not lib.is_dir():
            fail("vasp.potcar_dir", f"vasp.potcar_dir: no such folder: {lib} (your "
                 "POTCAR library, <dir>/<name>/POTCAR)")
        else:
            for sym in cfg["species"]:
                potcar = lib / str(v["potcars"].get(sym, sym)) / "POTCAR"
                if not potcar.is_file():
                    fail("vasp.potcars", f"vasp.potcars: no POTCAR for {sym}: {potcar}")
        _program(cfg, "vasp", "command", fail)
    if eng["labeler"] == "gpaw":
        g = cfg["gpaw"]
        if (g["kspacing"] is None) == (g["kppra"] is None):
            fail("gpaw.kspacing", "set exactly one of gpaw.kspacing and gpaw.kppra")
        known = ("energy", "density", "eigenstates", "forces")  # GPAW's SCF criteria
        bad = sorted(set(g["convergence"]) - set(known))
        if bad:
            fail("gpaw.convergence", f"gpaw.convergence: unknown criterion {bad[0]!r} "
                 f"(known: {', '.join(known)})")
        if g["launcher"]:
            _program(cfg, "gpaw", "launcher", fail)
    if eng["trainer"] == "mlip3" and cfg["select"]["policy"] == "dopt_batch":
        fail("select.policy", "select.policy dopt_batch needs the embedded grader "
             "(engines.trainer motep): mlp select_add has no per-configuration mode; "
             "use dopt with MLIP-3")
    if eng["trainer"] == "mlip3":
        template = mlip3_template(cfg)
        if template is None:
            fail("mlip3.templates_dir", "engines.trainer mlip3 needs mlip3.templates_dir "
                 "(MLIP-3's MTP_templates folder) or mlip3.template, or an MLIP-3 built by "
                 "`make setup EXTRAS=mlip3`")
        elif not template.is_file():
            key = "mlip3.template" if cfg["mlip3"]["template"] else "mlip3.templates_dir"
            fail(key, f"{key}: MTP template not found: {template}")
        _program(cfg, "mlip3", "mlp", fail)
    if eng["explorer"] == "lammps":
        _program(cfg, "lammps", "command", fail)
        floor = cfg["lammps"]["grade_floor"]
        if floor is not None and floor >= cfg["extrapolation"]["gamma_save"]:
            fail("lammps.grade_floor", f"lammps.grade_floor ({floor:g}) must be below "
                 f"extrapolation.gamma_save ({cfg['extrapolation']['gamma_save']:g})")


def _installed_mlip3(cfg: Config) -> None:
    """engines.trainer mlip3 with mlip3.mlp not set, or neither mlip3.templates_dir nor
    mlip3.template: take them from the build of `make setup EXTRAS=mlip3`, if there is one
    (engines/mlip3_install.py; a leaf module). Filled in here, so the effective config
    frozen into each iteration names the mlp and the templates that ran."""
    m = cfg["mlip3"]
    want_mlp = not cfg.given("mlip3.mlp")
    want_templates = m["templates_dir"] is None and m["template"] is None
    if cfg["engines"]["trainer"] != "mlip3" or not (want_mlp or want_templates):
        return
    from smallcell.engines.mlip3_install import installed_mlip3

    build = installed_mlip3()
    if build is None:
        return
    if want_mlp:
        m["mlp"] = [str(build.mlp)]
    if want_templates and build.templates_dir is not None:
        m["templates_dir"] = str(build.templates_dir)


def mlip3_template(cfg: Config) -> Path | None:
    """The MTP template the MLIP-3 trainer starts from: mlip3.template, else
    <mlip3.templates_dir>/<trainer.level>.almtp; None when neither is set."""
    m = cfg["mlip3"]
    if m["template"] is not None:
        return cfg.resolve(m["template"])
    if m["templates_dir"] is not None:
        return cfg.resolve(m["templates_dir"]) / f"{cfg['trainer']['level']:02d}.almtp"
    return None


def load_config(path: str | os.PathLike | None, problems: list[str] | None = None) -> Config:
    """Load and validate a YAML config; `None` gives the defaults. Every problem found is
    reported in one SmallcellError, one "<file>:<line>: <key> ..." line each; with
    `problems` (a list) they are appended there instead and the config is returned with
    defaults in place of the refused values (`smallcell check-config`)."""
    if path is None:
        return Config(defaults())
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SmallcellError(f"{path}: config file not found") from None
    return parse_config(text, path, problems)


SOURCE_HEADER = "# effective configuration (from "  # Config.dump's first line


def dumped_source(path: Path) -> Path | None:
    """The config file a dumped config (an iteration's frozen copy, the run's record) was
    made from, as its first line names it; None without that line."""
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    return Path(first[len(SOURCE_HEADER):-1]) \
        if first.startswith(SOURCE_HEADER) and first.endswith(")") else None


def parse_config(text: str, source: Path | None = None,
                 problems: list[str] | None = None) -> Config:
    """Validate YAML text against the schema (see `load_config`). Text that is not YAML
    always raises: there is nothing to check then."""
    name = str(source) if source else "<config>"
    try:
        user = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{name}:{mark.line + 1}" if mark else name
        problem = getattr(exc, "problem", None) or str(exc)
        raise SmallcellError(f"{where}: not valid YAML: {problem}") from None
    lines = _Lines(text)
    report = _Report(lines, name)
    cfg = Config(_merge(SCHEMA, user, (), report), source.resolve() if source else None,
                 lines, name)
    _installed_mlip3(cfg)
    _cross_checks(cfg, report)
    if problems is not None:
        problems.extend(report.messages)
    elif report.messages:
        raise SmallcellError("\n".join(report.messages))
    return cfg


PLACEHOLDER = "FILL IN"


def placeholders(text: str, source: str) -> list[str]:
    """The lines of a config that still carry the examples' FILL IN marker, as problems
    naming the line and the key: the marker stands for "replace this example value with
    yours", so a line keeping it has not been filled in, even when its value happens to
    parse. Whole-line comments (instructions, a commented-out section) are not config."""
    lines = _Lines(text)
    keys: dict[int, tuple[str, ...]] = {}
    for path, n in lines.lines.items():
        if path and (n not in keys or len(path) < len(keys[n])):
            keys[n] = path  # the outermost key of a line
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        if PLACEHOLDER not in raw or raw.lstrip().startswith("#"):
            continue
        before = [k for k in keys if k <= n]
        key = _dotted(keys[max(before)]) if before else "the top level"
        out.append(f"{source}:{n}: {key}: still marked {PLACEHOLDER}: put your value on "
                   f"this line and delete the marker")
    return out


NOTES = """
## Choice of ensemble (`md.ensemble`)

Measured on the default problem (fcc Pb 1x1x1, 4 atoms, 1000 steps of 2 fs, 200-400 K,
1 bar, iteration 3 of the default run, 6 runs): with `npt` (ASE `LangevinBAOAB`,
isotropic barostat, tau_T 100 fs, tau_P 1000 fs) every run stayed stable, the volume
fluctuated by about +-5 % around 123 Å^3 (121.3 Å^3 at a = 4.95 Å) and the mean pressure
was within the +-3 kbar fluctuations of a 4-atom cell; the loop converged at iteration 3.
With `nvt` (Langevin at the fixed lattice parameter) the runs were also stable but sat at
+4 to +9 kbar of thermal pressure, because the cell cannot expand, and the loop converged
after one iteration having seen a single volume. `npt` explores the volumes the report's
NPT runs explore, so it is the default. ASE's `NPT` (Melchionna) integrator was not
offered: on a 4-atom cell it is the troublesome one.

## What gamma means for the embedded grader

gamma is MLIP-3's MaxVol extrapolation grade (Podryabinkin & Shapeev 2017): each
configuration (cfg mode) or atomic neighbourhood (nbh mode, the default) gives a row
b = dE/dtheta of derivatives of the (site) energy with respect to all fitted coefficients
(species, moment and radial coefficients); the active set A is the n x n submatrix of
training rows of maximal volume, and gamma = max_j |(b A^-1)_j|. gamma <= 1 interpolates.
The embedded grader (`python/smallcell/engines/maxvol.py`) computes this from motep's
derivatives instead of motep's own MaxVol grades, which differ from MLIP-3's. The
coefficients are parameterized as in MLIP-3, so gamma_save 2.1 and gamma_break 10 keep
their meaning, but numbers are not identical to MLIP-3's for the same potential: MLIP-3
weights rows differently in its fit-time active set. Directions of coefficient space that
no training row covers are padded with a tiny row, so a configuration that moves along
them grades as strongly extrapolative, as with MLIP-3's incompletely filled active set.

## Recording every grade (`lammps.grade_floor`)

The study needs the grade of every query, not only those above gamma_save, and smallcell
does not need a patched MLIP-3 for it. The embedded explorer counts every grade it
computes, at no extra cost. MLIP-3's `pair_style mlip` only reports what it saves, so
with `lammps.grade_floor: 0.1` (what the report did) in.lammps sets threshold_save to 0.1:
MLIP-3 then appends (nearly) every configuration it grades to preselected.cfg, the
explorer computes the statistics over all of them, keeps those above the real gamma_save
in `preselected.cfg` and a uniform sample of all of them (`sample.*`) in `queried.cfg`
for the error study; MLIP-3's file is deleted once read. Cost, measured
with the interface's file layout: about 0.6 kB per MD step for a 4-atom cell and 2.9 kB
for 32 atoms (0.6 MB and 2.9 MB per 1000 steps; a 100,000-step run of 32 atoms writes
~290 MB), plus ~0.5 s per 1000 steps to split the file afterwards, and MLIP-3's own
formatting and appending of one configuration per force call. With `grade_floor: null`
MLIP-3's own threshold_save applies and gamma.json says `"grades": "saved_only"`.
The sampler's `log` option was not used: its output could not be verified here.

## The embedded MTP

Untrained templates are generated by smallcell (`engines/mtp_basis.py`): every
contraction of at most four moment tensors with level <= `trainer.level`. For levels 6 to
16 the basis spans exactly the functions of MLIP-3's `MTP_templates/<level>.almtp`
(tested against the real files); levels 6 and 8 are identical entry for entry.
"""


def reference_markdown() -> str:
    """The config reference (docs/config.md), generated from `SCHEMA`."""
    out = ["# Configuration reference", "",
           "Generated from `python/smallcell/config.py` by `bin/smallcell config-doc`; "
           "do not edit by hand.", "", SCHEMA.doc, ""]

    def fmt_default(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False)

    def walk(section: Section, path: tuple[str, ...]) -> None:
        rows = []
        for name, spec in section.keys.items():
            if isinstance(spec, Key):
                dotted = ".".join((*path, name))
                rng = ""
                if spec.choices:
                    rng = " \\| ".join(spec.choices)
                elif spec.low is not None or spec.high is not None:
                    op = ">" if spec.low_open else ">="
                    lo = "" if spec.low is None else f"{op} {spec.low:g}"
                    hi = "" if spec.high is None else f"<= {spec.high:g}"
                    rng = ", ".join(x for x in (lo, hi) if x)
                unit = f" ({spec.unit})" if spec.unit else ""
                rows.append(f"| `{dotted}` | {spec.kind} | `{fmt_default(spec.default)}` | "
                            f"{rng} | {spec.doc}{unit} |")
        if rows:
            head = [f"## `{'.'.join(path)}`", "", section.doc, ""] if path else []
            out.extend([*head,
                        "| key | type | default | allowed | meaning |",
                        "|---|---|---|---|---|", *rows, ""])
        for name, spec in section.keys.items():
            if isinstance(spec, Section):
                walk(spec, (*path, name))
            elif isinstance(spec, Seq):
                walk(Section(f"`{name}` is a list (default empty). {spec.doc} Each entry "
                             "takes these keys:", spec.item.keys), (*path, f"{name}[k]"))

    walk(SCHEMA, ())
    return "\n".join(out) + NOTES
