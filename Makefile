# Two commands: `make demo` and `make test` (`make test-fast` skips the slow tests); `make bench`
# prints the benchmarks' figures. All build .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/nurture demo

lint: $(STAMP)
	$(BIN)/ruff check engine tests $(wildcard bench)
	$(BIN)/ruff format --check engine tests $(wildcard bench)
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-fast: lint
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

# Every benchmark in bench/ at a size that finishes in minutes; each prints its figures (the
# load average before and after: on shared cores compare ratios, not absolute figures). Full
# sizes: each script's --help.
bench: $(STAMP)
	@uptime
	$(BIN)/python bench/ingest.py --events 30000 --baseline-records 20000
	# The ingest aims at a size where start-up (~1 s) is not a third of the run.
	$(BIN)/python bench/ingest.py --events 200000 --skip-baseline --workers 2
	$(BIN)/python bench/api.py --events 1000
	$(BIN)/python bench/send.py --steps 10000 --dispatch 1000
	$(BIN)/python bench/pipeline.py --leads 50000
	$(BIN)/python bench/tick.py --leads 10000
	$(BIN)/python bench/alerts.py --events 50
	$(BIN)/python bench/alert_backlog.py --leads 20000
	$(BIN)/python bench/rescore.py --leads 2000 --events 20000
	@uptime

clean:
	rm -rf $(VENV) nurture.db outbox
