# sgnet-lightning: every long job is a make target over the `sgnet` command.
PYTHON ?= python3
SGNET ?= sgnet
DATASET ?= bml
DATA ?=
PHANTOM_N ?= 24
PHANTOM_SIZE ?= 64
CACHE ?= cache

.PHONY: install test test-fast demo phantoms benchmark benchmark-status stats report sweep sweep-status perf clean help

help:
	@echo "make install     install the package and its test dependencies"
	@echo "make demo        phantoms -> benchmark (5 architectures x 2 seeds, CPU) -> stats -> report"
	@echo "make test        the whole test suite"
	@echo "make benchmark DATASET=bml DATA=/path/to/data [LAUNCHER=local GPUS=0,1,2,3 | LAUNCHER=slurm]"
	@echo "                 full multi-seed comparison (GPU box or SLURM cluster; docs/cluster.md)"
	@echo "make benchmark-status DATASET=bml   every run: done / running / queued / failed, job and log"
	@echo "make sweep SPACE=sweeps/sgnet_gate.yaml STORAGE=postgresql://... [LAUNCHER=slurm WORKERS=8]"
	@echo "                 Optuna study; make sweep-status STUDY=... STORAGE=..."
	@echo "make perf        speed benchmark (seed way vs suite defaults) on this machine's device"

# `make demo` and `make test` set themselves up: torch (kept if present, e.g. a CUDA build),
# then the package with its test dependencies, once per change of pyproject.toml.
TORCH_SPEC ?= torch==2.13.0
INSTALLED := .make-installed

$(INSTALLED): pyproject.toml
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -e ".[dev]"
	touch $@

install: $(INSTALLED)

test: $(INSTALLED)
	$(PYTHON) -m pytest -q

test-fast: $(INSTALLED)
	$(PYTHON) -m pytest -q -m "not slow"

# Phantom data sets in the real layouts; the manifests in data_manifests/ were made from exactly these.
phantoms: data/phantom_bml/dataset_info.json data/phantom_brats2021/dataset_info.json data/phantom_brats2023/dataset_info.json

data/phantom_bml/dataset_info.json: $(INSTALLED)
	$(SGNET) data synth --kind bml --n $(PHANTOM_N) --size $(PHANTOM_SIZE) --seed 0 --out data/phantom_bml
data/phantom_brats2021/dataset_info.json:
	$(SGNET) data synth --kind brats2021 --n 12 --size $(PHANTOM_SIZE) --seed 0 --out data/phantom_brats2021
data/phantom_brats2023/dataset_info.json:
	$(SGNET) data synth --kind brats2023 --n 12 --size $(PHANTOM_SIZE) --seed 0 --out data/phantom_brats2023

demo: $(INSTALLED) data/phantom_bml/dataset_info.json
	$(SGNET) data check data_manifests/phantom_bml.csv
	$(SGNET) benchmark --config experiments/benchmarks/demo.yaml
	$(SGNET) stats --results runs/demo --reference unet --out runs/demo/stats
	$(SGNET) report --benchmark runs/demo --out runs/demo/report --reference unet
	@$(SGNET) summary runs/demo

# LAUNCHER: inline (one run after another here), local (GPUS=0,1,2,3, or WORKERS=N on a CPU-only
# machine) or slurm (one job array; --wait: make goes on to stats and report once it is done), or a
# launcher YAML; LAUNCHER_SET: space-separated key=value settings (experiments/launchers/*.yaml).
LAUNCHER ?= inline
GPUS ?=
WORKERS ?=
LAUNCHER_SET ?=
LAUNCH_ARGS = --launcher $(LAUNCHER) $(if $(GPUS),--gpus $(GPUS),) $(if $(WORKERS),--workers $(WORKERS),) \
	$(foreach setting,$(LAUNCHER_SET),--launcher-set $(setting)) --wait

benchmark:
	$(SGNET) benchmark --config experiments/benchmarks/$(DATASET).yaml $(if $(DATA),--data $(DATA),) $(LAUNCH_ARGS)
	$(SGNET) stats --results runs/$(DATASET) --reference unet --out runs/$(DATASET)/stats
	$(SGNET) report --benchmark runs/$(DATASET) --out runs/$(DATASET)/report

benchmark-status:
	$(SGNET) benchmark status --config experiments/benchmarks/$(DATASET).yaml $(if $(DATA),--data $(DATA),)

stats:
	$(SGNET) stats --results runs/$(DATASET) --reference unet --out runs/$(DATASET)/stats

report:
	$(SGNET) report --benchmark runs/$(DATASET) --out runs/$(DATASET)/report --check-browser

SPACE ?= sweeps/sgnet_gate.yaml
STUDY ?= $(basename $(notdir $(SPACE)))
STORAGE ?=
N_TRIALS ?=
sweep:
	$(SGNET) sweep run $(SPACE) --study $(STUDY) $(if $(N_TRIALS),--n-trials $(N_TRIALS),) $(if $(STORAGE),--storage $(STORAGE),) \
		$(if $(filter-out inline,$(LAUNCHER)),$(LAUNCH_ARGS),)

sweep-status:
	$(SGNET) sweep status --study $(STUDY) $(if $(STORAGE),--storage $(STORAGE),)

perf:
	$(SGNET) bench --out runs/perf/bench.json

clean:
	rm -rf runs cache .pytest_cache $(INSTALLED)
