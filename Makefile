# Digit Recognizer pipeline. `make help` lists the targets; variables can be overridden:
#   make all ZIP=~/Downloads/digit-recognizer.zip     use a competition zip
#   make train MODEL=lenet EPOCHS=10 DEVICE=cuda      another model, longer, on the GPU
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIPELINE := $(BIN)/pipeline

RECIPE ?= fast
MODEL ?=
EPOCHS ?=
DEVICE ?= auto
SEED ?= 0
ZIP ?=
MEMBERS ?=
RUN_ID ?=
# The same name `pipeline train` picks: the model's, so `pipeline predict` finds it unaided.
RUN := $(or $(MODEL),$(if $(filter fast,$(RECIPE)),fastnet,$(RECIPE)))
CHECKPOINT := models/$(RUN).pt
# `make serve` serves the distilled ensemble once `make best` made it, unless CHECKPOINT, MODEL or
# RECIPE names another model.
SERVE_CHECKPOINT := $(if $(or $(filter command line,$(origin CHECKPOINT)),$(MODEL),$(filter-out fast,$(RECIPE))),$(CHECKPOINT),$(or $(wildcard models/distilled.pt),$(CHECKPOINT)))

.DEFAULT_GOAL := help
.PHONY: help install data prepare train evaluate predict all best crossval tune ui submit test test-all serve export bench baselines lint clean distclean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

# What `make install` puts in .venv; the browser test's Playwright comes only with `make test`.
EXTRAS ?= dev,kaggle,sample,serve,track,export
# Extra pip arguments, and an index for torch alone: TORCH_INDEX=https://download.pytorch.org/whl/cpu
# installs the CPU-only build, a fraction of the ~6 GB PyPI's CUDA build takes.
PIP_ARGS ?=
TORCH_INDEX ?=
PIP := $(BIN)/python -m pip install --progress-bar on $(PIP_ARGS)

install: $(VENV)/.installed ## Create .venv and install the package, its extras and test tools

$(VENV)/.installed: pyproject.toml
	@echo "Installing into $(VENV): several minutes and ~6 GB (PyPI's torch brings CUDA); for a" \
		"CPU-only torch, far smaller: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu"
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(if $(TORCH_INDEX),$(PIP) --index-url $(TORCH_INDEX) torch torchvision)
	$(PIP) -e '.[$(EXTRAS)]'
	touch $@

# The browser test drives Chromium through Playwright, which only the tests need.
$(VENV)/.installed-browser: $(VENV)/.installed
	$(PIP) -e '.[browser]'
	touch $@

data: install ## Raw CSVs: ZIP= wins; Kaggle CSVs already there are kept; else zip / Kaggle API / offline sample
	$(PIPELINE) download $(if $(ZIP),--zip $(ZIP))

prepare: data ## Validate and parse the CSVs into uint8 tensors with a train/val split
	$(PIPELINE) prepare --seed $(SEED)

train: prepare ## Train RECIPE (or MODEL) into models/<name>.pt; skips a finished identical run
	$(PIPELINE) train --recipe $(RECIPE) $(if $(MODEL),--model $(MODEL)) \
		$(if $(EPOCHS),--epochs $(EPOCHS)) --device $(DEVICE) --seed $(SEED) --out $(CHECKPOINT)

evaluate: train ## Validation accuracy, per-class report, confusion matrix and mistakes PNGs
	$(PIPELINE) evaluate --checkpoint $(CHECKPOINT) --device $(DEVICE)

predict: train ## Write submissions/submission.csv with the trained model
	$(PIPELINE) predict --checkpoint $(CHECKPOINT) --device $(DEVICE)

all: predict ## install -> download -> prepare -> train -> predict

# `make best` fits a CPU run to BUDGET minutes in all: it times each net on this machine for a few
# seconds, takes wider nets where the budget fits them at their epochs (BUDGET=60 does on 2 cores),
# scales every member's epochs by one factor (up to 3x the table's; one member per fold if even 1
# epoch each does not fit), prints the plan and its ETA, keeps to it, predicts, and leaves
# DISTILL_MINUTES of the budget to distil the ensemble into models/distilled.pt (what `make serve`
# then serves). PSEUDO=1 adds a second round of members trained on the test digits the first is
# sure of (pseudo-labels).
BUDGET ?= 15
DISTILL_MINUTES ?= 3
PSEUDO ?=
best: prepare ## The `best` ensemble sized to BUDGET minutes (15) on a CPU, predict, then distil it into models/distilled.pt
	$(PIPELINE) ensemble --recipe best $(if $(MEMBERS),--members $(MEMBERS)) --device $(DEVICE) --seed $(SEED) \
		--budget $(BUDGET) --reserve $(DISTILL_MINUTES) $(if $(filter 1,$(PSEUDO)),--pseudo-label)
	$(PIPELINE) predict --checkpoint 'models/best-*.pt' --device $(DEVICE)
	$(PIPELINE) distill --teachers 'models/best-*.pt' --out models/distilled.pt --device $(DEVICE) --seed $(SEED)

SPLITS ?= 3
crossval: data ## Score the best recipe's ensemble as mean and spread over SPLITS validation splits
	$(PIPELINE) crossval --splits $(SPLITS) $(if $(MEMBERS),--members $(MEMBERS)) --device $(DEVICE) --seed $(SEED)

# `make tune`: a small budget by default, whichever ends first: a study of 8 trials (on a new
# study the first 4 sampled at random, then 4 guided by TPE; pruning from the third), each fastnet
# for 1 to MAX_EPOCHS epochs, or no new trial after TIMEOUT seconds (the trial then running
# finishes), so it ends within 5 minutes plus one trial. It prints the best trial and the
# `pipeline train` command that trains it again. TRIALS is the study's total: `make tune
# TRIALS=20` resumes the study by name up to 20 trials; another MAX_EPOCHS is another search
# space, so give it another STUDY. TUNE_WORKERS processes share the study; STORAGE names a store every
# machine of a cluster reaches (postgresql+psycopg2://..., journal:///<shared file>), and the same
# `make tune` on each of them adds its trials (see docs/scale-out.md).
TRIALS ?= 8
TIMEOUT ?= 300
MAX_EPOCHS ?= 4
STUDY ?= tune
TUNE_WORKERS ?= 1
tune: prepare ## Search lr, weight decay, epochs, width, batch size, augmentation with Optuna (TRIALS, TIMEOUT s, MAX_EPOCHS, STUDY, TUNE_WORKERS, STORAGE)
	$(PIPELINE) tune --trials $(TRIALS) --timeout $(TIMEOUT) --max-epochs $(MAX_EPOCHS) \
		--study $(STUDY) --workers $(TUNE_WORKERS) $(if $(STORAGE),--storage '$(STORAGE)') \
		--device $(DEVICE) --seed $(SEED)

# The tracking store: experiments/mlflow.db unless MLFLOW_TRACKING_URI names another.
TRACKING_URI := $(or $(MLFLOW_TRACKING_URI),sqlite:///$(CURDIR)/experiments/mlflow.db)
UI_PORT ?= 5000
ui: install ## Open the MLflow UI on the tracked runs at http://127.0.0.1:UI_PORT/ (5000)
	$(BIN)/python -m pipeline.experiments.recorder $(TRACKING_URI)
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/mlflow ui --backend-store-uri $(TRACKING_URI) \
		--host 127.0.0.1 --port $(UI_PORT) --workers 1

submit: ## Check submissions/submission.csv and send it to Kaggle (never run by other targets)
	$(PIPELINE) submit --file submissions/submission.csv

# `make test` leaves out the tests marked slow and spreads the rest over the cores (pytest-xdist,
# at most 4 workers, each test module on one worker so its module fixtures are built once;
# WORKERS=0 runs them all in this one process). CI=true, as .ci/run sets it, and `make test-all`
# run every test in one process: the slow tier's signal and timing tests assume no second
# worker beside them.
SLOW := $(if $(filter true,$(CI)),,-m "not slow")
WORKERS ?= $(if $(filter true,$(CI)),0,auto)
test: $(VENV)/.installed-browser ## Run the test suite without the slow tests (installs what it needs first)
	$(BIN)/python -m pytest $(SLOW) -n $(WORKERS) --maxprocesses 4 --dist loadscope

test-all: $(VENV)/.installed-browser ## Run every test, the slow ones too (what CI runs)
	$(BIN)/python -m pytest

# serve never retrains a checkpoint that is there (another run may have written it on purpose):
# it trains only a missing one, and says so.
serve: install ## Serve models/distilled.pt after `make best`, else CHECKPOINT (or RUN_ID=<run id>) at http://127.0.0.1:8000/; trains it only if missing
ifeq ($(RUN_ID),)
	@test -f $(SERVE_CHECKPOINT) || { echo "make serve: $(SERVE_CHECKPOINT) is missing, training it first"; \
		$(MAKE) --no-print-directory train; }
	$(PIPELINE) serve --checkpoint $(SERVE_CHECKPOINT) --device $(DEVICE)
else
	$(PIPELINE) serve --run $(RUN_ID) --device $(DEVICE)
endif

export: train ## Export CHECKPOINT to models/<name>.onnx (one graph, checked against torch first)
	$(PIPELINE) export --checkpoint $(CHECKPOINT)

bench: train ## Speed figures against baselines run beside them: parse, loops, end to end, serve load
	$(PIPELINE) bench --device $(DEVICE)

baselines: install ## Run the seven tutorial baselines; figures in reports/figures/
	for name in regression optimizers linear classification mlp gan activations; do \
		$(PIPELINE) baselines $$name || exit 1; done

lint: install ## ruff format check and lint
	$(BIN)/ruff format --check pipeline tests
	$(BIN)/ruff check pipeline tests

clean: ## Remove processed data, models, submissions and figures (keeps raw data, experiments/, .venv)
	find data/processed models submissions reports/figures -mindepth 1 ! -name .gitkeep -exec rm -rf {} +

distclean: clean ## Also remove the raw data, the tracked experiments and the virtual environment
	find data/raw experiments -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf $(VENV)
