# The README's two commands: `make demo` (the main job) and `make test`. Each creates the
# virtual environment and installs the pinned toolchains on first use.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

# pip's output goes to $(INSTALL_LOG) and is shown only if the install fails: even --quiet pip
# repeats a warning for every package about index locations a machine's pip config names but
# does not have (this one's and CI's do), and setuptools warns about editable installs.
INSTALL_LOG := $(VENV)/install.log

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	@echo "installing the pinned toolchains into $(VENV) (a few minutes, once; log: $(INSTALL_LOG))"
	@$(VENV)/bin/python -m pip install --upgrade "pip>=25" > $(INSTALL_LOG) 2>&1 \
		&& $(VENV)/bin/python -m pip install -c constraints.txt -e ".[all,test]" >> $(INSTALL_LOG) 2>&1 \
		|| { tail -n 40 $(INSTALL_LOG); echo "error: pip install failed; the whole log is $(INSTALL_LOG)"; exit 1; }
	touch $(STAMP)

.PHONY: demo test bench
demo: $(STAMP)
	$(VENV)/bin/edgegen demo -o out/demo

test: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/export_vs_eager.py
