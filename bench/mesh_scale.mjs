// Mesh cost with many databases: N nodes (default 8) share DBS meshed databases (default
// 1,000). Measures, per node: TCP connections held (sampled every 500 ms from /proc, idle and
// while writes go on), CPU and mesh bytes per second while idle, and the time until a write to
// one random database on one random node is readable on every node.
//   node bench/mesh_scale.mjs [N] [DBS] — env MIMEO_BIN (default build/mimeo), IDLE_S (20),
//   WRITES (20), BURST (1: first one write in every database, then wait until settled; 0:
//   databases stay empty until the timed writes), SEED. Prints one JSON line and a table.

import fs from 'node:fs/promises';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { makeCall, until as untilEvery, startNode, seeded, cpuTicks, sleep } from './mesh_lib.mjs';

const N = Number(process.argv[2] || 8);
const DBS = Number(process.argv[3] || 1000);
const IDLE_S = Number(process.env.IDLE_S || 20);
const WRITES = Number(process.env.WRITES || 20);
const BURST = process.env.BURST !== '0';
const rnd = seeded(`mesh_scale N=${N} DBS=${DBS}`);
const call = makeCall(16);
const until = (check, timeout, what) => untilEvery(check, timeout, what, 250);

// ESTABLISHED TCP connections of each process: its socket inodes matched against one read of
// /proc/net/tcp{,6} (which lists every socket of the machine, so it is read once per sample);
// outgoing = local port other than the process's listening port.
function tcpConnections(procs) {
  const table = new Map();
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try { text = readFileSync(f, 'utf8'); } catch { continue; }
    for (const line of text.split('\n')) {
      const c = line.trim().split(/\s+/);
      if (c.length < 10 || c[3] !== '01') continue;
      table.set(c[9], parseInt(c[1].split(':')[1], 16));
    }
  }
  return procs.map(({ pid, port }) => {
    let outgoing = 0;
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        const m = readlinkSync(`/proc/${pid}/fd/${fd}`).match(/^socket:\[(\d+)\]$/);
        if (m && table.has(m[1]) && table.get(m[1]) !== port) outgoing++;
      } catch {}
    }
    return outgoing;
  });
}

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-mesh-scale-'));
const secret = path.join(dir, 'secret');
await fs.writeFile(secret, 'mesh-scale-secret-0123456789abcdef\n');
const args = ['--mesh-secret-file', secret];
const nodes = [];
const out = { n: N, dbs: DBS };
try {
  nodes.push(await startNode(dir, 'n0', args));
  for (let i = 1; i < N; i++) nodes.push(await startNode(dir, `n${i}`, [...args, '--join', nodes[0].url]));
  for (const x of nodes) {
    await until(async () => (await call(x.url, 'GET', '/_mesh')).json.members
      .filter((m) => m.state === 'alive').length === N, 60_000, `${x.name} sees ${N} alive`);
  }
  const names = Array.from({ length: DBS }, (_, i) => `u${String(i).padStart(5, '0')}`);
  let t0 = performance.now();
  for (let i = 0; i < DBS; i += 16) {
    await Promise.all(names.slice(i, i + 16).map((db, k) => call(nodes[(i + k) % N].url, 'PUT', `/${db}`)));
  }
  for (const x of nodes) {
    await until(async () => (await call(x.url, 'GET', '/_all_dbs')).json.filter((d) => d[0] === 'u').length === DBS,
      300_000, `${DBS} dbs on ${x.name}`);
  }
  out.create_all_everywhere_s = +((performance.now() - t0) / 1000).toFixed(1);
  // One document in every database (BURST=0: none), written on a random node, then
  // everything settles: queues empty and no replication completing for two anti-entropy
  // periods (after a burst each changed (database, peer) pair costs one more replication in
  // a later round, which finds nothing to copy: what a round knows of a peer lags behind).
  t0 = performance.now();
  for (let i = 0; BURST && i < DBS; i += 16) {
    await Promise.all(names.slice(i, i + 16).map((db) => call(nodes[rnd(N)].url, 'PUT', `/${db}/seed`, { db })));
  }
  for (const x of nodes) {
    if (!BURST) break;
    await until(async () => {
      const r = await Promise.all(names.filter((_, i) => i % 50 === 0).map((db) => call(x.url, 'GET', `/${db}/seed`)));
      return r.every((y) => y.status === 200);
    }, 600_000, `seed docs on ${x.name}`);
  }
  if (BURST) out.one_write_per_db_everywhere_s = +((performance.now() - t0) / 1000).toFixed(1);
  let last = -1, stableSince = Date.now();
  await until(async () => {
    const q = await Promise.all(nodes.map(async (x) => (await call(x.url, 'GET', '/_mesh')).json.replication));
    const done = q.reduce((a, r) => a + r.completed + r.failed, 0);
    const busy = q.some((r) => r.queued || r.running);
    if (busy || done !== last) { last = done; stableSince = Date.now(); }
    return Date.now() - stableSince > 20_000;
  }, 900_000, 'settled');
  out.settled_s = +((performance.now() - t0) / 1000).toFixed(1);

  // Idle.
  await sleep(3000);
  const hz = 100;
  const cpu0 = nodes.map((x) => cpuTicks(x.proc.pid));
  const m0 = await Promise.all(nodes.map(async (x) => (await call(x.url, 'GET', '/_mesh')).json));
  const b0 = m0.map((m) => m.stats);
  let idleMaxOut = 0;
  for (let s = 0; s < IDLE_S * 2; s++) {
    await sleep(500);
    idleMaxOut = Math.max(idleMaxOut, ...tcpConnections(nodes.map((x) => ({ pid: x.proc.pid, port: x.port }))));
  }
  const cpu1 = nodes.map((x) => cpuTicks(x.proc.pid));
  const m1 = await Promise.all(nodes.map(async (x) => (await call(x.url, 'GET', '/_mesh')).json));
  const b1 = m1.map((m) => m.stats);
  const sum = (m, k) => m.reduce((a, x) => a + x.replication[k], 0);
  out.idle_replications = sum(m1, 'completed') - sum(m0, 'completed');
  out.idle_failed = sum(m1, 'failed') - sum(m0, 'failed');
  out.idle_summaries = sum(m1, 'summaries') - sum(m0, 'summaries');
  const cpuPct = nodes.map((_, i) => ((cpu1[i] - cpu0[i]) / hz / IDLE_S) * 100);
  out.idle_cpu_pct_per_node_max = +Math.max(...cpuPct).toFixed(2);
  out.idle_cpu_pct_per_node_mean = +(cpuPct.reduce((a, b) => a + b, 0) / N).toFixed(2);
  out.idle_mesh_bytes_per_s_per_node = +(b1.reduce((a, x, i) => a + x.bytes_sent - b0[i].bytes_sent, 0) / N / IDLE_S).toFixed(0);
  out.idle_max_outgoing_connections_per_node = idleMaxOut;

  // Writes to random databases, one at a time: latency to every node (nothing sampled meanwhile:
  // reading /proc would delay this process's clock readings).
  const times = [];
  for (let w = 0; w < WRITES; w++) {
    const db = names[rnd(DBS)];
    const seqs = await Promise.all(nodes.map(async (x) => (await call(x.url, 'GET', `/${db}`)).json.update_seq));
    const seen = nodes.map((x, i) => call(x.url, 'GET',
      `/${db}/_changes?feed=longpoll&timeout=120000&since=${encodeURIComponent(String(seqs[i]))}`).then(() => performance.now()));
    await sleep(20);
    const on = nodes[rnd(N)];
    const t = performance.now();
    const res = await call(on.url, 'PUT', `/${db}/w${w}`, { w });
    if (res.status !== 201) throw new Error(`write: ${res.status} ${res.text}`);
    times.push(Math.max(...(await Promise.all(seen))) - t);
  }
  times.sort((a, b) => a - b);
  out.write_everywhere_p50_ms = +times[Math.ceil(0.5 * times.length) - 1].toFixed(1);
  out.write_everywhere_p99_ms = +times[Math.ceil(0.99 * times.length) - 1].toFixed(1);
  // Connections while writes go on: 8 writers putting documents into random databases on
  // random nodes for 10 s, sampled every 250 ms.
  let busyMaxOut = 0;
  let writing = true;
  const writers = Array.from({ length: 8 }, async (_, k) => {
    for (let i = 0; writing; i++) {
      await call(nodes[rnd(N)].url, 'PUT', `/${names[rnd(DBS)]}/b${k}_${i}`, { k, i }).catch(() => {});
    }
  });
  const stopAt = Date.now() + 10_000;
  while (Date.now() < stopAt) {
    busyMaxOut = Math.max(busyMaxOut, ...tcpConnections(nodes.map((x) => ({ pid: x.proc.pid, port: x.port }))));
    await sleep(250);
  }
  writing = false;
  await Promise.all(writers);
  out.busy_max_outgoing_connections_per_node = busyMaxOut;
  console.log(JSON.stringify(out));
  console.log('\n| nodes | meshed dbs | burst: one write per db everywhere / settled | idle CPU per node (mean / max) | idle replications | idle mesh bytes/s per node | outgoing connections per node, idle / writing (max) | write → every node p50 / p99 |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
  console.log(`| ${N} | ${DBS} | ${BURST ? `${out.one_write_per_db_everywhere_s} s / ${out.settled_s} s` : 'no burst'} | ` +
    `${out.idle_cpu_pct_per_node_mean}% / ${out.idle_cpu_pct_per_node_max}% | ${out.idle_replications} | ${out.idle_mesh_bytes_per_s_per_node} | ` +
    `${out.idle_max_outgoing_connections_per_node} / ${out.busy_max_outgoing_connections_per_node} | ` +
    `${out.write_everywhere_p50_ms} / ${out.write_everywhere_p99_ms} ms |`);
} finally {
  for (const x of nodes) x.proc.kill('SIGKILL');
  call.destroy();
  await sleep(300);
  await fs.rm(dir, { recursive: true, force: true });
}
