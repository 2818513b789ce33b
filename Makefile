# The two README commands: `make demo` and `make test`. Both create .venv on first use and install what they need;
# torch==2.13.0 is pinned through constraints.txt so pip takes the local CPU wheel instead of a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
EXTRAS := viz,lab,peers,dev,gpu,export,ray,tensorboard,docs
# The tests that compare numbers recorded on one machine or computed by a peer (goldens, eigenvectors, transformers'
# outputs): test-cpu-variants reruns them under other CPU kernels, so a pass that holds only on this CPU shows here.
NUMERIC_TESTS := tests/lab/test_lab_golden.py tests/test_model_golden.py tests/test_attention_golden.py \
	tests/encodings/test_graph_encodings.py tests/encodings/test_alibi_falcon.py tests/test_peers_bias.py \
	tests/test_peers_rope.py tests/test_hf_families.py tests/test_hf_interop.py
LATEST := .venv-latest

.PHONY: demo test test-slow test-cpu-variants test-latest test-mutate test-docs docs lint install clean readme

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m posenc lab run --suite quick --workers 2 --out runs/quick

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-slow: $(STAMP)
	HYPOTHESIS_PROFILE=long $(PY) -m pytest -q -p no:cacheprovider -m "slow or not slow" -o timeout=3600

# make test, but only the numeric tests, under kernels other than this CPU's best: torch's generic (no SIMD) and
# AVX2 kernels, and MKL's reproducible COMPATIBLE / AVX2 code paths. A few minutes on 2 cores.
test-cpu-variants: $(STAMP)
	ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE $(PY) -m pytest -q -p no:cacheprovider $(NUMERIC_TESTS)
	ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 $(PY) -m pytest -q -p no:cacheprovider $(NUMERIC_TESTS)

# The test suite against the newest peers and extras: a separate venv ($(LATEST); .venv is left alone) where only
# torch keeps its pin, upgraded on every run, so drift in transformers & co. is seen on purpose. It prints the
# versions that differ from constraints.txt first; when it passes, those pins can be raised.
test-latest:
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	echo '*' > $(LATEST)/.gitignore
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	grep '^torch==' constraints.txt > $(LATEST)/torch-only-constraints.txt
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager \
		-c $(LATEST)/torch-only-constraints.txt -e ".[$(EXTRAS)]"
	$(LATEST)/bin/python -c "import importlib.metadata as m, re; \
		pins = [l.split('==') for l in open('constraints.txt').read().splitlines() if re.match(r'^[A-Za-z0-9_.-]+==', l)]; \
		[print(f'{n}: {m.version(n)} here, {v} in constraints.txt') for n, v in pins if m.version(n).split('+')[0] != v]"
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider

# Mutation testing (scripts/mutate.py, mutmut): per group of modules (the core, the model, hf, the conformance kit,
# the lab report), the share of small code changes the tests catch, against a floor of 90%; writes docs/mutation.md.
# Hours on 2 shared cores; it resumes where a stopped run left off. A quick look:
# make test-mutate MUTATE_ARGS="--group core --max-mutants 40"
test-mutate: $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e ".[$(EXTRAS),mutate]"
	$(PY) scripts/mutate.py $(MUTATE_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# The documentation site, built into site/ (open site/index.html: no server, no network). The encoding pages, the API
# reference and the CLI page are generated from the registry and the docstrings at build time (docs/hooks.py).
# POSENC_DOCS_FIGURES=0 skips the gallery's pictures for a quicker text-only build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --clean

# The site's tests: its generated pages and guides (also in make test), then the built site in headless Chromium
# (apt-get install chromium; the browser test skips, saying why, without it).
test-docs: docs
	$(PY) -m pytest -q -p no:cacheprovider -m "slow or not slow" tests/test_docsite.py tests/test_docs_guides.py \
		tests/test_docs_browser.py

clean:
	rm -rf $(VENV) $(LATEST) build site *.egg-info src/*.egg-info

readme: $(STAMP)
	$(PY) scripts/update_readme.py
	$(PY) -m posenc.lab.catalog --write
