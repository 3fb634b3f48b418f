// Turns bench/run.sh's JSON lines into the table: workload, mimeo, pouchdb-server, mimeo/peer,
// and mimeo's target where the foundation issue sets one. Markdown, so that it pastes into
// docs/benchmarks.md as printed.
//   node table.mjs RESULTS.jsonl DOCS ELAPSED_SECONDS
import { readFileSync } from 'node:fs';

const [file, docsArg, elapsedArg] = process.argv.slice(2);
const docs = Number(docsArg);
const recs = readFileSync(file, 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => {
  try { return JSON.parse(l); } catch { return { failed: true, first_error: `unparsable: ${l.slice(0, 80)}` }; }
});
const find = (wl, srv) => recs.find((r) => r.workload === wl && r.server === srv);
const notes = new Map(); // message -> workloads it explains

// A record's figure, or null (with a note saying why) when the run failed or its result is wrong.
function value(wl, srv, field) {
  const r = find(wl, srv);
  if (!r) return null;
  const bad = r.failed ? r.first_error
    : r.ok === false ? r.first_error || 'failed'
    : r.doc_errors > 0 ? `${r.doc_errors} doc errors: ${r.first_error || ''}`
    : r.errors > 0 || r.transport_errors > 0 ? `${r.errors + r.transport_errors} failed requests: ${r.first_error || ''}`
    : r.op === 'read' && (r.status !== 200 || r.rows < docs) ? `HTTP ${r.status}, ${r.rows} of ${docs} rows ${r.first_error || ''}`
    : null;
  if (bad) {
    const msg = `${srv}: ${String(bad).trim()}`;
    if (!notes.has(msg)) notes.set(msg, new Set());
    notes.get(msg).add(wl);
    return null;
  }
  return r[field] ?? null;
}

const attMb = find('att_up', 'mimeo')?.size_mb ?? find('att_up', 'peer')?.size_mb ?? 100;
const attDocs = (find('att_dedupe', 'mimeo') ?? find('att_dedupe', 'peer'))?.docs ?? 1000;
const num = (v, digits) => v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
const k = docs >= 1000 ? `${docs / 1000}k` : String(docs);
// [label, workload, field, digits, scale, target (mimeo >= target, or <= when lower is better), lowerIsBetter]
const rows = [
  [`_bulk_docs ${k} docs, batches of 1,000, increasing ids (docs/s)`, 'bulk_seq', 'docs_per_s', 0, 1, 50000],
  [`_bulk_docs ${k} docs, batches of 1,000, random ids (docs/s)`, 'bulk_random', 'docs_per_s', 0, 1, 15000],
  [`_bulk_docs ${k} docs, batches of 1,000, 16 clients at once (docs/s)`, 'bulk_16', 'docs_per_s', 0, 1],
  ['PUT single doc, 1 client (docs/s)', 'put_1', 'req_per_s', 0, 1],
  ['PUT single doc, 1 client: p50 latency (ms)', 'put_1', 'p50_ms', 2, 1, null, true],
  ['PUT single doc, 1 client: p99 latency (ms)', 'put_1', 'p99_ms', 2, 1, null, true],
  ['PUT single doc, 16 clients (docs/s)', 'put_16', 'req_per_s', 0, 1, 10000],
  ['PUT single doc, 16 clients: p50 latency (ms)', 'put_16', 'p50_ms', 2, 1, null, true],
  ['PUT single doc, 16 clients: p99 latency (ms)', 'put_16', 'p99_ms', 2, 1, null, true],
  ['GET random id, 16 connections (req/s)', 'get_16', 'req_per_s', 0, 1, 45000],
  ['GET random id, 16 connections: p99 latency (ms)', 'get_16', 'p99_ms', 2, 1, null, true],
  ['_changes?include_docs=true, full read (rows/s)', 'changes', 'rows_per_s', 0, 1],
  ['_all_docs?include_docs=true, full read (rows/s)', 'all_docs', 'rows_per_s', 0, 1],
  [`one-shot replication ${k} docs, server to itself via its /_replicate (docs/s)`, 'replicate', 'docs_per_s', 0, 1],
  [`PouchDB (memory adapter) pulls ${k} docs (docs/s)`, 'pull', 'docs_per_s', 0, 1],
  [`attachment upload, one streamed PUT of ${attMb} MiB (MB/s)`, 'att_up', 'mb_per_s', 1, 1],
  [`attachment download, one streamed GET of ${attMb} MiB (MB/s)`, 'att_down', 'mb_per_s', 1, 1],
  [`${attDocs} docs carrying the same 1 MiB attachment: PUTs (docs/s)`, 'att_dedupe', 'docs_per_s', 1, 1],
  [`${attDocs} docs carrying the same 1 MiB attachment: disk growth (MB)`, 'att_dedupe_disk', 'kb', 1, 1 / 1024, null, true],
  ['replication of docs with a 100 KiB attachment each, via /_replicate (docs/s)', 'att_repl', 'docs_per_s', 1, 1],
  ['the same again, bodies changed, every blob already on the target (docs/s)', 'att_repl', 'second_docs_per_s', 1, 1],
  ['  second run faster than the first by (×)', 'att_repl', 'speedup', 2, 1],
  [`view build over ${k} docs, JS map (docs/s)`, 'view_build_map', 'docs_per_s', 0, 1, 20000],
  [`view build over ${k} docs, JS map with _sum and _count (docs/s)`, 'view_build_sum', 'docs_per_s', 0, 1, 20000],
  [`view build over ${k} docs, JS map with a JS reduce (docs/s)`, 'view_build_js', 'docs_per_s', 0, 1, 20000],
  [`_count over ${k} rows: p50 latency (ms)`, 'view_reduce_count', 'p50_ms', 2, 1, 10, true],
  [`_sum over ${k} rows: p50 latency (ms)`, 'view_reduce_sum', 'p50_ms', 2, 1, 10, true],
  [`JS reduce over ${k} rows: p50 latency (ms)`, 'view_reduce_js', 'p50_ms', 2, 1, null, true],
  ['view key range, 100 rows: p50 latency (ms)', 'view_range', 'p50_ms', 2, 1, null, true],
  [`JS reduce, group_level=1 (100 groups) over ${k} rows: p50 latency (ms)`, 'view_group_js', 'p50_ms', 2, 1, null, true],
  [`_changes with a JS filter over ${k} docs (docs/s)`, 'view_changes_filter', 'docs_per_s', 0, 1],
  [`Mango JSON index build over ${k} docs (docs/s)`, 'find_build', 'docs_per_s', 0, 1, 50000],
  ['Mango selective query through the index (1 of the docs), 1 client: p50 (ms)', 'find_query', 'p50_ms', 2, 1, 1, true],
  ['Mango selective query through the index, 1 client: p99 (ms)', 'find_query', 'p99_ms', 2, 1, null, true],
  ['Mango selective query through the index, 16 clients (req/s)', 'find_query', 'req_per_s', 0, 1],
  ['Mango selective query: server CPU per query, 16 clients (µs)', 'find_query', 'server_cpu_us', 0, 1, null, true],
  [`Mango query without an index over ${k} docs: p50 (ms)`, 'find_noindex', 'p50_ms', 1, 1, null, true],
  ['Mango sorted query paged by bookmark, 100 a page: p50 per page (ms)', 'find_paged', 'p50_ms', 2, 1, null, true],
  ['1,000 idle live feeds: server memory per feed (KB)', 'feeds_1000', 'kb_per_feed', 1, 1, null, true],
  ['1,000 idle live feeds: one write reaches all, p99 (ms)', 'feeds_1000', 'write_p99_ms', 0, 1, 1000, true],
  ['10,000 idle live feeds: server memory per feed (KB)', 'feeds_10000', 'kb_per_feed', 1, 1, null, true],
  ['10,000 idle live feeds: server threads', 'feeds_10000', 'threads_after', 0, 1, null, true],
  ['10,000 idle live feeds: one write reaches all, p99 (ms)', 'feeds_10000', 'write_p99_ms', 0, 1, 1000, true],
  ['GET / on a new connection beside 2,000 slowloris connections: p99 (ms)', 'slowloris', 'p99_ms', 1, 1, 100, true],
  ['GET /db on a new connection while a 128 MiB attachment uploads: p99 (ms)', 'upload_gets', 'p99_ms', 1, 1, null, true],
  [`peak resident memory over the ${k}-doc bulk load (the first workload; target ≤ 100), VmHWM (MB)`, 'memory_bulk', 'kb', 1, 1 / 1024, null, true],
  ['  its anonymous part at the end of that load, RssAnon (MB)', 'memory_bulk_anon', 'kb', 1, 1 / 1024, null, true],
  ['peak resident memory, VmHWM (MB)', 'memory', 'kb', 1, 1 / 1024, null, true],
  ['resident anonymous memory at the end, RssAnon (MB)', 'memory_anon', 'kb', 1, 1 / 1024, null, true],
  [`on-disk size of the ${k}-doc database (MB)`, 'disk', 'kb', 1, 1 / 1024, null, true],
];

const out = [];
const ceiling = find('ceiling', 'loadgen');
out.push(`mimeo vs pouchdb-server: ${num(docs, 0)} docs of ~1 KB; run took ${elapsedArg} s`);
out.push('');
out.push('| workload | mimeo | pouchdb-server | mimeo/peer | mimeo target |');
out.push('| --- | ---: | ---: | ---: | --- |');
for (const [label, wl, field, digits, scale, target, lower] of rows) {
  const m = value(wl, 'mimeo', field);
  const p = value(wl, 'peer', field);
  const fm = m === null ? 'n/a' : num(m * scale, digits);
  const fp = p === null ? 'n/a' : num(p * scale, digits);
  const ratio = m !== null && p !== null && p > 0 ? `${num(m / p, 2)}×` : 'n/a';
  let t = '';
  if (target) {
    const ok = m !== null && (lower ? m <= target : m >= target);
    t = `${lower ? '≤' : '≥'} ${num(target, 0)}: ${m === null ? 'n/a' : ok ? 'met' : 'short'}`;
  }
  out.push(`| ${label}${lower ? ' — lower is better' : ''} | ${fm} | ${fp} | ${ratio} | ${t} |`);
}
out.push('');
// Every write workload as a fraction of what LMDB alone commits with the same layout and
// batches in this run (bench/store_ceiling.c); the ingest issue's targets beside them.
const seqCeil = value('store_ceiling_seq', 'lmdb', 'docs_per_s');
const randCeil = value('store_ceiling_random', 'lmdb', 'docs_per_s');
const ceilMB = (wl) => { const v = value(wl, 'lmdb', 'maxrss_kb'); return v === null ? 'n/a' : num(v / 1024, 0); };
if (seqCeil !== null || randCeil !== null) {
  out.push(`storage ceiling (LMDB alone, store layout, batches of 1,000, durable): increasing ids ` +
    `${seqCeil === null ? 'n/a' : num(seqCeil, 0)} docs/s, random ids ${randCeil === null ? 'n/a' : num(randCeil, 0)} docs/s; ` +
    `its peak resident memory ${ceilMB('store_ceiling_seq')} and ${ceilMB('store_ceiling_random')} MB`);
  out.push('');
  out.push('| write workload | mimeo docs/s | ceiling docs/s | fraction | target |');
  out.push('| --- | ---: | ---: | ---: | --- |');
  const frac = [
    ['_bulk_docs, increasing ids', 'bulk_seq', 'docs_per_s', seqCeil, 0.5],
    ['_bulk_docs, random ids', 'bulk_random', 'docs_per_s', randCeil, 0.7],
    ['_bulk_docs, 16 clients at once', 'bulk_16', 'docs_per_s', seqCeil, 0.6],
    ['one-shot replication to itself', 'replicate', 'docs_per_s', seqCeil, 0.4],
    ['PUT single doc, 1 client', 'put_1', 'req_per_s', seqCeil, null],
    ['PUT single doc, 16 clients', 'put_16', 'req_per_s', seqCeil, null],
  ];
  for (const [label, wl, field, ceil, target] of frac) {
    const m = value(wl, 'mimeo', field);
    const f = m !== null && ceil ? m / ceil : null;
    const t = target === null ? '' : `≥ ${num(target * 100, 0)}%: ${f === null ? 'n/a' : f >= target ? 'met' : 'short'}`;
    out.push(`| ${label} | ${m === null ? 'n/a' : num(m, 0)} | ${ceil === null ? 'n/a' : num(ceil, 0)} | ` +
      `${f === null ? 'n/a' : num(f * 100, 1) + '%'} | ${t} |`);
  }
  out.push('');
}
// Attachment streaming as a fraction of the disk's durable sequential write speed (dd with
// fdatasync, same folder, same run).
const dd = value('dd', 'disk', 'mb_per_s');
if (dd !== null) {
  const up = value('att_up', 'mimeo', 'mb_per_s');
  const down = value('att_down', 'mimeo', 'mb_per_s');
  out.push(`disk, dd with fdatasync: ${num(dd, 1)} MB/s; mimeo attachment upload ` +
    `${up === null ? 'n/a' : `${num(up, 1)} MB/s (${num((up / dd) * 100, 0)}% of it)`}, download ` +
    `${down === null ? 'n/a' : `${num(down, 1)} MB/s`}`);
  out.push('');
}
const cv = value('ceiling', 'loadgen', 'req_per_s');
out.push(cv === null
  ? 'loadgen ceiling: n/a'
  : `loadgen ceiling (16 keep-alive connections to a trivial libmicrohttpd endpoint in its own process, ` +
    `same 2 cores): ${num(cv, 0)} req/s, p99 ${num(ceiling.p99_ms, 2)} ms; the client thread spends ` +
    `${num((ceiling.client_cpu_s / ceiling.ok) * 1e6, 1)} µs of CPU a request ` +
    `(≈ ${num(ceiling.ok / ceiling.client_cpu_s, 0)} req/s per core)`);
const load = find('load', 'machine');
if (load) out.push(`load average (1 min) before the run: ${load.before}, after: ${load.after}`);
if (notes.size) {
  out.push('');
  out.push('n/a and errors:');
  for (const [msg, wls] of notes) out.push(`- ${msg} (${[...wls].join(', ')})`);
}
console.log(out.join('\n'));
