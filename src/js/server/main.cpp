// mimeo-js: a CouchDB query server on SpiderMonkey 102.
//
// It speaks CouchDB's query server protocol: one JSON array per line on stdin, one JSON
// reply per line on stdout (plus ["log", …] lines). The protocol itself lives in
// dispatch.js; this file is the host: it sets up the engine with a memory cap, gives the
// script its only two ways out (write a line, read the next one), and runs the loop.
// Functions get no file, network or process access because the engine exposes none: the
// only natives are the two below. Time limits are enforced by the caller, which kills this
// process (CouchDB's os_process_timeout semantics).
//
// This is the one C++ program of the tree (SpiderMonkey's API is C++).

#include <jsapi.h>
#include <js/CompilationAndEvaluation.h>
#include <js/Conversions.h>
#include <js/ErrorReport.h>
#include <js/Exception.h>
#include <js/Initialization.h>
#include <js/PropertyAndElement.h>
#include <js/SourceText.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <sys/resource.h>
#include <ctime>
#include <unistd.h>

extern const char mimeo_js_dispatch_source[];

namespace {

JSClass global_class = {"global", JSCLASS_GLOBAL_FLAGS, &JS::DefaultGlobalClassOps,
                         nullptr, nullptr, nullptr};

// Lines longer than this are refused: a document over mimeo's own size cap cannot reach us,
// so a longer line means a confused peer.
constexpr size_t kMaxLine = 256u * 1024 * 1024;

// Replies are flushed when the input runs dry (read_line), so requests sent together are
// answered in one write, and at least every few milliseconds, so a client waiting for the
// first of many replies is never kept past its timeout by the ones after it.
uint64_t last_flush_ms = 0;

uint64_t now_ms() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

bool flush_out() {
    last_flush_ms = now_ms();
    return fflush(stdout) == 0;
}

bool write_line(const char *s, size_t n) {
    if (fwrite(s, 1, n, stdout) != n || fputc('\n', stdout) == EOF) return false;
    return now_ms() - last_flush_ms < 5 || flush_out();
}

// _qs_write(string): one line to stdout, flushed (the caller reads line by line).
bool native_write(JSContext *cx, unsigned argc, JS::Value *vp) {
    JS::CallArgs args = JS::CallArgsFromVp(argc, vp);
    JS::RootedString str(cx, JS::ToString(cx, args.get(0)));
    if (!str) return false;
    JS::UniqueChars utf8 = JS_EncodeStringToUTF8(cx, str);
    if (!utf8) return false;
    if (!write_line(utf8.get(), strlen(utf8.get()))) {
        JS_ReportErrorASCII(cx, "stdout closed");
        return false;
    }
    args.rval().setUndefined();
    return true;
}

// Reads one line from stdin into out (without the newline). false at end of input. Input is
// read in large chunks; before waiting for more, the replies written so far are flushed.
char in_buf[1 << 16];
size_t in_pos = 0, in_len = 0;

bool read_line(std::string &out) {
    out.clear();
    for (;;) {
        if (in_pos == in_len) {
            if (!flush_out()) return false;
            ssize_t n;
            do {
                n = read(0, in_buf, sizeof in_buf);
            } while (n < 0 && errno == EINTR);
            if (n <= 0) return !out.empty();
            in_pos = 0;
            in_len = static_cast<size_t>(n);
        }
        const char *start = in_buf + in_pos;
        const char *nl = static_cast<const char *>(memchr(start, '\n', in_len - in_pos));
        size_t take = nl ? static_cast<size_t>(nl - start) : in_len - in_pos;
        if (out.size() + take > kMaxLine) {
            fprintf(stderr, "mimeo-js: input line over %zu bytes\n", kMaxLine);
            exit(2);
        }
        out.append(start, take);
        in_pos += take + (nl ? 1 : 0);
        if (nl) return true;
    }
}

std::string pending_exception(JSContext *cx) {
    JS::ExceptionStack stack(cx);
    if (!JS::StealPendingExceptionStack(cx, &stack)) return "unknown error (uncatchable)";
    JS::ErrorReportBuilder report(cx);
    if (!report.init(cx, stack, JS::ErrorReportBuilder::WithSideEffects))
        return "unknown error";
    return report.toStringResult().c_str();
}

bool evaluate(JSContext *cx, const char *source, const char *file, JS::MutableHandleValue rv) {
    JS::CompileOptions opts(cx);
    opts.setFileAndLine(file, 1);
    JS::SourceText<mozilla::Utf8Unit> text;
    if (!text.init(cx, source, strlen(source), JS::SourceOwnership::Borrowed)) return false;
    return JS::Evaluate(cx, opts, text, rv);
}

int usage() {
    fprintf(stderr, "usage: mimeo-js [--max-heap-mb N]\n"
                    "A CouchDB query server: JSON lines on stdin, replies on stdout.\n");
    return 2;
}

int serve(JSContext *cx) {
    JS::RealmOptions realm_opts;
    JS::RootedObject global(cx, JS_NewGlobalObject(cx, &global_class, nullptr,
                                                   JS::FireOnNewGlobalHook, realm_opts));
    if (!global) return 1;
    JSAutoRealm realm(cx, global);
    if (!JS_DefineFunction(cx, global, "_qs_write", native_write, 1, 0)) return 1;

    JS::RootedValue dispatch(cx);
    if (!evaluate(cx, mimeo_js_dispatch_source, "dispatch.js", &dispatch)) {
        fprintf(stderr, "mimeo-js: %s\n", pending_exception(cx).c_str());
        return 1;
    }
    if (!dispatch.isObject() || !JS::IsCallable(&dispatch.toObject())) {
        fprintf(stderr, "mimeo-js: dispatch.js did not yield a function\n");
        return 1;
    }

    std::string line;
    while (read_line(line)) {
        JS::RootedString arg(cx, JS_NewStringCopyUTF8N(cx, JS::UTF8Chars(line.data(), line.size())));
        JS::RootedValueArray<1> argv(cx);
        JS::RootedValue reply(cx);
        bool ok = arg != nullptr;
        if (ok) {
            argv[0].setString(arg);
            ok = JS_CallFunctionValue(cx, global, dispatch, argv, &reply);
        }
        if (!ok) {
            // dispatch.js turns every error of a user function into a protocol reply; what
            // lands here is the engine itself failing (out of memory): the caller must
            // replace this process, as CouchDB does with a crashed couchjs.
            std::string why = JS_IsExceptionPending(cx) ? pending_exception(cx) : "out of memory";
            fprintf(stderr, "mimeo-js: fatal: %s\n", why.c_str());
            std::string msg = "[\"error\",\"os_process_error\",\"query server failed: ";
            for (char c : why) {
                if (c == '"' || c == '\\') msg.push_back('\\');
                if (static_cast<unsigned char>(c) >= 0x20) msg.push_back(c);
            }
            msg += "\"]";
            write_line(msg.data(), msg.size());
            return 1;
        }
        // Keep the heap small between commands; a view build sends thousands of documents.
        JS_MaybeGC(cx);
    }
    return 0;
}

}  // namespace

int main(int argc, char **argv) {
    long max_heap_mb = 256;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--max-heap-mb") == 0 && i + 1 < argc) {
            char *end;
            errno = 0;
            max_heap_mb = strtol(argv[++i], &end, 10);
            if (errno || *end || max_heap_mb < 16 || max_heap_mb > 65536) return usage();
        } else {
            return usage();
        }
    }
    // The memory cap. The GC parameter alone does not bound an array's elements (they are
    // malloc'd outside the GC heap), so the kernel enforces the total: RLIMIT_DATA counts
    // private writable memory and, unlike RLIMIT_AS, not the engine's large PROT_NONE
    // reservations. Past it an allocation fails, the engine throws "out of memory", and
    // dispatch.js logs and skips the document as CouchDB does.
    struct rlimit data_limit;
    data_limit.rlim_cur = data_limit.rlim_max =
        (static_cast<rlim_t>(max_heap_mb) + 32) * 1024 * 1024;
    if (setrlimit(RLIMIT_DATA, &data_limit) != 0) perror("mimeo-js: setrlimit");
    if (!JS_Init()) return 1;
    int rc = 1;
    JSContext *cx = JS_NewContext(static_cast<uint32_t>(max_heap_mb) * 1024u * 1024u);
    if (cx && JS::InitSelfHostedCode(cx)) {
        // The heap cap is the per-process memory cap: an allocation past it throws "out of
        // memory", which ends this process cleanly instead of growing until the kernel acts.
        JS_SetGCParameter(cx, JSGC_MAX_BYTES, static_cast<uint32_t>(max_heap_mb) * 1024u * 1024u);
        rc = serve(cx);
    }
    if (cx) JS_DestroyContext(cx);
    JS_ShutDown();
    return rc;
}
