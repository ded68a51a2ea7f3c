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

# Debian packages the tests need, installed with apt-get when missing and we are root (as in CI); otherwise
# one line says which tests will fail. $(call apt_tool,CHECK,PACKAGES,NAME,WHAT FAILS WITHOUT IT)
define apt_tool
	@if $(1); then echo "$(3): present"; \
	elif [ "$$(id -u)" = "0" ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null && echo "installed $(3)"; \
	else echo "$(3) missing and not root: $(4) will fail"; fi
endef

# Debian's chromium for the real-browser tests.
browser:
	$(call apt_tool,command -v chromium >/dev/null,chromium,chromium,the browser tests)

# PostgreSQL server binaries for the review store's tests (a throw-away cluster on a unix socket, no service).
postgres:
	$(call apt_tool,ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1,postgresql,PostgreSQL server binaries,the review store's PostgreSQL tests)

# David Clunie's DICOM validator (dciodvfy) for the tests that validate every DICOM object the project writes.
dicom3tools:
	$(call apt_tool,command -v dciodvfy >/dev/null,dicom3tools,dciodvfy,the DICOM validation tests)

# Orthanc and its DICOMweb plugin: the throw-away PACS the PACS tests start (loopback, temporary storage).
orthanc:
	$(call apt_tool,command -v Orthanc >/dev/null && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ],orthanc orthanc-dicomweb,Orthanc with DICOMweb,the PACS tests)

# Tesseract OCR for xai.markers' tests (burned-in text); the app works without it (image processing only).
ocr:
	$(call apt_tool,command -v tesseract >/dev/null,tesseract-ocr,tesseract,the OCR cases of tests/test_markers.py)

test: $(VENV)/.dev browser postgres dicom3tools orthanc ocr
	$(PY) -m pytest

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy  # scope: [tool.mypy] in pyproject.toml (every module checked, no exemptions)

bench: $(VENV)/.dev
	$(PY) benchmarks/bench_xai.py
	$(PY) benchmarks/bench_io.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
