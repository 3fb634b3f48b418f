// The query server protocol, in JavaScript, run by main.cpp.
//
// The script evaluates to one function: it takes a request line (a JSON array) and writes
// the reply line(s) through _qs_write. Everything of ours is kept in this closure so a design
// function can only reach the helpers CouchDB documents (emit, sum, log, toJSON, isArray,
// require). Protocol: docs.couchdb.org "Query Server Protocol".
(function () {
  "use strict";
  var write = _qs_write;
  delete globalThis._qs_write;         // design functions must not write protocol lines

  var config = {};                      // from ["reset", {reduce_limit, timeout}]
  var mapFuns = [];                     // add_fun, in order
  var viewLib = null;                   // add_lib: the views.lib object of the ddoc
  var ddocs = Object.create(null);      // "ddoc new": id → {doc, compiled: Map, modules}
  var emitted = null;                   // rows of the map function running now

  function QSError(name, reason) { this.qsName = name; this.qsReason = reason; }

  function reply(value) { write(JSON.stringify(value)); }

  function logLine(message) {
    if (typeof message !== "string") message = JSON.stringify(message);
    write(JSON.stringify(["log", String(message)]));
  }

  function errorText(e) {
    if (e && typeof e === "object") {
      if (e instanceof Error) return e.name + ": " + e.message;
      try { return JSON.stringify(e); } catch (ignored) { /* cyclic */ }
    }
    return String(e);
  }

  // ---- CommonJS: modules are strings inside an object (views.lib, or the whole ddoc) ------
  function makeRequire(root, cache, baseParts) {
    return function require(name) {
      if (typeof name !== "string") throw new Error("require() needs a module path");
      var parts = name.split("/");
      var path = parts[0] === "." || parts[0] === ".." ? baseParts.slice() : [];
      for (var i = 0; i < parts.length; i++) {
        var p = parts[i];
        if (p === "" || p === ".") continue;
        if (p === "..") {
          if (path.length === 0) throw new Error("invalid require path: " + name);
          path.pop();
        } else {
          path.push(p);
        }
      }
      var key = path.join("/");
      if (Object.prototype.hasOwnProperty.call(cache, key)) return cache[key].exports;
      var source = root;
      for (var j = 0; j < path.length; j++) {
        if (source === null || typeof source !== "object" ||
            !Object.prototype.hasOwnProperty.call(source, path[j])) {
          throw new Error("module not found: " + name);
        }
        source = source[path[j]];
      }
      if (typeof source !== "string") throw new Error("module not found: " + name);
      var module = { id: key, exports: {} };
      cache[key] = module;
      var wrapper = compile("function (module, exports, require) {\n" + source + "\n}", key);
      try {
        wrapper.call(module.exports, module, module.exports,
                     makeRequire(root, cache, path.slice(0, -1)));
      } catch (e) {
        delete cache[key];
        throw e;
      }
      return module.exports;
    };
  }

  function noRequire(name) {
    throw new Error("require('" + name + "'): no such module here");
  }

  // The design function's source is an expression; parentheses make a function declaration
  // one, and the newline keeps a trailing line comment from eating the closing parenthesis.
  function compile(source, name, require) {
    if (typeof source !== "string") {
      throw new QSError("compilation_error", "Expression does not eval to a function. (" +
                        String(source) + ")");
    }
    var fn;
    try {
      fn = (new Function("require", "return (" + source + "\n);"))(require || noRequire);
    } catch (e) {
      throw new QSError("compilation_error", errorText(e) + " (" + source + ")");
    }
    if (typeof fn !== "function") {
      throw new QSError("compilation_error", "Expression does not eval to a function. (" +
                        source + ")");
    }
    return fn;
  }

  // ---- the helpers design functions see ----------------------------------------------------
  globalThis.emit = function emit(key, value) {
    if (emitted === null) throw new Error("emit() called outside a map function");
    emitted.push([key === undefined ? null : key, value === undefined ? null : value]);
  };
  globalThis.sum = function sum(values) {
    var total = 0;
    for (var i = 0; i < values.length; i++) total += values[i];
    return total;
  };
  globalThis.log = logLine;
  globalThis.toJSON = function toJSON(value) { return JSON.stringify(value); };
  globalThis.isArray = function isArray(value) { return Array.isArray(value); };

  // ---- views ------------------------------------------------------------------------------
  function mapDoc(doc) {
    var out = [];
    for (var i = 0; i < mapFuns.length; i++) {
      emitted = [];
      try {
        mapFuns[i](doc);
        out.push(emitted);
      } catch (e) {
        // CouchDB: a map function that throws skips this document for this view only.
        logLine("function raised exception (" + errorText(e) + ") with doc._id " +
                (doc && doc._id));
        out.push([]);
      }
      emitted = null;
    }
    return out;
  }

  function checkReduceLimit(results, inputLength) {
    if (!config.reduce_limit) return;
    var text = JSON.stringify(results);
    // A reduction must shrink its input; one that does not would make every b-tree level
    // as big as the data (CouchDB's reduce_limit rule).
    if (text.length > 200 && text.length * 2 > inputLength) {
      throw new QSError("reduce_overflow_error",
                        "Reduce output must shrink more rapidly: Current output: '" +
                        text.slice(0, 100) + "'... (first 100 of " + text.length + " bytes)");
    }
  }

  function runReduce(sources, keys, values, rereduce, inputLength) {
    var results = [];
    for (var i = 0; i < sources.length; i++) {
      var fn = compile(sources[i], "reduce", viewLib ? makeRequire({ views: { lib: viewLib } }, {}, []) : null);
      try {
        results.push(fn(keys, values, rereduce));
      } catch (e) {
        throw new QSError("reduce_error", errorText(e));
      }
    }
    for (var j = 0; j < results.length; j++) if (results[j] === undefined) results[j] = null;
    checkReduceLimit(results, inputLength);
    return [true, results];
  }

  // ---- design documents ---------------------------------------------------------------------
  function ddocFunction(entry, path) {
    var key = path.join("/");
    var fn = entry.compiled.get(key);
    if (fn) return fn;
    var source = entry.doc;
    for (var i = 0; i < path.length; i++) {
      if (source === null || typeof source !== "object" ||
          !Object.prototype.hasOwnProperty.call(source, path[i])) {
        throw new QSError("not_found", "missing function " + path.join(".") + " in " +
                          entry.doc._id);
      }
      source = source[path[i]];
    }
    fn = compile(source, key, makeRequire(entry.doc, entry.modules, path.slice(0, -1)));
    entry.compiled.set(key, fn);
    return fn;
  }

  function callDdoc(id, path, args) {
    var entry = ddocs[id];
    if (!entry) throw new QSError("query_protocol_error", "uncached design doc: " + id);
    if (!Array.isArray(path) || path.length === 0) {
      throw new QSError("query_protocol_error", "bad ddoc function path");
    }
    var kind = path[0];
    if (kind === "validate_doc_update") {
      var validate = ddocFunction(entry, path);
      try {
        validate.apply(null, args);
        return 1;
      } catch (e) {
        if (e && typeof e === "object" && !(e instanceof Error)) {
          if (e.forbidden !== undefined) return { forbidden: e.forbidden };
          if (e.unauthorized !== undefined) return { unauthorized: e.unauthorized };
        }
        throw new QSError("render_error", "validate_doc_update raised: " + errorText(e));
      }
    }
    if (kind === "filters") {
      var filter = ddocFunction(entry, path);
      var docs = args[0], req = args[1], pass = [];
      for (var i = 0; i < docs.length; i++) {
        try {
          pass.push(!!filter(docs[i], req));
        } catch (e) {
          logLine("filter raised exception (" + errorText(e) + ") with doc._id " +
                  (docs[i] && docs[i]._id));
          pass.push(false);
        }
      }
      return [true, pass];
    }
    if (kind === "views") {
      // A view's map used as a changes filter: a document passes when it emits anything.
      var map = ddocFunction(entry, path);
      var vdocs = args[0], vpass = [];
      for (var k = 0; k < vdocs.length; k++) {
        emitted = [];
        try {
          map(vdocs[k]);
          vpass.push(emitted.length > 0);
        } catch (e) {
          logLine("function raised exception (" + errorText(e) + ") with doc._id " +
                  (vdocs[k] && vdocs[k]._id));
          vpass.push(false);
        }
        emitted = null;
      }
      return [true, vpass];
    }
    throw new QSError("unknown_command", "unsupported design function: " + kind);
  }

  // ---- the protocol -----------------------------------------------------------------------
  var commands = {
    reset: function (cmd) {
      config = cmd[1] && typeof cmd[1] === "object" ? cmd[1] : {};
      mapFuns = [];
      viewLib = null;
      return true;
    },
    add_lib: function (cmd) {
      viewLib = cmd[1];
      return true;
    },
    add_fun: function (cmd) {
      var lib = viewLib;
      mapFuns.push(compile(cmd[1], "map",
                           lib ? makeRequire({ views: { lib: lib } }, {}, []) : null));
      return true;
    },
    map_doc: function (cmd) { return mapDoc(cmd[1]); },
    reduce: function (cmd, line) {
      var kvs = cmd[2] || [], keys = [], values = [];
      for (var i = 0; i < kvs.length; i++) { keys.push(kvs[i][0]); values.push(kvs[i][1]); }
      return runReduce(cmd[1], keys, values, false, line.length);
    },
    rereduce: function (cmd, line) {
      return runReduce(cmd[1], null, cmd[2] || [], true, line.length);
    },
    ddoc: function (cmd) {
      if (cmd[1] === "new") {
        ddocs[cmd[2]] = { doc: cmd[3], compiled: new Map(), modules: {} };
        return true;
      }
      return callDdoc(cmd[1], cmd[2], cmd[3] || []);
    }
  };

  return function dispatch(line) {
    var cmd;
    try {
      cmd = JSON.parse(line);
    } catch (e) {
      reply(["error", "query_protocol_error", "invalid JSON: " + e.message]);
      return;
    }
    if (!Array.isArray(cmd) || typeof cmd[0] !== "string" ||
        !Object.prototype.hasOwnProperty.call(commands, cmd[0])) {
      reply(["error", "unknown_command", "unknown command '" +
             (Array.isArray(cmd) ? String(cmd[0]) : typeof cmd) + "'"]);
      return;
    }
    try {
      reply(commands[cmd[0]](cmd, line));
    } catch (e) {
      if (e instanceof QSError) reply(["error", e.qsName, e.qsReason]);
      else reply(["error", "runtime_error", errorText(e)]);
    }
  };
})()
