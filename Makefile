# Two commands: `make demo` and `make test`. Both build .venv on first use, offline-safe.
# `make test` runs `make lint` (ruff + mypy on the package, configured in pyproject.toml) first.
# `make nnunet` adds the optional nnU-Net extra (nnunetv2 and its U-Nets, kept on the CPU torch); CI installs it.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

NNUNET_STAMP := $(VENV)/.nnunet-installed

.PHONY: demo lint test test-fast venv nnunet clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

# nnunetv2 and dynamic-network-architectures go in with --no-deps: the latter declares timm, whose torchvision
# has no wheel for the CPU torch and would pull a CUDA torch. Their other dependencies are pinned in
# requirements-nnunet.txt and installed under the constraint torch==2.13.0. The short CPU trainers go where
# nnU-Net's documentation puts custom trainers (extras/nnunet/nnUNetTrainer_anatosynth.py says why).
nnunet: $(NNUNET_STAMP)

$(NNUNET_STAMP): $(STAMP) requirements-nnunet.txt requirements-nnunet-nodeps.txt extras/nnunet/nnUNetTrainer_anatosynth.py
	$(BIN)/pip install -q -c constraints-torch.txt -r requirements-nnunet.txt
	$(BIN)/pip install -q --no-deps -r requirements-nnunet-nodeps.txt
	cp extras/nnunet/nnUNetTrainer_anatosynth.py "$$($(BIN)/python -c "import nnunetv2.training.nnUNetTrainer as t; print(t.__path__[0])")"/
	$(BIN)/python -c "import torch, nnunetv2, dynamic_network_architectures; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(NNUNET_STAMP)

demo: $(STAMP)
	$(BIN)/anatosynth demo --out demo_run

lint: $(STAMP)
	$(BIN)/ruff check anatosynth
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) demo_run .pytest_cache .mypy_cache .ruff_cache
