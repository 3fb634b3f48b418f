#!/usr/bin/env node
// CRDT documents under load, for `make bench` (bench/run.sh runs it after the main table):
//   1. ops/s through POST /{db}/_crdt/{id} from 16 clients on one document, and on 1,000;
//   2. 8 mimeo nodes each apply 1,000 concurrent increments to one counter, then replicate
//      (continuous, every node pulling from every other): the time until every node shows the
//      exact total on one leaf with no conflict, and the merge revisions written meanwhile;
//   3. one-shot replication of plain documents (no CRDT document among them) into a target
//      without _design/crdt, with a prefix rule, and with a selector rule: what the merge hook
//      costs replication when no CRDT document is involved.
// Prints a Markdown table. MIMEO_BIN picks the binary (default build/mimeo); BENCH_QUICK=1
// runs a smaller version; CRDT_ONLY=ops|repl|nodes runs one part; CRDT_ROUNDS sets the rounds of
// part 3. CRDT_CALLGRIND=1 runs part 3 alone, once, with the server under valgrind's callgrind,
// and prints instructions per document instead (CRDT_DOCS, default 5000): a count the machine's
// load does not move, for comparing builds on a busy machine (BENCH_KEEP=1 keeps the dumps).
// Data folders live under build/bench/ (not tmpfs: fsyncs count).
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const MIMEO = process.env.MIMEO_BIN || path.join(ROOT, 'build/mimeo');
const QUICK = process.env.BENCH_QUICK === '1';
const CLIENTS = 16;
const HOT_OPS = QUICK ? 25 : 100;        // per client, one document
const MANY_OPS = QUICK ? 50 : 200;       // per client, 1,000 documents
const NODES = 8;
const INCREMENTS = QUICK ? 100 : 1000;   // per node
const CALLGRIND = process.env.CRDT_CALLGRIND === '1';
const REPL_DOCS = Number(process.env.CRDT_DOCS) || (QUICK || CALLGRIND ? 5000 : 20000);
const REPL_ROUNDS = CALLGRIND ? 1 : Number(process.env.CRDT_ROUNDS) || (QUICK ? 1 : 7);
const ONLY = CALLGRIND ? 'repl' : process.env.CRDT_ONLY || '';
const part = (name) => !ONLY || ONLY === name;

const note = (s) => process.stderr.write(`crdt bench: ${s}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- servers

fs.mkdirSync(path.join(ROOT, 'build/bench'), { recursive: true });
const TMP = fs.mkdtempSync(path.join(ROOT, 'build/bench/crdt.'));
const servers = [];

async function startServer(name) {
  const dir = path.join(TMP, name);
  fs.mkdirSync(dir, { recursive: true });
  const args = ['serve', '--data', dir, '--bind', '127.0.0.1', '--port', '0'];
  const proc = CALLGRIND
    ? spawn('valgrind', ['--tool=callgrind', `--callgrind-out-file=${TMP}/callgrind.%p`,
      '--instr-atstart=no', MIMEO, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(MIMEO, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const url = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${name} did not start: ${out.slice(-300)}`)),
      CALLGRIND ? 120000 : 15000);
    const look = (c) => {
      out += c;
      const m = /mimeo listening on (http:\/\/[0-9.]+:[0-9]+)/.exec(out);
      if (m) { clearTimeout(t); resolve(m[1]); }
    };
    proc.stdout.on('data', look);
    proc.stderr.on('data', look);
    proc.on('exit', (code) => reject(new Error(`${name} exited (${code}): ${out.slice(-300)}`)));
  });
  proc.stdout.resume();
  proc.stderr.resume();
  const s = { name, url, proc, agent: new http.Agent({ keepAlive: true, maxSockets: 64 }) };
  servers.push(s);
  return s;
}

function stopAll() {
  for (const s of servers) { try { s.proc.kill('SIGTERM'); } catch { /* gone */ } s.agent.destroy(); }
}

function cleanup() {
  stopAll();
  if (process.env.BENCH_KEEP !== '1') fs.rmSync(TMP, { recursive: true, force: true });
}
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));
process.on('SIGTERM', () => process.exit(143));

function request(s, method, p, body) {
  const u = new URL(s.url);
  const payload = body === undefined ? null : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
  const headers = { accept: 'application/json' };
  if (payload) { headers['content-type'] = 'application/json'; headers['content-length'] = payload.length; }
  return new Promise((resolve, reject) => {
    const r = http.request({ host: u.hostname, port: u.port, method, path: p, headers, agent: s.agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        resolve({ status: res.statusCode, json, text });
      });
    });
    r.on('error', reject);
    r.end(payload ?? undefined);
  });
}

async function must(p, what) {
  const r = await p;
  if (r.status >= 300) throw new Error(`${what}: HTTP ${r.status} ${r.text.slice(0, 200)}`);
  return r;
}

// CPU seconds (user + system) a server process has used so far: on a machine shared with other
// work, the CPU a workload costs the server moves far less than its wall-clock rate.
const HZ = 100;   // USER_HZ: clock ticks of /proc/PID/stat on Linux
function cpuSecs(s) {
  try {
    const f = fs.readFileSync(`/proc/${s.proc.pid}/stat`, 'utf8');
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12])) / HZ;   // fields 14 and 15
  } catch { return 0; }
}

const pct = (xs, q) => {
  if (!xs.length) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};

// ---------------------------------------------------------------- 1. ops/s

async function opsLoad(s, db, idOf, perClient) {
  const lat = [];
  let failed = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CLIENTS }, async (_, c) => {
    for (let i = 0; i < perClient; i++) {
      const t = performance.now();
      const r = await request(s, 'POST', `/${db}/_crdt/${encodeURIComponent(idOf(c, i))}`,
        { ops: [{ op: 'increment', path: ['n'], value: 1 }, { op: 'add', path: ['seen'], value: c }] });
      lat.push(performance.now() - t);
      if (r.status !== 201) failed++;
    }
  }));
  const secs = (performance.now() - t0) / 1000;
  return { ops_per_s: (CLIENTS * perClient) / secs, p50: pct(lat, 0.5), p99: pct(lat, 0.99), failed };
}

// ---------------------------------------------------------------- 2. 8 nodes, one counter

async function convergence() {
  const nodes = [];
  for (let i = 0; i < NODES; i++) nodes.push(await startServer(`node${i}`));
  const db = 'counter';
  const ddoc = { rules: [{ prefix: 'c:' }] };
  for (const s of nodes) {
    await must(request(s, 'PUT', `/${db}`), 'create');
    // The same body on every node: the same revision id everywhere (ids hash parent and body).
    await must(request(s, 'PUT', `/${db}/_design/crdt`, ddoc), 'rules');
  }
  const stats = async (s) => (await request(s, 'GET', '/_node/_local/_stats')).json?.mimeo?.crdt
    ?? { ops_applied: { value: 0 }, merges_written: { value: 0 } };
  const before = await Promise.all(nodes.map(stats));

  // Every node applies its increments at once, 16 clients each, with no replication yet.
  const tOps = performance.now();
  let failed = 0;
  await Promise.all(nodes.map((s) => Promise.all(Array.from({ length: CLIENTS }, async (_, c) => {
    for (let i = c; i < INCREMENTS; i += CLIENTS) {
      const r = await request(s, 'POST', `/${db}/_crdt/c:hits`, { ops: [{ op: 'increment', path: ['n'], value: 1 }] });
      if (r.status !== 201) failed++;
    }
  }))));
  const opsSecs = (performance.now() - tOps) / 1000;

  // Then every node pulls from every other, continuously, until all agree.
  const total = NODES * INCREMENTS;
  const tRepl = performance.now();
  for (const to of nodes) {
    for (const from of nodes) {
      if (from === to) continue;
      await must(request(to, 'POST', '/_replicate', {
        source: `${from.url}/${db}`, target: `${to.url}/${db}`, continuous: true }), 'replicate');
    }
  }
  const deadline = performance.now() + (QUICK ? 120_000 : 300_000);
  let converged = false, lastSeen = '';
  while (performance.now() < deadline) {
    const docs = await Promise.all(nodes.map((s) => request(s, 'GET', `/${db}/c:hits?conflicts=true`)));
    lastSeen = docs.map((d) => `${d.json?.n}${d.json?._conflicts ? '+c' : ''}`).join(',');
    const revs = new Set(docs.map((d) => d.json?._rev));
    if (docs.every((d) => d.status === 200 && d.json.n === total && !d.json._conflicts) && revs.size === 1) {
      converged = true;
      break;
    }
    await sleep(100);
  }
  const convSecs = (performance.now() - tRepl) / 1000;
  await sleep(1000);   // merges still in flight show up in the counters
  const after = await Promise.all(nodes.map(stats));
  const merges = after.reduce((a, st, i) => a + st.merges_written.value - before[i].merges_written.value, 0);
  const final = (await request(nodes[0], 'GET', `/${db}/c:hits`)).json;
  for (const s of nodes) { s.proc.kill('SIGTERM'); }
  return { opsSecs, failed, converged, convSecs, merges, total, lastSeen,
    finalRev: final?._rev ?? 'n/a' };
}

// ---------------------------------------------------------------- 3. replication overhead

async function replicationOverhead(s) {
  const src = 'plain_src';
  await must(request(s, 'PUT', `/${src}`), 'create source');
  const pad = 'x'.repeat(900);
  for (let k = 0; k < REPL_DOCS; k += 1000) {
    const docs = [];
    for (let i = k; i < Math.min(REPL_DOCS, k + 1000); i++) {
      docs.push({ _id: `doc${String(i).padStart(8, '0')}`, type: 'plain', n: i, payload: pad });
    }
    await must(request(s, 'POST', `/${src}/_bulk_docs`, { docs }), 'load source');
  }
  const variants = {
    none: null,
    prefix: { rules: [{ prefix: 'c:' }] },
    selector: { rules: [{ selector: { type: 'cart' } }] },
  };
  const res = { none: [], prefix: [], selector: [] };
  const cpu = { none: [], prefix: [], selector: [] };
  const instr = {};
  const cg = (...a) => execFileSync('callgrind_control', [...a, String(s.proc.pid)], { stdio: 'ignore' });
  let seq = 0;
  for (let round = 0; round < REPL_ROUNDS; round++) {
    // Each round starts with another variant, so none of them always follows the same one.
    const order = Object.entries(variants);
    for (const [name, ddoc] of [...order.slice(round % 3), ...order.slice(0, round % 3)]) {
      const tgt = `plain_tgt_${seq++}`;
      await must(request(s, 'PUT', `/${tgt}`), 'create target');
      if (ddoc) await must(request(s, 'PUT', `/${tgt}/_design/crdt`, ddoc), 'rules');
      if (CALLGRIND) { cg('-z'); cg('-i', 'on'); }
      const t0 = performance.now(), c0 = cpuSecs(s);
      await must(request(s, 'POST', '/_replicate', { source: `${s.url}/${src}`, target: `${s.url}/${tgt}` }), 'replicate');
      if (CALLGRIND) {
        cg('-i', 'off');
        cg('-d', name);
        const dump = fs.readdirSync(TMP).filter((f) => f.startsWith(`callgrind.${s.proc.pid}.`))
          .map((f) => path.join(TMP, f)).find((f) => fs.readFileSync(f, 'utf8').includes(`Trigger: dump ${name}\n`));
        instr[name] = Number(/^totals: (\d+)/m.exec(fs.readFileSync(dump, 'utf8'))[1]) / REPL_DOCS;
      }
      res[name].push(REPL_DOCS / ((performance.now() - t0) / 1000));
      cpu[name].push(((cpuSecs(s) - c0) * 1e6) / REPL_DOCS);   // server CPU µs per document
      await must(request(s, 'DELETE', `/${tgt}`), 'drop target');
    }
  }
  const med = (xs) => pct(xs, 0.5);
  // CPU per document over all rounds together: one round costs the server some 30–50 clock
  // ticks, so a per-round figure moves by several percent with one tick; the pooled one does not.
  const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
  return { instr, rate: Object.fromEntries(Object.entries(res).map(([k, v]) => [k, med(v)])),
    cpu: Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, mean(v)])) };
}

// ---------------------------------------------------------------- run

const fmt = (x, d = 0) => x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });
const load0 = fs.readFileSync('/proc/loadavg', 'utf8').split(' ')[0];
const rows = [];
try {
  const one = await startServer('ops');
  await must(request(one, 'PUT', '/ops'), 'create');
  await must(request(one, 'PUT', '/ops/_design/crdt', { rules: [{ prefix: 'c:' }] }), 'rules');
  if (part('ops')) {
  note(`one document, ${CLIENTS} clients × ${HOT_OPS} ops`);
  const hot = await opsLoad(one, 'ops', () => 'c:hot', HOT_OPS);
  rows.push([`_crdt ops, ${CLIENTS} clients, one document (ops/s)`, fmt(hot.ops_per_s), `p50 ${fmt(hot.p50, 1)} ms, p99 ${fmt(hot.p99, 1)} ms, ${hot.failed} failed`]);
  note(`1,000 documents, ${CLIENTS} clients × ${MANY_OPS} ops`);
  let seed = 12345;
  const rnd = () => { seed = (seed * 1103515245 + 12345) >>> 0; return seed; };
  const many = await opsLoad(one, 'ops', () => `c:m${rnd() % 1000}`, MANY_OPS);
  rows.push([`_crdt ops, ${CLIENTS} clients, 1,000 documents (ops/s)`, fmt(many.ops_per_s), `p50 ${fmt(many.p50, 1)} ms, p99 ${fmt(many.p99, 1)} ms, ${many.failed} failed`]);
  }
  if (part('repl')) {

  note(`replication of ${REPL_DOCS} plain docs, with and without _design/crdt (${REPL_ROUNDS} rounds)`);
  const { instr, rate: ro, cpu: rc } = await replicationOverhead(one);
  if (CALLGRIND) {
    const of = (k) => (k === 'none' ? '' : `${fmt((100 * instr[k]) / instr.none, 1)}% of no rules`);
    rows.push([`one-shot replication of ${fmt(REPL_DOCS)} plain docs under callgrind, target without _design/crdt (instructions/doc)`, fmt(instr.none), MIMEO]);
    rows.push(['… target with a prefix rule (instructions/doc)', fmt(instr.prefix), of('prefix')]);
    rows.push(['… target with a selector rule (instructions/doc)', fmt(instr.selector), of('selector')]);
  } else {
  const rel = (x) => (ro.none > 0 ? `${fmt((100 * x) / ro.none)}% of no rules` : '');
  const cpuNote = (k) => `server CPU ${fmt(rc[k], 1)} µs/doc${k === 'none' ? ` (mean of ${REPL_ROUNDS} rounds)` : ''}${k === 'none' || !rc.none ? '' : ` (${fmt((100 * rc[k]) / rc.none)}% of no rules)`}`;
  rows.push([`one-shot replication of ${fmt(REPL_DOCS)} plain docs, target without _design/crdt (docs/s)`, fmt(ro.none), cpuNote('none')]);
  rows.push([`… target with a prefix rule (docs/s)`, fmt(ro.prefix), `${rel(ro.prefix)}; ${cpuNote('prefix')}`]);
  rows.push([`… target with a selector rule (docs/s)`, fmt(ro.selector), `${rel(ro.selector)}; ${cpuNote('selector')}`]);
  }
  }
  one.proc.kill('SIGTERM');
  if (part('nodes')) {

  note(`${NODES} nodes × ${INCREMENTS} increments, then replication to convergence`);
  const c = await convergence();
  rows.push([`${NODES} nodes × ${fmt(INCREMENTS)} concurrent increments, all applied (s)`, fmt(c.opsSecs, 1), `${c.failed} failed`]);
  rows.push([`… then every node pulling from every other: until all show ${fmt(c.total)} on one leaf, no conflict (s)`,
    c.converged ? fmt(c.convSecs, 1) : 'did not converge', c.converged ? `final rev ${c.finalRev.split('-')[0]}-…` : `last seen ${c.lastSeen}`]);
  rows.push(['… merge revisions written, all nodes together', fmt(c.merges), '']);
  }
} catch (err) {
  note(`failed: ${err.message}`);
  rows.push(['CRDT bench', 'n/a', err.message.slice(0, 200)]);
}
const load1 = fs.readFileSync('/proc/loadavg', 'utf8').split(' ')[0];
console.log(`CRDT documents (${QUICK ? 'quick' : 'full'} run; load average ${load0} before, ${load1} after)`);
console.log('');
console.log('| workload | mimeo | note |');
console.log('| --- | ---: | --- |');
for (const [w, v, n] of rows) console.log(`| ${w} | ${v} | ${n} |`);
process.exit(0);
