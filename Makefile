# The front door of the sales pipeline. `make` lists the targets; `make demo` runs everything once.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules --no-print-directory

# Bun is pinned in package.json ("packageManager"). A bun on PATH is used only when it is that version;
# otherwise `make install` puts that version in .local/bun from npm (the `bun` package ships the binary).
BUN_VERSION := $(shell sed -n 's/.*"packageManager": *"bun@\([^"]*\)".*/\1/p' package.json)
LOCAL_BUN := .local/bun/node_modules/.bin/bun
SYSTEM_BUN := $(shell command -v bun 2>/dev/null)
ifeq ($(and $(SYSTEM_BUN),$(filter $(BUN_VERSION),$(shell bun --version 2>/dev/null))),)
BUN ?= $(LOCAL_BUN)
BUN_DEP := $(LOCAL_BUN)
else
BUN ?= bun
BUN_DEP :=
endif

# Kafka nodes: 1, or 3 for a local cluster (make up KAFKA_NODES=3). Once make up has started a stack, every
# target follows the number it started (from .local/stack.json) unless KAFKA_NODES is given.
KAFKA_NODES ?= $(shell sed -n 's/.*"kafkaNodes": *\([0-9]*\).*/\1/p' .local/stack.json 2>/dev/null)
ifneq ($(KAFKA_NODES),)
export KAFKA_NODES
endif

RATE ?= 1
# make stream closes a batch file every STREAM_MAX_AGE seconds (or at 100 rows): at 1 row/s the page moves every 2 s.
STREAM_MAX_AGE ?= 2
TEST_TIMEOUT ?= 180000
TESTS ?= tests/
DEMO_START := $(shell date +%s)

##@ Start here

.PHONY: demo
demo: up migrate data ## Everything on a fresh machine: install, start, migrate, stream the whole file, load, summary
	@echo "== streaming data/Sample-Superstore.csv through Kafka at full speed"
	$(BUN) scripts/producer.ts --rate max
	@echo "== writing batch files until the topic is quiet"
	$(BUN) scripts/consumer_batch_to_csv.ts --until-idle 5
	@echo "== loading batch files into PostgreSQL"
	$(BUN) scripts/load.ts
	@echo "== summary"
	@$(BUN) scripts/status.ts --since $(DEMO_START)

.PHONY: test
test: up ## Run every test against the real Kafka and PostgreSQL (starts them), fault tests included
	$(BUN) test --timeout $(TEST_TIMEOUT) $(TESTS)

CHAOS_RUNS ?= 3
CHAOS_ROWS ?= 60000

.PHONY: chaos
chaos: up ## The cluster fault suite in full: three brokers of its own, each fault CHAOS_RUNS times with CHAOS_ROWS rows
	CHAOS_RUNS=$(CHAOS_RUNS) CHAOS_ROWS=$(CHAOS_ROWS) $(BUN) test --timeout 1800000 tests/cluster.test.ts

.PHONY: test-faults
test-faults: up ## Only the fault-injection tests (they start and kill a broker and a PostgreSQL of their own)
	$(BUN) test --timeout $(TEST_TIMEOUT) tests/faults.test.ts

##@ Stack

.PHONY: install
install: node_modules/.installed ## Install the pinned Bun (if needed) and the locked dependencies

$(LOCAL_BUN):
	@command -v npm >/dev/null || { echo "npm is needed to install Bun $(BUN_VERSION) (or install Bun $(BUN_VERSION) yourself)" >&2; exit 1; }
	npm install --prefix .local/bun --no-save --no-audit --no-fund --loglevel=error bun@$(BUN_VERSION)
	@touch $@

node_modules/.installed: package.json bun.lock $(BUN_DEP)
	$(BUN) install --frozen-lockfile
	@touch $@

.PHONY: up
up: install ## Start Kafka and PostgreSQL: Docker Compose if Docker runs, else local mode; KAFKA_NODES=3 for a cluster
	$(BUN) scripts/local_stack.ts up

.PHONY: down
down: ## Stop what `make up` started; all data is kept
	@if [ -x "$(BUN)" ] || command -v "$(BUN)" >/dev/null; then $(BUN) scripts/local_stack.ts down; \
	elif [ -f .local/stack.json ]; then echo "make up started services here, but bun is not installed to stop them: make install, then make down" >&2; exit 1; \
	else echo "nothing to stop"; fi

.PHONY: destroy
destroy: install ## Stop and DELETE all data (topics, offsets, database); asks first, CONFIRM=1 skips the question
	$(BUN) scripts/local_stack.ts destroy

.PHONY: status
status: install ## What runs, consumer lag (per partition too), batch files waiting, rows in PostgreSQL, who looks alive
	@$(BUN) scripts/status.ts --stack

##@ Pipeline, step by step

.PHONY: migrate
migrate: up ## Create the database if needed, apply sql/ migrations; bi_reader's first password (set once per server)
	$(BUN) scripts/migrate.ts

.PHONY: rotate-bi-reader
rotate-bi-reader: up ## Set bi_reader's password to BI_READER_PASSWORD (unset: a new random one in .local/), for every database on the server
	$(BUN) scripts/migrate.ts --rotate-bi-reader-password

.PHONY: data
data: data/Sample-Superstore.csv ## Write data/Sample-Superstore.csv (the real Superstore rows, Kaggle-style Windows-1252)

data/Sample-Superstore.csv: node_modules/.installed scripts/make_data.ts
	$(BUN) scripts/make_data.ts --out $@

.PHONY: produce
produce: up data ## Send the CSV to Kafka: full speed by default here, RATE=1 for the seed's pace
	$(BUN) scripts/producer.ts --rate $(if $(filter command line,$(origin RATE)),$(RATE),max)

.PHONY: consume
consume: up ## Write batch files of BATCH_SIZE records; exits when the topic is quiet for 5 s
	$(BUN) scripts/consumer_batch_to_csv.ts --until-idle 5

.PHONY: load
load: migrate ## Load the pending batch files into PostgreSQL
	$(BUN) scripts/load.ts

# The four processes share one terminal: LOG_PROGRESS=lines makes each print its progress as a whole line every
# 10 s, where a line redrawn in place (\r) would overwrite another process's.
.PHONY: stream
stream: up data ## Watch it live in a database of its own (<db>_live, emptied first): producer at RATE rows/s (1), consumer, loader, dashboard; Ctrl-C stops all
	@live="$$($(BUN) scripts/live.ts)"; eval "$$live"; \
	echo "== producer at $(RATE)/s, consumer (a file every $(STREAM_MAX_AGE) s or 100 rows), loader and the dashboard (it prints its address) on the live database; Ctrl-C to stop"; \
	trap 'echo; echo "stopping..."' INT TERM; \
	export LOG_PROGRESS=lines; \
	$(BUN) scripts/dashboard.ts & \
	$(BUN) scripts/consumer_batch_to_csv.ts --max-age $(STREAM_MAX_AGE) & \
	$(BUN) scripts/load.ts --watch & \
	$(BUN) scripts/producer.ts --rate $(RATE) || true; \
	while [ -n "$$(jobs -pr)" ]; do wait || true; done

##@ Look at the data

.PHONY: dashboard
dashboard: migrate ## The live dashboard on http://127.0.0.1:8050/ (DASHBOARD_PORT): KPIs, charts, pipeline health, /metrics for Prometheus
	$(BUN) scripts/dashboard.ts

.PHONY: export
export: migrate ## CSV extracts of every BI view in data/exports/ (one snapshot) and a Tableau workbook over them
	$(BUN) scripts/export.ts

##@ Development

SIZE ?= quick
# make bench STAGES=loader,scale: some stages only (producer, consumer, loader, together, connect, scale).
STAGES ?=
# make bench SOAK=1: the soak line instead of the stages, SOAK_MINUTES long, the producer at SOAK_RATE rows/s.
SOAK ?=
SOAK_MINUTES ?= 10
SOAK_RATE ?= 500
# make bench PROFILE=1: every run of our scripts under Bun's CPU profiler, one Markdown profile each in .local/bench/profiles/.
PROFILE ?=

.PHONY: bench
bench: up migrate ## Each stage next to kcat / psql / Kafka Connect on the same rows (SIZE=quick: 99,940 rows; SIZE=full: 999,400); SOAK=1: 10-minute soak
	@command -v kcat >/dev/null || { echo "make bench compares with kcat: apt-get install kcat" >&2; exit 1; }
	@command -v psql >/dev/null || { echo "make bench compares with psql: apt-get install postgresql-client" >&2; exit 1; }
	$(BUN) scripts/bench.ts $(if $(filter-out 0,$(SOAK)),--soak $(SOAK_MINUTES) --soak-rate $(SOAK_RATE),--size $(SIZE)$(if $(STAGES), --stages $(STAGES)))$(if $(filter-out 0,$(PROFILE)), --profile)

.PHONY: typecheck
typecheck: install ## Type-check every script and test (tsc --noEmit)
	node_modules/.bin/tsc --noEmit -p tsconfig.json

.PHONY: compose-check
compose-check: ## Validate docker-compose.yml (docker compose config, or Debian's docker-compose)
	@if docker compose version >/dev/null 2>&1; then docker compose -f docker-compose.yml config -q; \
	elif command -v docker-compose >/dev/null; then docker-compose -f docker-compose.yml config -q; \
	else echo "neither 'docker compose' nor docker-compose is installed (apt-get install docker-compose)" >&2; exit 1; fi
	@echo "docker-compose.yml is valid"

.PHONY: clean
clean: ## Delete generated batch files and data/*.csv (Kafka and PostgreSQL data stay; see destroy)
	find batches -mindepth 1 ! -name .gitkeep -delete
	rm -f data/*.csv

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m   (the two that do everything: make demo, make test)\n"} \
	  /^[a-zA-Z_-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)
