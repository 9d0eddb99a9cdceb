# Two entry points (see README): `make demo` and `make test`. Both build .venv on first use.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test constraints docs clean

# constraints.txt pins every package to the version the suite passed with (`make constraints` refreshes it).
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	# MovieLens-100K ships inside this wheel; it is read as package data, recbole is never imported.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt recbole==1.2.1
	touch $(STAMP)

demo: $(STAMP)
	RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 $(BIN)/python jobs/pipeline.py --config configs/ml100k_dssm.yaml

test: $(STAMP)
	RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest -q tests --durations=30

# After a dependency change and a green `make test`: record the versions that passed.
constraints: $(STAMP)
	{ sed -n '1,3p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^ray_recall' | sed 's/+cpu$$//'; } > constraints.new
	mv constraints.new constraints.txt

# docs/config.md is generated from ray_recall/config.py (tests/test_config.py checks it is current).
docs: $(STAMP)
	$(BIN)/python -m ray_recall.config > docs/config.md

clean:
	rm -rf $(VENV)
