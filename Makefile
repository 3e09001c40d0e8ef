# The README's two commands: `make demo` (the main job) and `make test`. Each creates the
# virtual environment and installs the pinned toolchains on first use.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade "pip>=25"
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e ".[all,test]"
	touch $(STAMP)

.PHONY: demo test bench
demo: $(STAMP)
	$(VENV)/bin/edgegen demo -o out/demo

test: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/export_vs_eager.py
