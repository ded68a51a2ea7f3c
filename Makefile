# Two entry points: `make run` (the app on the bundled model) and `make test` (the whole suite).
# Both create .venv and install what they need; stamps make reruns instant.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PORT ?= 8501

.PHONY: run test lint bench browser postgres dicom3tools orthanc ocr clean

$(VENV)/.runtime: requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PIP) install -r requirements-dev.txt
	touch $@

run: $(VENV)/.runtime
	# The app's own bytecode, written ahead (where PYTHONDONTWRITEBYTECODE is set, as in the Dockerfile, every
	# start would compile its ~20k lines again: ~0.3 s of each cold start); up-to-date files are skipped.
	$(PY) -m compileall -q -j 0 app.py pages xai models
	# Two malloc arenas keep the server's memory flat over many explanations (benchmarks/load_app.py).
	MALLOC_ARENA_MAX=2 $(VENV)/bin/streamlit run app.py --server.port $(PORT)

# Debian's chromium for the real-browser tests; installed with apt-get when missing and we are root.
browser:
	@if command -v chromium >/dev/null; then echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = "0" ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && \
		echo "installed chromium: $$(command -v chromium)"; \
	else echo "chromium missing and not root: browser tests will fail in CI"; fi

# PostgreSQL server binaries for the review store's tests (a throw-away cluster on a unix socket, no service).
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then echo "postgresql: $$(ls -d /usr/lib/postgresql/*/bin | tail -1)"; \
	elif [ "$$(id -u)" = "0" ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null && \
		echo "installed postgresql: $$(ls -d /usr/lib/postgresql/*/bin | tail -1)"; \
	else echo "PostgreSQL server binaries missing and not root: the review store's PostgreSQL tests will fail"; fi

# David Clunie's DICOM validator (dciodvfy) for the tests that validate every DICOM object the project writes.
dicom3tools:
	@if command -v dciodvfy >/dev/null; then echo "dciodvfy: $$(command -v dciodvfy)"; \
	elif [ "$$(id -u)" = "0" ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >/dev/null && \
		echo "installed dciodvfy: $$(command -v dciodvfy)"; \
	else echo "dicom3tools missing and not root: the DICOM validation tests will fail"; fi

# Orthanc and its DICOMweb plugin: the throw-away PACS the PACS tests start (loopback, temporary storage).
orthanc:
	@if command -v Orthanc >/dev/null && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then \
		echo "orthanc: $$(command -v Orthanc)"; \
	elif [ "$$(id -u)" = "0" ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null && \
		echo "installed orthanc: $$(command -v Orthanc)"; \
	else echo "Orthanc or its DICOMweb plugin missing and not root: the PACS tests will fail"; fi

# Tesseract OCR for xai.markers' tests (burned-in text); the app works without it (image processing only).
ocr:
	@if command -v tesseract >/dev/null; then echo "tesseract: $$(command -v tesseract)"; \
	elif [ "$$(id -u)" = "0" ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr >/dev/null && \
		echo "installed tesseract: $$(command -v tesseract)"; \
	else echo "tesseract missing and not root: the OCR cases of tests/test_markers.py will fail"; fi

test: $(VENV)/.dev browser postgres dicom3tools orthanc ocr
	$(PY) -m pytest

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy  # scope and the modules not yet clean: [tool.mypy] in pyproject.toml

bench: $(VENV)/.dev
	$(PY) benchmarks/bench_xai.py
	$(PY) benchmarks/bench_io.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
