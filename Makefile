# sagahost: `make run` builds and runs the host on sagas/; `make test` builds and runs every test
# (the specs twice: on SQLite, then on PostgreSQL in the tests' private cluster, tests/pg-cluster.sh).
BUILD ?= build
DEBUG_BUILD ?= build-debug
JOBS ?= 2
LISTEN ?= 127.0.0.1:7070
DB ?= sagahost.db
FUZZ_BUILD ?= build-fuzz
FUZZ_TARGETS ?= envelope duration script http
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 10

.PHONY: all deps test-deps build debug run test test-c test-spec test-debug fuzz-build fuzz fuzz-smoke clean

all: build

deps:
	@bash .ci/deps.sh

test-deps:
	@bash .ci/deps.sh --test

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

debug: deps
	@cmake -S . -B $(DEBUG_BUILD) -DCMAKE_BUILD_TYPE=Debug -DSG_SANITIZE=ON >/dev/null
	@cmake --build $(DEBUG_BUILD) -j$(JOBS)

run: build
	./$(BUILD)/sagahost run --db $(DB) --listen $(LISTEN) --demo sagas

test: test-deps build
	bash tests/amqp-broker.sh
	cd $(BUILD) && ctest --output-on-failure
	SAGAHOST=$(CURDIR)/$(BUILD)/sagahost bash tests/run-specs.sh
	SG_STORE=postgres SAGAHOST=$(CURDIR)/$(BUILD)/sagahost bash tests/run-specs.sh

# the same tests on the ASan/UBSan + LUA_USE_APICHECK build (the transports' own specs are left out
# there: transports_spec runs each broker transport's end-to-end scenarios under the sanitizers)
test-debug: test-deps build debug
	bash tests/amqp-broker.sh
	cd $(DEBUG_BUILD) && ctest --output-on-failure
	SAGAHOST=$(CURDIR)/$(DEBUG_BUILD)/sagahost SG_SLOW=1 SG_SPEC_SKIP="kafka_spec.lua amqp1_spec.lua" bash tests/run-specs.sh
	SG_STORE=postgres SAGAHOST=$(CURDIR)/$(DEBUG_BUILD)/sagahost SG_SLOW=1 bash tests/run-specs.sh \
	  tests/spec/pg_store_spec.lua tests/spec/hosts_spec.lua tests/spec/multihost_spec.lua tests/spec/api_spec.lua \
	  tests/spec/amqp_spec.lua tests/spec/events_spec.lua tests/spec/search_spec.lua
	$(MAKE) fuzz-smoke

# libFuzzer targets (tests/fuzz/README.md): a separate clang build with ASan/UBSan
fuzz-build:
	@bash .ci/deps.sh --fuzz
	@cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSG_FUZZ=ON >/dev/null
	@cmake --build $(FUZZ_BUILD) -j$(JOBS) --target $(addprefix fuzz_,$(FUZZ_TARGETS))

# each target for FUZZ_SECONDS (after replaying its regression inputs)
fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do bash tests/fuzz/run.sh $(FUZZ_BUILD) $$t $(FUZZ_SECONDS) || exit 1; done

# what CI runs: the regression inputs and FUZZ_SMOKE_SECONDS of fuzzing per target
fuzz-smoke: fuzz-build
	@for t in $(FUZZ_TARGETS); do bash tests/fuzz/run.sh $(FUZZ_BUILD) $$t $(FUZZ_SMOKE_SECONDS) || exit 1; done

clean:
	rm -rf $(BUILD) $(DEBUG_BUILD) $(FUZZ_BUILD)
