# pgwasm: every entry point for the Go, Node and browser toolchains.
# `make` alone lists the targets.

.DEFAULT_GOAL := help
SHELL := /bin/bash

GO      ?= go
BUILD   ?= build
BIN     := $(BUILD)/bin
PGWASM  := $(BIN)/pgwasm
AGENT   := $(BIN)/pgwasm-agent
IMAGE   ?= $(BUILD)/image
MEMORY  ?= 128
LISTEN  ?= 127.0.0.1:8080

# Downloads and build results, shared by every checkout on the machine
# (docs/image.md, "Caching"). As root, image builds run as the pgwasm-build
# user (scripts/as-builder.sh), so the cache is that user's.
ifeq ($(shell id -u),0)
PGWASM_CACHE ?= /var/lib/pgwasm-build/.cache/pgwasm
else
PGWASM_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/pgwasm
endif
export PGWASM_CACHE
AS_BUILDER := scripts/as-builder.sh $(BUILD) --

.PHONY: help setup build web package image lock snapshot run test test-go test-vm test-web test-e2e fuzz bench clean clean-cache FORCE

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## install what the build and tests need (apt packages, npm modules); idempotent
	@scripts/setup.sh

build: $(PGWASM) $(AGENT) ## build the pgwasm binary and the guest agent

web: setup ## bundle the browser app (web/) into internal/web/dist with esbuild's Go API
	$(GO) run ./internal/web/cmd/webbuild -web web -out internal/web/dist

# The npm package (web/package, docs/web.md "Use it from your app"): tsc
# emits the API's declarations, webbuild adds the same bundle as /pgwasm.js,
# v86.wasm and xterm.css, npm pack writes the tarball.
PKG_VERSION = $(shell node -p 'require("./web/package/package.json").version')
PACKAGE = $(BUILD)/pgwasm-$(PKG_VERSION).tgz

package: setup ## build the npm package pgwasm into build/pgwasm-<version>.tgz
	rm -rf $(BUILD)/package-types
	cd web && npx tsc -p package/tsconfig.json --outDir $(abspath $(BUILD))/package-types
	$(GO) run ./internal/web/cmd/webbuild -web web -package web/package -types $(BUILD)/package-types
	cd web/package && npm pack --silent --pack-destination $(abspath $(BUILD)) >/dev/null
	@ls -l $(PACKAGE)

$(PGWASM): FORCE web
	@mkdir -p $(BIN)
	$(GO) build -trimpath -o $@ ./cmd/pgwasm

# The agent runs inside the 32-bit VM: a static linux/386 binary. GO386=sse2
# matches v86's CPU (SSE2/SSE3, no SSE4). No VCS stamp: the agent's bytes are
# an input of the image's cache key, and a commit alone must not change them.
$(AGENT): FORCE
	@mkdir -p $(BIN)
	CGO_ENABLED=0 GOOS=linux GOARCH=386 GO386=sse2 $(GO) build -trimpath -buildvcs=false -ldflags='-s -w' -o $@ ./guest/agent

image: setup build ## build the VM image into build/image as an ordinary user (a cache hit when inputs are unchanged)
	$(AS_BUILDER) $(PGWASM) image build --out $(IMAGE) --agent $(AGENT)

# The lock is embedded in the pgwasm binary: after `make lock`, `make image`
# rebuilds both. The pipeline user writes into build/, then the file is
# copied into the source tree for review.
lock: setup build ## lock the image's Debian packages at what the archive offers today (internal/image/packages.lock; review the diff)
	$(AS_BUILDER) $(PGWASM) image lock --file $(abspath $(BUILD))/packages.lock
	cp $(BUILD)/packages.lock internal/image/packages.lock

snapshot: image ## boot the image headless and save state-$(MEMORY).bin.zst (cached)
	$(AS_BUILDER) $(PGWASM) image snapshot --image $(IMAGE) --memory $(MEMORY)

run: snapshot ## build what is missing, then serve the page on http://$(LISTEN)
	$(PGWASM) serve --listen $(LISTEN) --image $(IMAGE)

# The static binary (no C library in the image) goes into an OCI image
# layout with the VM image baked in (docs/deploy.md, "The container image").
.PHONY: container
container: snapshot ## write the OCI image layout of pgwasm serve (static binary + VM image) into build/container; no container engine
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/pgwasm-static ./cmd/pgwasm
	$(PGWASM) image container --binary $(BIN)/pgwasm-static --image $(IMAGE) --out $(BUILD)/container

# The four suites share nothing but read-only build outputs (ports are drawn
# at random below the ephemeral range, files go to temporary directories),
# so they can run side by side. Each but test-go keeps a core busy with the
# emulator and wants another for Chromium, the harness or the host's
# PostgreSQL, so one suite per two cores: a 2-core machine runs them in
# turn. With TEST_JOBS > 1 each suite's output is printed whole when it ends.
TEST_JOBS ?= $(shell n=$$(nproc); echo $$(( n / 2 > 1 ? n / 2 : 1 )))

test: setup image ## run the whole suite: Go unit tests, the real VM, the browser app, the scenarios (TEST_JOBS at once)
	$(MAKE) --no-print-directory build snapshot package
	$(MAKE) --no-print-directory -j$(TEST_JOBS) $(if $(filter-out 1,$(TEST_JOBS)),--output-sync=target) test-go test-vm test-web test-e2e

# The image build's cache lets the kmod tests run on the real Debian kernel's
# modules and the extension build test reuse the packages it downloaded.
KMODS = $(firstword $(wildcard $(PGWASM_CACHE)/kernel/*/lib/modules/*))

test-go: build ## Go unit and loopback integration tests (no VM), fuzz seed corpora included
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	PGWASM_TEST_MODULES=$(abspath $(KMODS)) PGWASM_TEST_APT_DIR=$(PGWASM_CACHE)/apt \
	PGWASM_TEST_CACHE_DIR=$(PGWASM_CACHE) $(GO) test -count=1 ./...

test-vm: snapshot ## boot the real VM (headless v86 in Node) and test it end to end, the image build's VM step and a real VM behind the HAProxy cluster
	PGWASM_IMAGE=$(abspath $(IMAGE)) PGWASM_BIN=$(abspath $(PGWASM)) $(GO) test -count=1 -timeout 30m -v ./test/vm/...
	PGWASM_IMAGE=$(abspath $(IMAGE)) $(GO) test -count=1 -timeout 10m -v -run 'VMStepGuest|BootExportTree|ClusterRealVM|StreamRealVM' ./internal/image/ ./internal/vm/ ./test/cluster/

test-web: build snapshot package ## browser tests: Playwright driving Debian's Chromium against pgwasm serve, and the npm package
	cd web && npx tsc -p .
	PGWASM_IMAGE=$(abspath $(IMAGE)) PGWASM_BIN=$(abspath $(PGWASM)) PGWASM_PACKAGE=$(abspath $(PACKAGE)) node web/test/run.mjs

test-e2e: build snapshot ## scenarios of issue #5: real serve + VM + host PostgreSQL 15 (about 9 min)
	PGWASM_IMAGE=$(abspath $(IMAGE)) PGWASM_BIN=$(abspath $(PGWASM)) $(GO) test -count=1 -timeout 40m -v ./test/e2e/

FUZZTIME ?= 20s
fuzz: ## run every fuzz target for FUZZTIME each
	@scripts/fuzz.sh $(FUZZTIME)

bench: snapshot ## measure us side by side with PGlite and native PostgreSQL; write docs/BENCHMARKS.md (40-50 min on a quiet 2-core machine)
	PGWASM_IMAGE=$(abspath $(IMAGE)) PGWASM_BIN=$(abspath $(PGWASM)) $(GO) run ./cmd/pgwasm-bench -out docs/BENCHMARKS.md

clean: ## remove build outputs (keeps the shared cache, see clean-cache)
	rm -rf $(BUILD)

clean-cache: ## empty the download and build cache shared by all checkouts (PGWASM_CACHE)
	rm -rf $(PGWASM_CACHE)

FORCE:
