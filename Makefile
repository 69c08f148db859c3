# herald build tooling. `make` (or `make help`) lists the targets.
#
# Tools are pinned here and run with `go run pkg@version`, so the main go.mod stays
# free of tool dependencies and every machine runs the same versions. Go caches the
# built tool, so only the first run on a machine pays for compiling it.

GO ?= go

# The Go toolchain herald is built, tested and checked with. go1.27.3 carries the
# standard library's security fixes that go1.26.8 lacks (govulncheck finds net/http,
# crypto/tls, crypto/x509 and html/template issues reachable from herald with 1.26.8).
# The go command fetches it from the module proxy on first use (~76 MB, once per
# machine). An environment variable wins: GOTOOLCHAIN=local make ... uses the machine's Go.
export GOTOOLCHAIN ?= go1.27.3

GOLANGCI_LINT_VERSION ?= v2.15.0
GOVULNCHECK_VERSION   ?= v1.9.0

GOLANGCI_LINT ?= $(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
GOVULNCHECK   ?= $(GO) run golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION)

# VULNDB is the vulnerability database govulncheck reads. Empty (the default) means a
# local copy that .ci/vulndb builds from the pinned golang.org/x/vulndb module, which
# needs only the Go module proxy (vuln.go.dev is not reachable from every machine);
# VULNDB=https://vuln.go.dev reads the live database, VULNDB=file:///srv/vulndb a mirror.
VULNDB ?=

BIN      ?= bin
# e.g. BUILDFLAGS=-trimpath for release builds (it gets its own build cache, so CI leaves it off).
BUILDFLAGS ?=
PKGS     ?= ./...
BENCH    ?= .
# Extra `go test` flags, e.g. TESTFLAGS='-v -run=TestConformance'.
TESTFLAGS ?=
# Go source outside testdata/ (fixtures may be deliberately malformed) and bin/.
GOFILES   = $(shell find . -name '*.go' -not -path './.git/*' -not -path './$(BIN)/*' -not -path '*/testdata/*')

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets with a one-line description
	@echo 'Usage: make <target> [VAR=value]'
	@echo
	@awk 'BEGIN { FS = ":.*?## " } /^[a-zA-Z0-9_.-]+:.*?## / { printf "  %-15s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
	@echo
	@echo 'Pinned tools: golangci-lint $(GOLANGCI_LINT_VERSION), govulncheck $(GOVULNCHECK_VERSION)'

.PHONY: build
build: ## Build ./cmd/herald into bin/herald
	$(GO) build $(BUILDFLAGS) -o $(BIN)/herald ./cmd/herald

.PHONY: test
test: ## Run the full test suite with the race detector (the README's test command)
	$(GO) test -race -count=1 $(TESTFLAGS) $(PKGS)

.PHONY: test-race
test-race: test ## Same as test: the suite always runs with -race

.PHONY: test-short
test-short: ## Run the quick tests only (-short, no race detector)
	$(GO) test -short -count=1 $(TESTFLAGS) $(PKGS)

.PHONY: bench
bench: ## Run the benchmarks (BENCH=regexp to select) with allocation stats
	$(GO) test -run=^$$ -bench=$(BENCH) -benchmem $(PKGS)

# `make chaos` knobs: CHAOS_FLAGS='--cycles 100 --events 200000' for the long run,
# '--postgres --cycles 6' for the multi-node one (private PostgreSQL via initdb).
CHAOS_FLAGS ?= --cycles 10
# `make fuzz` runs each decoder's fuzz target for FUZZTIME, one at a time.
FUZZTIME ?= 10m
FUZZ_TARGETS = ./internal/httpapi:FuzzDecodeJob ./internal/httpapi:FuzzDecodeBatch ./internal/httpapi:FuzzEvents ./internal/config:FuzzLoad ./internal/httpapi:FuzzMailings ./internal/email:FuzzMessage

.PHONY: chaos
chaos: build ## Run the reliability harness (herald chaos $(CHAOS_FLAGS)) against bin/herald
	$(BIN)/herald chaos $(CHAOS_FLAGS)

.PHONY: fuzz
fuzz: ## Fuzz every decoder for FUZZTIME each (default 10m), one target at a time
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "== $$name ($$pkg) for $(FUZZTIME)"; \
		$(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) $$pkg; \
	done

.PHONY: lint
lint: ## Run golangci-lint (pinned) with .golangci.yml
	$(GOLANGCI_LINT) run $(PKGS)

.PHONY: lint-fix
lint-fix: ## Apply golangci-lint's automatic fixes (formatting, modernize, misspell, ...)
	$(GOLANGCI_LINT) run --fix $(PKGS)

.PHONY: vuln
vuln: ## Check dependencies and code for known vulnerabilities (govulncheck, pinned; offline database by default)
	@db='$(VULNDB)'; if [ -z "$$db" ]; then db="$$(./.ci/vulndb)"; fi; \
	echo "govulncheck $(GOVULNCHECK_VERSION) with $$(go version | cut -d' ' -f3), database $$db"; \
	$(GOVULNCHECK) -db "$$db" $(PKGS)

.PHONY: fmt
fmt: ## Format all Go source in place (gofmt -s)
	@gofmt -s -l -w $(GOFILES)

.PHONY: fmt-check
fmt-check: ## Fail if any Go file is not gofmt-formatted
	@out="$$(gofmt -l $(GOFILES))"; \
	if [ -n "$$out" ]; then echo 'Not gofmt-formatted (run make fmt):'; echo "$$out"; exit 1; fi

.PHONY: vet
vet: ## Run go vet
	$(GO) vet $(PKGS)

.PHONY: tidy-check
tidy-check: ## Fail if go.mod/go.sum are not tidy (changes nothing)
	$(GO) mod tidy -diff

.PHONY: check
check: fmt-check vet tidy-check build test lint ## Everything .ci/run checks except vuln, in its order

.PHONY: tools-versions
tools-versions: ## Print the versions of Go and the pinned tools
	@$(GO) version
	@$(GOLANGCI_LINT) --version
	@$(GOVULNCHECK) -version | sed -n 's/^Scanner: //p'

.PHONY: clean
clean: ## Remove build output
	rm -rf $(BIN)
