# Two commands on a fresh machine:  make demo   and   make test
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
MEMBERS ?= 10000

.PHONY: install demo serve test lint browser clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $@

demo: install  ## main job end to end on the embedded default
	$(BIN)/loyalty-ml demo --members $(MEMBERS)

serve: install  ## the decision service on :3000 (after make demo)
	$(BIN)/loyalty-ml serve --port 3000

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

browser:  ## Debian chromium for the browser tests (MLflow UI, Swagger UI); where it cannot be installed they skip
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium (apt-get, about a minute): the MLflow UI and Swagger UI browser tests need it"; \
	  ( [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) ) || \
	  echo "chromium not installed (needs root and apt-get): the browser tests will skip"; }

test: lint browser  ## the test suite (what CI runs); pytest exit 5 (no tests) is a failure
	$(BIN)/pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests were collected"; exit 1; fi; exit $$rc

clean:
	rm -rf .loyalty features/feature_store.yaml
