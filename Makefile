# smallcell: `make help` lists the targets. Targets that need Python depend on the venv
# stamp, so any of them sets the environment up on a fresh machine.
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    := .venv
STAMP   := $(VENV)/.installed
DEEPMD_VENV  := .venv-deepmd
DEEPMD_STAMP := $(DEEPMD_VENV)/.installed
CONFIG  ?=
CHANGE_CONFIG ?=
N       ?=
I       ?=
FORCE   ?=
LEVELS  ?= 6 8 10 12
DATA    ?=
TEST    ?=
SWEEP   ?= sweep
MTP_ONLY ?=
RUN_DIR ?= $(or $(SMALLCELL_RUN_DIR),.)
EXTRAS  ?=
MLIP3_SOURCE ?=
MLIP3_PREFIX ?=
MLIP3_CACHE  ?=
MPI     ?=
# MPI=0/1 for EXTRAS=mlip3 from the command line only: some clusters' modules export MPI
MLIP3_MPI := $(if $(filter environment%,$(origin MPI)),,$(MPI))
GPAW    ?= $(SMALLCELL_INSTALL_GPAW)
DEEPMD  ?= $(SMALLCELL_INSTALL_DEEPMD)
SLURM   ?= $(SMALLCELL_INSTALL_SLURM)
SC      := bin/smallcell --run-dir $(RUN_DIR)
# a run remembers its config: CONFIG= only to start one (or with CHANGE_CONFIG=1 to change it)
RUNCFG  = $(if $(CONFIG),--config $(CONFIG)) $(if $(CHANGE_CONFIG),--change-config)

.DEFAULT_GOAL := help
.PHONY: help setup iter submit pilot cancel retry status test lint clean-iter config-doc bench \
        bench-labels bench-anomaly bench-mlip3 bench-cells bench-dft-cost sweep compare report export validate

help:  ## list every target with one line each
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.txt
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || bin/install-debian-packages python3-venv
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# DeePMD-kit in its own venv (TensorFlow, ~1.9 GB): smallcell runs its programs, never imports it
$(DEEPMD_STAMP): requirements-deepmd.txt
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || bin/install-debian-packages python3-venv
	$(PYTHON) -m venv $(DEEPMD_VENV)
	$(DEEPMD_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-deepmd.txt
	touch $@

setup: $(STAMP)  ## create .venv (idempotent); EXTRAS=gpaw adds GPAW (Debian's gpaw, gpaw-data); EXTRAS=mlip3 builds MLIP-3's mlp into .mlip3/ (MLIP3_SOURCE=, MLIP3_PREFIX=, MLIP3_CACHE=, MPI=0/1); EXTRAS=deepmd creates .venv-deepmd/ (DeePMD-kit, for comparisons)
	$(if $(filter gpaw,$(EXTRAS)),bin/install-debian-packages gpaw gpaw-data)
	$(if $(filter deepmd,$(EXTRAS)),$(MAKE) --no-print-directory $(DEEPMD_STAMP))
	$(if $(filter mlip3,$(EXTRAS)),$(PYTHON) bin/build-mlip3 --install-packages --record .mlip3-prefix \
	    $(if $(MLIP3_SOURCE),--source "$(MLIP3_SOURCE)") $(if $(MLIP3_PREFIX),--prefix "$(MLIP3_PREFIX)") \
	    $(if $(MLIP3_CACHE),--cache "$(MLIP3_CACHE)") $(if $(MLIP3_MPI),--mpi "$(MLIP3_MPI)"))

iter: $(STAMP)  ## run iterations 0..N locally, resuming RUN_DIR/iter/ with its own config (CONFIG= starts a run)
	$(SC) iter $(if $(N),--upto $(N)) $(RUNCFG)

submit: $(STAMP)  ## submit iterations 0..N of CONFIG to SLURM as chained job arrays and return
	$(SC) submit $(if $(N),--upto $(N)) $(RUNCFG)

pilot: $(STAMP)  ## submit one SLURM job running the whole loop, resubmitting itself
	$(SC) pilot $(if $(N),--upto $(N)) $(RUNCFG)

cancel: $(STAMP)  ## cancel this run's SLURM jobs (finished tasks are kept)
	$(SC) cancel

retry: $(STAMP)  ## re-run iteration I's failed tasks, locally or on SLURM (earlier attempts kept in attempts/)
	$(SC) retry $(if $(I),--iter $(I)) $(if $(CONFIG),--config $(CONFIG))

status: $(STAMP)  ## one line per iteration: stage, tasks, gamma, errors (and SLURM jobs)
	@$(SC) status

clean-iter: $(STAMP)  ## remove iteration I and later (asks first; FORCE=1 to skip)
	@test -n "$(I)" || { echo "usage: make clean-iter I=<iteration> [FORCE=1]"; exit 2; }
	$(SC) clean-iter $(I) $(if $(FORCE),--force)

test: MLIP3_TOOLS := gcc g++ gfortran make libopenmpi-dev openmpi-bin
test: $(STAMP)  ## run the test suite, then count the skipped tests by reason; GPAW=1 / SLURM=1 / MLIP3=1 / DEEPMD=1 install those programs (asks on a terminal)
	@bin/install-test-deepmd "$(DEEPMD)" "$(DEEPMD_STAMP)"
	@bin/install-test-packages "GPAW (~568 MB), for the real-DFT tests," "$(GPAW)" "make test GPAW=1" gpaw gpaw-data
	@bin/install-test-packages "Slurm, for the local-cluster tests," "$(SLURM)" "make test SLURM=1" slurmctld slurmd slurm-client munge
	@bin/install-test-packages "MLIP-3's compilers and Open MPI, for the real-mlp tests," "$(or $(MLIP3),$(SMALLCELL_INSTALL_MLIP3))" "make test MLIP3=1" $(MLIP3_TOOLS)
	SMALLCELL_INSTALL_SLURM=$(SLURM) $(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

report: $(STAMP)  ## write RUN_DIR/report/index.html and report.md (figures, table, answers)
	$(SC) report

validate: $(STAMP)  ## the final potential on validation.cell: gamma and errors (validation/); I= validates iteration I's (iter/I/validate/)
	$(SC) validate $(if $(I),--iter $(I)) $(RUNCFG)

export: $(STAMP)  ## write RUN_DIR/export/{train,test,sample}.extxyz (data for other MLIPs)
	$(SC) export $(if $(I),--upto $(I))

sweep: $(STAMP)  ## train LEVELS on DATA (.cfg), test on TEST (.cfg files): SWEEP/sweep.md
	@test -n "$(DATA)" -a -n "$(TEST)" || { echo "usage: make sweep DATA=train.cfg TEST='a.cfg b.cfg' [LEVELS='6 8 10 12'] [SWEEP=sweep]"; exit 2; }
	$(SC) sweep --levels $(LEVELS) --data $(DATA) --test $(TEST) --out $(SWEEP) --config $(or $(CONFIG),config.yaml)

compare: $(STAMP)  ## MTP (run's level and +2) against a DeePMD committee on the run's final training set: RUN_DIR/compare/compare.md (MTP_ONLY=1: without DeePMD)
	$(SC) compare $(if $(CONFIG),--config $(CONFIG)) $(if $(MTP_ONLY),--mtp-only)

lint: $(STAMP)  ## ruff over the code, tests and benchmarks
	$(VENV)/bin/ruff check python tests bench

config-doc: $(STAMP)  ## regenerate docs/config.md from the schema
	$(SC) config-doc > docs/config.md

bench: $(STAMP)  ## run the benchmarks and rewrite their tables in BENCHMARKS.md
	$(VENV)/bin/python bench/run_all.py

bench-labels: $(STAMP)  ## selection policies to convergence: labels, errors, figures (~30 min)
	$(VENV)/bin/python bench/label_efficiency.py

bench-anomaly: $(STAMP)  ## the report's force-error anomaly: its protocol and one-factor variants, moving vs fixed test set (~30 min)
	$(VENV)/bin/python bench/anomaly.py

bench-mlip3: $(STAMP)  ## MLIP-3's mlp against motep: fit time and accuracy at levels 8 and 16 (needs make setup EXTRAS=mlip3; ~50 min)
	$(VENV)/bin/python bench/mlip3_fits.py

bench-cells: $(STAMP)  ## cell size: the small-cell protocol against direct 2x2x2 and 3x3x3 learning, large-cell error vs DFT cost (~45 min)
	$(VENV)/bin/python bench/cell_size.py

bench-dft-cost: $(STAMP)  ## GPAW single points of Pb (4-32 atoms) and the DFT cost model fitted to them (needs GPAW; ~1 h)
	$(VENV)/bin/python bench/dft_cost.py
