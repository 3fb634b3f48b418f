// Mango queries on one server (issue 11), one JSON line per call like loadgen's. The
// documents are bench/views.mjs's ({n, g, tag}, tag unique), so bench/run.sh queries the
// database the views workloads loaded instead of loading another.
//   node find.mjs URL/db DOCS PID load      the documents, batches of 1,000 (as views.mjs)
//   node find.mjs URL/db DOCS PID build     POST _index on ["tag"] and the first _find that
//                                           uses it, timed together (pouchdb-server builds
//                                           in the first, mimeo in the second): docs/s
//   node find.mjs URL/db DOCS PID query     {"tag": one value} (1 of DOCS documents) through
//                                           the index: p50/p99 from one client, then req/s
//                                           from 16 clients at once
//   node find.mjs URL/db DOCS PID noindex   {"n": one value}, a field no index covers: every
//                                           document examined (p50 of a few runs)
//   node find.mjs URL/db DOCS PID paged     {"tag": {"$gte": "t5"}} sorted by tag, 100 a page, followed by
//                                           bookmark for 20 pages: p50 per page (a server
//                                           that returns no bookmark, as pouchdb-find does
//                                           not, is paged with skip instead, as its apps do)
// Every line carries the server's CPU time per query (PID's /proc ticks before and after),
// a figure the machine's load moves much less than the wall-clock ones.
import http from 'node:http';
import { readFileSync } from 'node:fs';

const [url, docsArg, pidArg, mode] = process.argv.slice(2);
const docs = Number(docsArg);
const pid = Number(pidArg);
const base = new URL(url);
const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
const out = { op: `find_${mode}`, docs };
const QUICK = docs < 100000;

function ticks() {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return Number(rest[11]) + Number(rest[12]); // utime + stime
  } catch { return NaN; }
}
const HZ = 100;

function call(method, path, body) {
  const data = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: base.hostname, port: base.port, method, path: base.pathname + path, agent,
      headers: data === undefined ? {} : { 'content-type': 'application/json',
        'content-length': Buffer.byteLength(data) },
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        if (res.statusCode >= 300) {
          reject(new Error(`${method} ${path}: ${res.statusCode} ${text.slice(0, 200)}`));
          return;
        }
        try { resolve(JSON.parse(text)); } catch (e) { reject(e); }
      });
    });
    req.on('error', reject);
    req.end(data);
  });
}

const pct = (ts, p) => {
  const s = [...ts].sort((a, b) => a - b);
  return +s[Math.min(s.length - 1, Math.floor((s.length * p) / 100))].toFixed(3);
};
const tagOf = (i) => `t${(i * 7919) % docs}`; // views.mjs's: one document per tag
// a stable spread of tags (a multiplicative hash of the query number)
const pick = (q) => `t${(q * 104729 + 13) % docs}`;
const sel = (q) => ({ selector: { tag: pick(q) }, limit: 25 });

async function timed(fn, times) {
  const ts = [];
  let last;
  for (let i = 0; i < times; i++) {
    const t0 = performance.now();
    last = await fn(i);
    ts.push(performance.now() - t0);
  }
  return { ts, last };
}

async function load() {
  await call('PUT', '').catch(() => {});
  const t0 = performance.now();
  for (let b = 0; b < docs; b += 1000) {
    const batch = [];
    for (let i = b; i < Math.min(docs, b + 1000); i++)
      batch.push({ _id: `v${String(i).padStart(7, '0')}`, n: i, g: i % 100, tag: tagOf(i) });
    const r = await call('POST', '/_bulk_docs', { docs: batch });
    if (r.some((x) => x.error)) throw new Error(`bulk: ${JSON.stringify(r.find((x) => x.error))}`);
  }
  out.docs_per_s = +(docs / ((performance.now() - t0) / 1000)).toFixed(1);
  out.ok = true;
}

async function build() {
  const c0 = ticks();
  const t0 = performance.now();
  await call('POST', '/_index', { index: { fields: ['tag'] }, name: 'tag', ddoc: 'find' });
  const r = await call('POST', '/_find', { selector: { tag: tagOf(1) }, limit: 1 });
  const secs = (performance.now() - t0) / 1000;
  out.seconds = +secs.toFixed(3);
  out.docs_per_s = +(docs / secs).toFixed(1);
  out.server_cpu_us_per_doc = +(((ticks() - c0) / HZ) * 1e6 / docs).toFixed(2);
  out.ok = r.docs.length === 1 && r.docs[0].n === 1 && !r.warning;
  if (!out.ok) out.first_error = `got ${JSON.stringify(r).slice(0, 160)}`;
}

async function query() {
  // warm: the index is built, the connection is open
  for (let i = 0; i < 20; i++) await call('POST', '/_find', sel(i));
  // up to 1,000 queries one after the other, or as many as fit in a few seconds
  const budget = performance.now() + (QUICK ? 3000 : 8000);
  const c0 = ticks();
  const ts = [];
  let last;
  let n1 = 0;
  for (; n1 < (QUICK ? 300 : 1000) && (n1 < 20 || performance.now() < budget); n1++) {
    const t = performance.now();
    last = await call('POST', '/_find', sel(n1));
    ts.push(performance.now() - t);
  }
  const c1 = ticks();
  out.queries_1 = n1;
  out.p50_ms = pct(ts, 50);
  out.p99_ms = pct(ts, 99);
  out.server_cpu_us_1 = +(((c1 - c0) / HZ) * 1e6 / n1).toFixed(1);
  out.ok = last.docs.length === 1 && !last.warning && last.docs[0].tag === pick(n1 - 1);
  if (!out.ok) out.first_error = `got ${JSON.stringify(last).slice(0, 160)}`;
  // 16 clients, each with its own keep-alive connection, for a fixed time
  const secs = QUICK ? 2 : 5;
  let done = 0, errors = 0, q = 0;
  const lat = [];
  const end = performance.now() + secs * 1000;
  const c2 = ticks();
  const u0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (performance.now() < end) {
      const s = performance.now();
      try {
        const r = await call('POST', '/_find', sel(q++));
        if (r.docs.length === 0) errors++;
        done++;
        lat.push(performance.now() - s);
      } catch { errors++; }
    }
  }));
  const wall = (performance.now() - t0) / 1000;
  const u = process.cpuUsage(u0);
  out.req_per_s = +(done / wall).toFixed(1);
  out.p50_16_ms = pct(lat, 50);
  out.p99_16_ms = pct(lat, 99);
  out.server_cpu_us = +(((ticks() - c2) / HZ) * 1e6 / done).toFixed(1);
  out.client_cpu_us = +((u.user + u.system) / done).toFixed(1);
  out.errors = errors;
  if (errors) { out.ok = false; out.first_error = `${errors} failed queries`; }
}

async function noindex() {
  // three runs, or one when a run takes more than 5 s
  const c0 = ticks();
  const ts = [];
  let last;
  let times = 0;
  while (times < 3 && !(times > 0 && ts[0] > 5000)) {
    const t = performance.now();
    last = await call('POST', '/_find', { selector: { n: 77 + times }, limit: 25 });
    ts.push(performance.now() - t);
    times++;
  }
  out.runs = times;
  out.p50_ms = pct(ts, 50);
  out.docs_per_s = +(docs / (out.p50_ms / 1000)).toFixed(1);
  out.server_cpu_us = +(((ticks() - c0) / HZ) * 1e6 / times).toFixed(1);
  out.ok = last.docs.length === 1 && last.docs[0].n === 77 + times - 1;
  if (!out.ok) out.first_error = `${last.docs.length} docs, expected 1`;
}

async function paged() {
  const pages = Math.max(1, Math.min(20, Math.floor(docs / 250))); // ~55% of tags are ≥ t5
  const q = { selector: { tag: { $gte: 't5' } }, sort: ['tag'], limit: 100 };
  const runs = [];
  let ok = true;
  const c0 = ticks();
  for (let run = 0; run < 3; run++) {
    let bookmark;
    let prev = null;
    const { ts } = await timed(async (page) => {
      const body = bookmark ? { ...q, bookmark } : page ? { ...q, skip: page * 100 } : q;
      const r = await call('POST', '/_find', body);
      bookmark = r.bookmark;
      out.paging = bookmark ? 'bookmark' : 'skip';
      for (const d of r.docs) {
        // tags are "t" and digits: code-unit order is collation order here
        if (d.tag < 't5' || (prev !== null && prev >= d.tag)) ok = false;
        prev = d.tag;
      }
      if (r.docs.length !== 100 || r.warning) ok = false;
      return r;
    }, pages);
    runs.push(...ts);
  }
  out.p50_ms = pct(runs, 50);
  out.p99_ms = pct(runs, 99);
  out.pages = runs.length;
  out.server_cpu_us = +(((ticks() - c0) / HZ) * 1e6 / runs.length).toFixed(1);
  out.ok = ok;
  if (!ok) out.first_error = 'pages out of order, short, or without the index';
}

const MODES = { load, build, query, noindex, paged };
const err = MODES[mode] ? await MODES[mode]().then(() => null, (e) => e)
  : new Error(`unknown mode ${mode}`);
if (err) {
  out.ok = false;
  out.first_error = String(err.message || err).slice(0, 200);
}
console.log(JSON.stringify(out));
process.exit(out.ok ? 0 : 1);
