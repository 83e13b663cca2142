# moegrid: common tasks. `make help` lists them.
GO ?= go
PKGS ?= ./...

.PHONY: help build test race check lint generate verify-generate bench fuzz image e2e

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## build bin/moegrid
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/moegrid ./cmd/moegrid

test: ## vet and run every test
	$(GO) vet $(PKGS)
	$(GO) test $(PKGS)

race: ## run every test with the race detector (what CI runs)
	$(GO) vet $(PKGS)
	$(GO) test -race $(PKGS)

lint: ## go vet, gofmt and staticcheck
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l . | tee /dev/stderr)" || (echo "gofmt: files above need formatting" && exit 1)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

check: verify-generate lint race ## what CI runs before the deployment tests: generated code fresh, gofmt, vet, staticcheck, all tests with -race

generate: ## regenerate the gRPC code from proto/moegrid/v1/*.proto (needs protoc) and the SIMD tile kernels
	$(GO) generate ./proto/... ./model/kernel/

verify-generate: generate ## fail if the committed generated code is stale
	@git diff --exit-code -- proto/ model/kernel/tile_amd64.s || (echo "generated code is stale: run make generate and commit" && exit 1)

bench: ## kernel and forward-pass benchmarks
	$(GO) test -run='^$$' -bench=. -benchmem ./model/... ./router/...

fuzz: ## run each fuzz target for FUZZTIME (default 30s)
	@for spec in \
	  model/safetensors:FuzzParseHeader model/safetensors:FuzzParseIndex \
	  model/tokenizer:FuzzEncode model/tokenizer:FuzzParse \
	  model:FuzzParseConfig proto/moegrid/v1:FuzzDecodeActivations expertnode:FuzzValidate \
	  model/gguf:FuzzParse model:FuzzGGUFMetadata model/kernel:FuzzMatMulPaths model/kernel:FuzzQuantRow \
	  router:FuzzParseRequest; do \
	  pkg=$${spec%%:*}; fn=$${spec##*:}; \
	  $(GO) test -run='^$$' -fuzz="^$$fn$$" -fuzztime=$${FUZZTIME:-30s} ./$$pkg || exit 1; \
	done

image: ## build the images moegrid:dev and moegrid-etcd:dev (FROM scratch; IMAGE=, ETCD_IMAGE= rename them)
	deploy/docker/build.sh

e2e: ## deployment tests: manifests on a real Kubernetes control plane, the cluster in containers
	deploy/k8stest/e2e.sh
