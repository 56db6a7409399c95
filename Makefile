# The two commands of the README. Both install what they need first and are safe to rerun.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test install jars clean

dev: install jars
	$(BIN)/enx-streams dev

# Two test processes, each taking a whole file at a time (a file's module fixtures start once): most of the
# suite waits on brokers, outages and polls, so two halve its time on 2 cores. TEST_WORKERS=0 runs one.
TEST_WORKERS ?= 2

test: install jars
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Resolves the pinned Apache Kafka broker's jars with Maven (cached: no network the second time).
jars: install
	$(BIN)/enx-streams kafka jars

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
