# mimeo — build, run, test, bench.  `make` builds build/mimeo and build/libmimeo.{a,so}.
# The test build (build/asan/) uses AddressSanitizer and UndefinedBehaviorSanitizer.

CC      ?= cc
CFLAGS  ?= -O2 -g
WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wno-unused-parameter
BASEFLAGS := -std=c11 -D_GNU_SOURCE -Iinclude -pthread -fvisibility=hidden -MMD -MP $(WARN)
LIBS    := -llmdb -lyajl -lmicrohttpd -lcurl -lnettle -linih -lpthread
SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

# The library: everything but the server's HTTP front end and the command line.
LIB_SRC := $(wildcard src/common/*.c src/json/*.c src/doc/*.c src/store/*.c src/db/*.c src/repl/*.c)
SRV_SRC := $(wildcard src/http/*.c src/cli/*.c)
UNIT_SRC := $(wildcard tests/unit/test_*.c)

REL_LIB_OBJ := $(LIB_SRC:%.c=build/obj/%.o)
REL_SRV_OBJ := $(SRV_SRC:%.c=build/obj/%.o)
SAN_LIB_OBJ := $(LIB_SRC:%.c=build/asan/obj/%.o)
SAN_SRV_OBJ := $(SRV_SRC:%.c=build/asan/obj/%.o)
UNIT_BIN    := $(UNIT_SRC:tests/unit/%.c=build/asan/tests/%)

DATA ?= ./data
PORT ?= 5984
BIND ?= 127.0.0.1

.PHONY: all run test test-build bench deps clean example fuzz
all: build/mimeo build/libmimeo.a build/libmimeo.so build/example

build/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) $(CFLAGS) -fPIC -c $< -o $@

build/asan/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) -O1 -g $(SAN) -c $< -o $@

build/libmimeo.a: $(REL_LIB_OBJ)
	@mkdir -p build
	rm -f $@ && ar rcs $@ $^

build/libmimeo.so: $(REL_LIB_OBJ)
	$(CC) -shared -o $@ $^ $(LIBS)

build/mimeo: $(REL_SRV_OBJ) build/libmimeo.a
	$(CC) $(CFLAGS) -pthread -o $@ $(REL_SRV_OBJ) build/libmimeo.a $(LIBS)

build/example: examples/embed.c build/libmimeo.a
	$(CC) $(BASEFLAGS) $(CFLAGS) -o $@ $< build/libmimeo.a $(LIBS)

build/asan/libmimeo.a: $(SAN_LIB_OBJ)
	@mkdir -p build/asan
	rm -f $@ && ar rcs $@ $^

build/asan/mimeo: $(SAN_SRV_OBJ) build/asan/libmimeo.a
	$(CC) $(SAN) -pthread -o $@ $(SAN_SRV_OBJ) build/asan/libmimeo.a $(LIBS)

build/asan/example: examples/embed.c build/asan/libmimeo.a
	$(CC) $(BASEFLAGS) -O1 -g $(SAN) -o $@ $< build/asan/libmimeo.a $(LIBS)

build/asan/tests/%: tests/unit/%.c build/asan/libmimeo.a
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) -Isrc -O1 -g $(SAN) -o $@ $< build/asan/libmimeo.a $(LIBS)

deps:
	@scripts/setup.sh

# Installs what is missing, builds, and serves on $(BIND):$(PORT) with data in $(DATA).
run:
	@scripts/setup.sh
	@$(MAKE) --no-print-directory all
	./build/mimeo serve --data $(DATA) --bind $(BIND) --port $(PORT)

test-build: build/asan/mimeo build/asan/example $(UNIT_BIN)

# The whole suite: C unit tests and Node interop tests under sanitizers.
test:
	@scripts/setup.sh --test
	@$(MAKE) --no-print-directory -j2 test-build
	@tests/run.sh

bench:
	@scripts/setup.sh --bench
	@$(MAKE) --no-print-directory -j2 all build/loadgen build/store_ceiling
	@bench/run.sh

build/loadgen: bench/loadgen.c build/libmimeo.a
	$(CC) $(BASEFLAGS) $(CFLAGS) -o $@ bench/loadgen.c $(LIBS)

# LMDB alone with the store's layout: the ceiling every write workload is measured against.
build/store_ceiling: bench/store_ceiling.c
	@mkdir -p build
	$(CC) -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) -o $@ $< -llmdb

# libFuzzer drivers for the parsers (tests/fuzz), each run for FUZZ_SECONDS; needs clang.
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 30
FUZZ_FLAGS := -std=c11 -D_GNU_SOURCE -Iinclude -Isrc -g -O1 -fsanitize=fuzzer,address,undefined
FUZZERS := $(patsubst tests/fuzz/%.c,build/fuzz/%,$(wildcard tests/fuzz/fuzz_*.c))

build/fuzz/%: tests/fuzz/%.c $(LIB_SRC) $(wildcard src/http/*.c)
	@mkdir -p build/fuzz
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(LIB_SRC) $(wildcard src/http/*.c) $(LIBS)

fuzz: $(FUZZERS)
	@for f in $(FUZZERS); do \
	  mkdir -p $$f.corpus && echo "== $$f ($(FUZZ_SECONDS) s)"; \
	  if ! $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $$f.corpus > $$f.log 2>&1; then \
	    tail -n 40 $$f.log; echo "fuzz: $$f failed (crash input saved in the current folder)"; exit 1; \
	  fi; grep -E 'stat::(number_of_executed_units|new_units_added)' $$f.log; \
	done

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
