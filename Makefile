# Two entry points on a fresh machine: `make quickstart` (the main job) and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha1sum | cut -c1-12)

.PHONY: venv test test-slow lint bench

venv: $(STAMP)

# The project itself is installed editable, so `import stmc` works from any folder with this venv's python.
$(STAMP): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

test: venv
	$(PY) -m pytest -q -m "not slow"

test-slow: venv
	$(PY) -m pytest -q -m "slow"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: venv
	$(PY) -m stmc.bench.speed

# The LiteRT converter (requirements-litert.txt, ~1 GB) in a venv of its own on top of .venv (a .pth file adds
# .venv's site-packages after its own), then the tests that need it: LiteRT export of the stmc, inc and window
# steps, each streamed against offline PyTorch. `.venv-litert/bin/python` runs every command of the project too.
LITERT_VENV := .venv-litert
LITERT_STAMP := $(LITERT_VENV)/.installed-$(shell cat requirements.txt requirements-litert.txt pyproject.toml | sha1sum | cut -c1-12)
.PHONY: litert litert-venv
litert-venv: $(LITERT_STAMP)

$(LITERT_STAMP): $(STAMP) requirements-litert.txt
	python3 -m venv $(LITERT_VENV)
	$(LITERT_VENV)/bin/pip install -q --upgrade pip
	$(PY) -c "import sysconfig; print('import site; site.addsitedir(%r)' % sysconfig.get_paths()['purelib'])" \
		> "$$($(LITERT_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/stmc-base-venv.pth"
	$(LITERT_VENV)/bin/pip install -q -r requirements-litert.txt
	rm -f $(LITERT_VENV)/.installed-*
	touch $@

litert: litert-venv
	$(LITERT_VENV)/bin/python -m pytest -q -m litert

# The reference systems (requirements-references.txt) installed into .venv, then their tests: DeepFilterNet3 as an
# evaluate.py method (methods=[offline,stmc,deepfilternet3]) and DNSMOS checked against speechmos's own code.
.PHONY: references
references: venv
	$(VENV)/bin/pip install -q -r requirements-references.txt
	$(PY) -m pytest -q -m references

# The demo corpus, built from Debian packages into demo_corpus/ (a no-op when it is already there).
# `apt-deps` installs the missing packages when run as root (CI) and prints the command otherwise; g++ too,
# which compiles the native STMC step (stmc/stream/native.py) and torch.compile's kernels.
.PHONY: apt-deps corpus

apt-deps:
	@missing="$$(python3 -m stmc.data.demo packages --missing) $$(command -v g++ >/dev/null || echo g++)"; \
	missing="$$(echo $$missing)"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "missing Debian packages; install them with:"; \
		echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends $$missing"; \
		exit 1; \
	fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing

# Headless Chromium for the slow test that opens report.html in a real browser (CI); not needed otherwise.
.PHONY: browser-deps
browser-deps:
	@if command -v chromium >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "the browser test needs chromium: sudo apt-get install -y --no-install-recommends chromium"; exit 1; \
	fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

corpus: venv apt-deps
	$(PY) -m stmc.data.demo build --root demo_corpus

# The main job on a fresh machine: .venv, the demo corpus, then the quickstart U-Net trained on CPU for a fixed
# wall-clock budget and scored on the test splits (docs/training.md); then the newest quickstart checkpoint
# evaluated offline and as an STMC stream in 16 ms chunks on the real-speech test split (SI-SNRi table, an
# enhanced example next to its input) and the speed table of its architecture (docs/reproduction.md).
QS_EVAL := outputs/quickstart-eval
.PHONY: quickstart
quickstart: corpus
	$(PY) train.py experiment=quickstart
	$(PY) evaluate.py "checkpoints=[outputs/quickstart]" newest=true "splits=[test_real]" chunk=1 \
		"metrics=[si_snri,pesq,stoi]" overwrite=true hydra.run.dir=$(QS_EVAL)
	$(PY) -m scripts.speed_table --results $(QS_EVAL) --out $(QS_EVAL) --rounds 3 --hops 10 --onnx
	$(PY) -m stmc.evaluation.listening_report $(QS_EVAL) --speed-table $(QS_EVAL)/speed_table.md

# The paper's chain at CPU scale (look-ahead and size sweeps, evaluation, speed table, figures) in one folder:
# outputs/mini/index.md. 33 trainings of 1000 steps, two at a time (docs/reproduction.md has its measured time).
# The full-scale `paper` preset: docs/reproduction.md.
.PHONY: mini
mini: corpus
	$(PY) -m scripts.reproduce mini
