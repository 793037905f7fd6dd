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
# The same name `pipeline train` picks: the model's, so `pipeline predict` finds it unaided.
RUN := $(or $(MODEL),$(if $(filter fast,$(RECIPE)),fastnet,$(RECIPE)))
CHECKPOINT := models/$(RUN).pt

.DEFAULT_GOAL := help
.PHONY: help install data prepare train evaluate predict all best crossval submit test test-all serve bench baselines lint clean distclean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## Create .venv and install the package, its extras and test tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,kaggle,sample,serve,browser]'
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

best: prepare ## The `best` ensemble on all labelled digits (bagged; out-of-bag estimate), then predict
	$(PIPELINE) ensemble --recipe best $(if $(MEMBERS),--members $(MEMBERS)) --device $(DEVICE) --seed $(SEED)
	$(PIPELINE) predict --checkpoint 'models/best-*.pt' --device $(DEVICE)

SPLITS ?= 3
crossval: data ## Score the best recipe's ensemble as mean and spread over SPLITS validation splits
	$(PIPELINE) crossval --splits $(SPLITS) $(if $(MEMBERS),--members $(MEMBERS)) --device $(DEVICE) --seed $(SEED)

submit: ## Check submissions/submission.csv and send it to Kaggle (never run by other targets)
	$(PIPELINE) submit --file submissions/submission.csv

# `make test` leaves out the tests marked slow (about 3 minutes on 2 cores); CI=true, as
# .ci/run sets it, and `make test-all` run every test.
SLOW := $(if $(filter true,$(CI)),,-m "not slow")
test: install ## Run the test suite without the slow tests (installs what it needs first)
	$(BIN)/python -m pytest $(SLOW)

test-all: install ## Run every test, the slow ones too (what CI runs)
	$(BIN)/python -m pytest

serve: train ## Serve the draw-a-digit page and JSON API on CHECKPOINT at http://127.0.0.1:8000/
	$(PIPELINE) serve --checkpoint $(CHECKPOINT) --device $(DEVICE)

bench: train ## Speed figures against baselines run beside them: parse, loops, end to end, serve load
	$(PIPELINE) bench --device $(DEVICE)

baselines: install ## Run the seven tutorial baselines; figures in reports/figures/
	for name in regression optimizers linear classification mlp gan activations; do \
		$(PIPELINE) baselines $$name || exit 1; done

lint: install ## ruff format check and lint
	$(BIN)/ruff format --check pipeline tests
	$(BIN)/ruff check pipeline tests

clean: ## Remove processed data, models, submissions and figures (keeps raw data and .venv)
	find data/processed models submissions reports/figures -mindepth 1 ! -name .gitkeep -exec rm -rf {} +

distclean: clean ## Also remove the raw data and the virtual environment
	find data/raw -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf $(VENV)
