// Map/reduce views on one server: loads DOCS small documents into a database of its own, then
// one workload per call, printing one JSON line like loadgen's.
//   node views.mjs URL/db DOCS load        the documents ({n, g, tag}), in batches of 1,000
//   node views.mjs URL/db DOCS build_map   first query of a JS map view: the index build (docs/s)
//   node views.mjs URL/db DOCS build_sum   the same with reduce _sum (docs/s)
//   node views.mjs URL/db DOCS build_js    the same with a JavaScript reduce (docs/s)
//   node views.mjs URL/db DOCS reduce_sum  _sum over every row, built index: p50 latency (ms)
//   node views.mjs URL/db DOCS reduce_count _count over every row: p50 latency (ms)
//   node views.mjs URL/db DOCS reduce_js   the JavaScript reduce over every row: p50 (ms)
//   node views.mjs URL/db DOCS range       reduce=false key range of 100 rows: p50 latency (ms)
//   node views.mjs URL/db DOCS group_js    the JavaScript reduce with group_level=1 (100 groups): p50 (ms)
//   node views.mjs URL/db DOCS changes_filter  _changes?filter=ddoc/name over every document,
//                                          a JavaScript filter passing 1%: docs examined/s
const [url, docsArg, mode] = process.argv.slice(2);
const docs = Number(docsArg);
const out = { op: `view_${mode}`, docs };

const DDOCS = {
  map: { views: { v: { map: 'function(doc) { emit(doc.tag, doc.n); }' } } },
  sum: { views: { v: { map: 'function(doc) { emit(doc.g, doc.n); }', reduce: '_sum' },
                  c: { map: 'function(doc) { emit(doc.g, doc.n); }', reduce: '_count' } } },
  js: { views: { v: { map: 'function(doc) { emit([doc.g, doc.n], doc.n); }',
                      reduce: 'function(keys, values, rereduce) { return sum(values); }' } } },
};

async function call(method, path, body) {
  const res = await fetch(url + path, {
    method, headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status} ${text.slice(0, 200)}`);
  return JSON.parse(text);
}

async function p50(path, times = 21) {
  const ts = [];
  let last;
  for (let i = 0; i < times; i++) {
    const t0 = performance.now();
    last = await call('GET', path);
    ts.push(performance.now() - t0);
  }
  ts.sort((a, b) => a - b);
  out.p50_ms = +ts[Math.floor(ts.length / 2)].toFixed(2);
  out.min_ms = +ts[0].toFixed(2);
  return last;
}

async function build(ddoc, view) {
  await call('PUT', `/_design/${ddoc}`, DDOCS[ddoc]);
  const t0 = performance.now();
  const r = await call('GET', `/_design/${ddoc}/_view/${view}?limit=1&reduce=false`);
  const secs = (performance.now() - t0) / 1000;
  out.seconds = +secs.toFixed(3);
  out.ok = r.total_rows === docs;
  if (!out.ok) out.first_error = `total_rows ${r.total_rows}`;
  out.docs_per_s = +(docs / secs).toFixed(1);
}

try {
  if (mode === 'load') {
    await fetch(url, { method: 'PUT' });
    const t0 = performance.now();
    for (let b = 0; b < docs; b += 1000) {
      const batch = [];
      for (let i = b; i < Math.min(docs, b + 1000); i++)
        batch.push({ _id: `v${String(i).padStart(7, '0')}`, n: i, g: i % 100, tag: `t${(i * 7919) % docs}` });
      await call('POST', '/_bulk_docs', { docs: batch });
    }
    out.docs_per_s = +(docs / ((performance.now() - t0) / 1000)).toFixed(1);
    out.ok = true;
  } else if (mode === 'build_map') {
    await build('map', 'v');
  } else if (mode === 'build_sum') {
    await build('sum', 'v');
  } else if (mode === 'build_js') {
    await build('js', 'v');
  } else if (mode === 'reduce_sum' || mode === 'reduce_count' || mode === 'reduce_js') {
    const path = mode === 'reduce_js' ? '/_design/js/_view/v' : `/_design/sum/_view/${mode === 'reduce_sum' ? 'v' : 'c'}`;
    const r = await p50(path, mode === 'reduce_js' ? 5 : 21);
    const want = mode === 'reduce_count' ? docs : (docs * (docs - 1)) / 2;
    out.ok = r.rows.length === 1 && r.rows[0].value === want;
    if (!out.ok) out.first_error = `got ${JSON.stringify(r.rows).slice(0, 100)}`;
  } else if (mode === 'range') {
    // keys [g, n]: 100 rows from the middle of group 42
    const start = [42, Math.floor(docs / 2)];
    const r = await p50(`/_design/js/_view/v?reduce=false&startkey=${encodeURIComponent(JSON.stringify(start))}&limit=100`);
    out.ok = r.rows.length === Math.min(100, r.total_rows);
    out.rows = r.rows.length;
  } else if (mode === 'group_js') {
    const r = await p50('/_design/js/_view/v?group_level=1', 5);
    let total = 0;
    for (const row of r.rows) total += row.value;
    out.ok = r.rows.length === Math.min(100, docs) && total === (docs * (docs - 1)) / 2;
    if (!out.ok) out.first_error = `got ${r.rows.length} groups, total ${total}`;
  } else if (mode === 'changes_filter') {
    const ddoc = await fetch(`${url}/_design/flt`).then((r) => r.json());
    if (ddoc.error) await call('PUT', '/_design/flt', { filters: { g42: 'function(doc, req) { return doc.g === 42; }' } });
    const ts = [];
    let last;
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      last = await call('GET', '/_changes?filter=flt/g42');
      ts.push(performance.now() - t0);
    }
    ts.sort((a, b) => a - b);
    out.p50_ms = +ts[1].toFixed(1);
    out.docs_per_s = +(docs / (ts[1] / 1000)).toFixed(1);
    out.ok = last.results.length === Math.ceil((docs - 42) / 100);
    if (!out.ok) out.first_error = `got ${last.results.length} rows`;
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
} catch (e) {
  out.ok = false;
  out.first_error = String(e && (e.message || e)).slice(0, 200);
}
console.log(JSON.stringify(out));
process.exit(out.ok ? 0 : 1);
