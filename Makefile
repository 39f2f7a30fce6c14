# snowgate: the README's two commands are `make run` and `make test`.
GO ?= go
JSCLIENT := portalmock/testdata/jsclient

.PHONY: run test test-short build lint fmt js-deps bench fuzz fuzz-ci

## run: the whole local stack in one process on loopback, with embedded defaults (no root, no config).
run:
	@echo "make run: building the dev stack; a first build on a fresh machine compiles about 630 packages (the standard library, gVisor's netstack, pion, OpenTelemetry): about 190 CPU-seconds, 1.5-4 min on 2 cores. Later runs start in about a second." >&2
	$(GO) run ./cmd/snowgate-devstack

## test: everything CI runs (unit, property, fuzz seeds, in-process and, as root, network-namespace tests).
test: js-deps
	$(GO) test -race -timeout 25m ./...
	$(GO) test -race -tags relay_portable ./relay

## test-short: quick unit tests, no race detector.
test-short:
	$(GO) test -short ./...

## js-deps: the official Phoenix JavaScript client used by the interop test (npm registry only).
js-deps:
	@if command -v npm >/dev/null 2>&1 && [ -f $(JSCLIENT)/package.json ]; then \
		npm ci --prefix $(JSCLIENT) --no-audit --no-fund --loglevel=error; \
	fi

## fuzz: every fuzz target for FUZZTIME each (scripts/fuzz all; `go test` alone replays the corpora).
FUZZTIME ?= 30s
fuzz:
	scripts/fuzz all $(FUZZTIME)

## fuzz-ci: three fuzz targets for 20 s each, a different three every day (CI runs it after `make test`).
fuzz-ci:
	scripts/fuzz rotate 3 20s

build:
	$(GO) build ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

bench:
	@for b in bench/*/run; do [ -x "$$b" ] && "$$b"; done
