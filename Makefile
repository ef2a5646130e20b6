# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export GRADIO_ANALYTICS_ENABLED := False
# idle OpenMP workers sleep instead of spinning: a busy CPU does not collapse throughput (bench/threads.py)
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test lint format bench clean shapesworld-model shapesworld-ablation browser

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned here, not in pyproject: a plain `torch` requirement pulls a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]" scipy
	# lmms-eval for tests/test_eval_lmms.py: without its dependencies (they would pull a CUDA torch); the plugin
	# and its test need only loguru beside what is installed (docs/eval.md, lmms-eval)
	$(BIN)/pip install -q loguru
	$(BIN)/pip install -q --no-deps "lmms-eval>=0.7.3,<0.8"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/moai demo

# The bundled model from nothing (docs/shapesworld.md): world and sign questions, perception cache, vision tower,
# base (two runs), MoAI step 1, step 2 (four parts), the base trained on with position questions and the MoAI
# modules moved onto it, checks between them, then checkpoints/moai-tiny-shapes/ with its model card (about 105
# minutes of stages on 2 cores as timed beside other runs, plus the checks; never timed alone).
# --no-checks: the current recipe's MoAI stages fail their check (another scene's aux changes too few answers;
# docs/shapesworld.md, "Where the recipe stands"); checks are measured, printed and written to recipe.json and
# the model card, not stopping the run.
shapesworld-model: $(STAMP)
	$(BIN)/python -m moai.recipes.shapesworld --out runs/shapesworld --no-checks --install checkpoints/moai-tiny-shapes

# The ablation's trained variants on that run, then the ablation table and figures (docs/shapesworld.md,
# "Ablation"): about 3 hours 45 minutes on 2 cores, each stage on two processes (three variants retrain every
# MoAI stage, 35-45 minutes each with the moved modules' stage; the base trained on as long as the MoAI stages
# took, about 56 minutes, and base_pos as long as they took after it, about 36; the stage times of
# docs/shapesworld.md, "The trained variants of the run from nothing" and the section after it).
shapesworld-ablation: $(STAMP)
	$(BIN)/python -m moai.recipes.variants --recipe runs/shapesworld
	$(BIN)/python -m moai.recipes.ablation --model checkpoints/moai-tiny-shapes --base runs/shapesworld/base_pos/final \
		--variants runs/shapesworld/variants/variants.json --out docs/figures/shapesworld

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint browser
	$(BIN)/python -m pytest --durations=15

# The web demo's browser test drives Debian's headless Chromium (tests/test_web.py); it is skipped, saying
# why, where the browser is missing and cannot be installed here (no root, no Debian mirror).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; }; } || \
	  echo "chromium could not be installed: tests/test_web.py's browser test will be skipped"

bench: $(STAMP)
	$(BIN)/python bench/model.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/perception.py
	$(BIN)/python bench/threads.py
	$(BIN)/python bench/train_processes.py
	$(BIN)/python bench/parity_noise.py
	$(BIN)/python bench/infer_threads.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/causal_decode.py

clean:
	rm -rf $(VENV) build *.egg-info
