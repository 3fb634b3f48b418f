# mimeo — build, run, test, bench.  `make` builds build/mimeo and build/libmimeo.{a,so}.
# The test build (build/asan/) uses AddressSanitizer and UndefinedBehaviorSanitizer; the
# race build (build/tsan/) ThreadSanitizer; the fuzz build (build/fuzz/) libFuzzer with clang.

CC      ?= cc
CFLAGS  ?= -O2 -g
WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wno-unused-parameter
BASEFLAGS := -std=c11 -D_GNU_SOURCE -Iinclude -pthread -fvisibility=hidden -MMD -MP $(WARN)
LIBS    := -llmdb -lmicrohttpd -lcurl -lnettle -lz -linih -lpthread -licui18n -licuuc -licudata -lpcre2-8 -lm
SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
TSAN    := -fsanitize=thread -fno-omit-frame-pointer
# Test hooks (environment variables read by the sanitized builds only, never the release one):
# MIMEO_TEST_COMMIT_DELAY_MS slows every group commit (src/store/store.c).
TESTHOOKS := -DMIMEO_TEST_HOOKS

# The library: everything but the server's HTTP front end and the command line.
LIB_SRC := $(wildcard src/common/*.c src/json/*.c src/doc/*.c src/store/*.c src/db/*.c src/repl/*.c src/auth/*.c)
# The multipart parser and writer serve the replicator too, so they live in the library.
HTTP_SRC := $(filter-out src/http/multipart.c,$(wildcard src/http/*.c))
LIB_SRC += src/http/multipart.c
SRV_SRC := $(HTTP_SRC) $(wildcard src/cli/*.c)
LIB_SRC += $(wildcard src/mesh/*.c)
LIB_SRC += $(wildcard src/query/*.c)
LIB_SRC += $(wildcard src/crdt/*.c)
LIB_SRC += $(wildcard src/js/*.c src/view/*.c)
UNIT_SRC := $(wildcard tests/unit/test_*.c)

REL_LIB_OBJ := $(LIB_SRC:%.c=build/obj/%.o)
REL_SRV_OBJ := $(SRV_SRC:%.c=build/obj/%.o)
SAN_LIB_OBJ := $(LIB_SRC:%.c=build/asan/obj/%.o)
SAN_SRV_OBJ := $(SRV_SRC:%.c=build/asan/obj/%.o)
UNIT_BIN    := $(UNIT_SRC:tests/unit/%.c=build/asan/tests/%)
TSAN_LIB_OBJ := $(LIB_SRC:%.c=build/tsan/obj/%.o)
TSAN_SRV_OBJ := $(SRV_SRC:%.c=build/tsan/obj/%.o)
TSAN_UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=build/tsan/tests/%)

DATA ?= ./data
PORT ?= 5984
BIND ?= 127.0.0.1

.PHONY: all run test test-build tsan tsan-build bench deps clean example fuzz fuzz-build
all: build/mimeo build/libmimeo.a build/libmimeo.so build/example build/mimeo-js

build/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) $(CFLAGS) -fPIC -c $< -o $@

build/asan/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) -O1 -g $(SAN) $(TESTHOOKS) -c $< -o $@

build/tsan/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) -O1 -g $(TSAN) $(TESTHOOKS) -c $< -o $@

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

# The HTTP front end as an archive too, so unit tests of its parsers (test_http_url) link
# the objects they use; the other tests pull nothing from it.
build/asan/libmimeo_http.a: $(HTTP_SRC:%.c=build/asan/obj/%.o)
	rm -f $@ && ar rcs $@ $^

build/asan/tests/%: tests/unit/%.c build/asan/libmimeo_http.a build/asan/libmimeo.a
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) -Isrc -O1 -g $(SAN) -o $@ $< build/asan/libmimeo_http.a build/asan/libmimeo.a $(LIBS)

build/tsan/libmimeo.a: $(TSAN_LIB_OBJ)
	@mkdir -p build/tsan
	rm -f $@ && ar rcs $@ $^

build/tsan/libmimeo_http.a: $(HTTP_SRC:%.c=build/tsan/obj/%.o)
	rm -f $@ && ar rcs $@ $^

build/tsan/mimeo: $(TSAN_SRV_OBJ) build/tsan/libmimeo.a
	$(CC) $(TSAN) -pthread -o $@ $(TSAN_SRV_OBJ) build/tsan/libmimeo.a $(LIBS)

build/tsan/tests/%: tests/unit/%.c build/tsan/libmimeo_http.a build/tsan/libmimeo.a
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) -Isrc -O1 -g $(TSAN) -o $@ $< build/tsan/libmimeo_http.a build/tsan/libmimeo.a $(LIBS)

# The JavaScript query server: the one C++ program of the tree (SpiderMonkey's API is C++).
# It is built without sanitizers in every build: the engine is a system library, and the
# server under test only talks to it through a socket.
MOZJS_CFLAGS = $(shell pkg-config --cflags mozjs-102 2>/dev/null)
MOZJS_LIBS   = $(shell pkg-config --libs mozjs-102 2>/dev/null)
build/gen/js_dispatch.cpp: src/js/server/dispatch.js
	@mkdir -p $(dir $@)
	{ echo 'extern const char mimeo_js_dispatch_source[];'; \
	  echo 'const char mimeo_js_dispatch_source[] = R"MIMEOJS('; cat $<; echo ')MIMEOJS";'; } > $@

build/mimeo-js: src/js/server/main.cpp build/gen/js_dispatch.cpp
	$(CXX) -std=c++17 -O2 -g -Wall -Wextra -Wno-unused-parameter -Wno-dangling-pointer \
	  $(MOZJS_CFLAGS) -o $@ $^ $(MOZJS_LIBS)

deps:
	@scripts/setup.sh

# Installs what is missing, builds, and serves on $(BIND):$(PORT) with data in $(DATA).
run:
	@scripts/setup.sh
	@$(MAKE) --no-print-directory all
	./build/mimeo serve --data $(DATA) --bind $(BIND) --port $(PORT) --admin-file $(DATA)/admin.password

test-build: build/asan/mimeo build/asan/example build/mimeo build/mimeo-js $(UNIT_BIN) tsan-build fuzz-build

# The whole suite (tests/run.sh): the unit tests and every interop suite under ASan+UBSan;
# the unit tests and the concurrency-heavy interop suites under TSan (TSAN_INTEROP below);
# each libFuzzer driver for FUZZ_SECONDS. A stage whose prerequisite is missing (a binary not
# built, clang or node absent) and every skipped test count as failures.
test:
	@scripts/setup.sh --test
	@$(MAKE) --no-print-directory -j2 test-build
	@FUZZ_SECONDS=$(FUZZ_SECONDS) TSAN_INTEROP="$(TSAN_INTEROP)" tests/run.sh

# ThreadSanitizer: the unit tests (group commit from 16 threads, map growth under readers,
# job isolation) and these interop suites, chosen for their threads: feeds (waiting feeds
# woken by commits), replication_continuous (replicator workers, _replicator jobs) and
# parked_feeds (feeds taken out of the event threads, stepped by workers and the park
# thread), replication_mimeo (one-shot jobs, restarts and retries), replication_scheduler (jobs
# waiting for, taking and giving up max_jobs slots), bulk_async (_bulk_docs finished on the
# writer thread and handed back to workers). Races fail the run; there are no
# suppressions.
TSAN_INTEROP ?= feeds parked_feeds replication_continuous replication_mimeo replication_scheduler bulk_async
tsan-build: build/tsan/mimeo $(TSAN_UNIT_BIN)

tsan: tsan-build
	@TSAN_INTEROP="$(TSAN_INTEROP)" tests/run.sh tsan

bench:
	@scripts/setup.sh --bench
	@$(MAKE) --no-print-directory -j2 all build/loadgen build/json_speed build/store_ceiling
	@bench/run.sh
	@build/json_speed
	@node bench/mesh_detect.mjs
	@node bench/mesh_converge.mjs
	@node bench/mesh_catchup.mjs
	@BURST=0 node bench/mesh_scale.mjs 8 1000

build/loadgen: bench/loadgen.c build/libmimeo.a
	$(CC) $(BASEFLAGS) $(CFLAGS) -o $@ bench/loadgen.c $(LIBS)

# LMDB alone with the store's layout: the ceiling every write workload is measured against.
build/store_ceiling: bench/store_ceiling.c
	@mkdir -p build
	$(CC) -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) -o $@ $< -llmdb

# The JSON parser's throughput on a 10 MB _bulk_docs body (release build).
build/json_speed: bench/json_speed.c build/libmimeo.a
	$(CC) $(BASEFLAGS) -Isrc $(CFLAGS) -o $@ $< build/libmimeo.a $(LIBS)

# libFuzzer drivers for the parsers (tests/fuzz), each run for FUZZ_SECONDS from its seed
# corpus (tests/fuzz/corpus/<driver>/; new finds go to build/fuzz/<driver>.corpus). Needs
# clang (scripts/setup.sh --test installs it); `make test` runs them too.
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 20
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -Iinclude -Isrc -g -O1 -MMD -MP $(FUZZ_SAN)
FUZZERS := $(patsubst tests/fuzz/%.c,build/fuzz/%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_OBJ := $(LIB_SRC:%.c=build/fuzz/obj/%.o) $(HTTP_SRC:%.c=build/fuzz/obj/%.o) build/fuzz/obj/src/cli/config.o

build/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

build/fuzz/libmimeo_fuzz.a: $(FUZZ_OBJ)
	rm -f $@ && ar rcs $@ $^

build/fuzz/%: tests/fuzz/%.c build/fuzz/libmimeo_fuzz.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< build/fuzz/libmimeo_fuzz.a $(LIBS) $(FUZZ_LIBS)

# yajl, the parser mimeo's own replaced, stays only as the differential oracle of this driver.
build/fuzz/fuzz_json_diff: FUZZ_LIBS := -lyajl

# Without clang there is nothing to build here; tests/run.sh reports the fuzz stage failed.
fuzz-build:
	@if command -v $(FUZZ_CC) >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory $(FUZZERS); \
	else echo "fuzz: $(FUZZ_CC) not found, fuzz drivers not built"; fi

fuzz: fuzz-build
	@FUZZ_SECONDS=$(FUZZ_SECONDS) tests/run.sh fuzz

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
