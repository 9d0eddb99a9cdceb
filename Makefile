# Two entry points (see README): `make demo` and `make test`. Both build .venv on first use.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	# MovieLens-100K ships inside this wheel; it is read as package data, recbole is never imported.
	$(BIN)/pip install --quiet --no-deps recbole==1.2.1
	touch $(STAMP)

demo: $(STAMP)
	RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 $(BIN)/python jobs/pipeline.py --config configs/ml100k_dssm.yaml

test: $(STAMP)
	RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest -q tests --durations=30

clean:
	rm -rf $(VENV)
