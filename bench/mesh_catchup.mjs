// Mesh catch-up: a node that was away while CHANGES documents (default 100,000) were written
// across DBS meshed databases (default 100) comes back and catches up. Three nodes join through
// one seed and create the databases; the last one stops (SIGTERM: it leaves), the documents go
// to the seed in _bulk_docs batches of 1,000 spread over the databases, the second node gets
// them by eager push; then the node restarts on its own data folder and the time from its
// start to holding every document (doc_count of each database, polled every 250 ms) is the
// catch-up time. Beside it, the replicator alone on the same data: a fresh non-meshed node
// pulls every database from the seed with one-shot POST /_replicate, `replication_workers`
// (4) at a time, as the mesh's pool runs them.
//   node bench/mesh_catchup.mjs — env MIMEO_BIN (default build/mimeo), CHANGES, DBS.
// Also the CPU (utime + stime) of the processes involved in each, and what the peers' own
// replications wrote during the catch-up. Prints one JSON line and a Markdown table.

import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { makeCall, until, startNode, sleep, cpuTicks } from './mesh_lib.mjs';

const CHANGES = Number(process.env.CHANGES || 100_000);
const DBS = Number(process.env.DBS || 100);
const WORKERS = 4;
const call = makeCall(16);

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-mesh-catchup-'));
const secret = path.join(dir, 'secret');
await fs.writeFile(secret, 'mesh-catchup-secret-0123456789abcdef\n');
const args = ['--mesh-secret-file', secret];
const nodes = [];
const procs = [];
const out = { changes: CHANGES, dbs: DBS };
const names = Array.from({ length: DBS }, (_, i) => `c${String(i).padStart(4, '0')}`);

async function docCounts(url) {
  const r = await Promise.all(names.map((db) => call(url, 'GET', `/${db}`)));
  return r.reduce((a, x) => a + (x.status === 200 ? x.json.doc_count : 0), 0);
}

async function alive(x, n) {
  await until(async () => (await call(x.url, 'GET', '/_mesh')).json.members
    .filter((m) => m.state === 'alive').length === n, 60_000, `${x.name} sees ${n} alive`, 250);
}

try {
  nodes.push(await startNode(dir, 'n0', args));
  for (let i = 1; i < 3; i++) nodes.push(await startNode(dir, `n${i}`, [...args, '--join', nodes[0].url]));
  procs.push(...nodes.map((x) => x.proc));
  for (const x of nodes) await alive(x, 3);
  for (let i = 0; i < DBS; i += 16) await Promise.all(names.slice(i, i + 16).map((db) => call(nodes[0].url, 'PUT', `/${db}`)));
  for (const x of nodes) {
    await until(async () => (await call(x.url, 'GET', '/_all_dbs')).json.filter((d) => d[0] === 'c').length === DBS,
      120_000, `${DBS} dbs on ${x.name}`, 250);
  }
  // The third node goes away (SIGTERM: announced), the writes happen without it.
  const away = nodes[2];
  away.proc.kill('SIGTERM');
  await new Promise((r) => away.proc.once('exit', r));
  let t0 = performance.now();
  const perDb = Math.ceil(CHANGES / DBS);
  let written = 0;
  for (let k = 0; written < CHANGES; k++) {
    const db = names[k % DBS];
    const n = Math.min(1000, CHANGES - written, perDb);
    const docs = Array.from({ length: n }, (_, j) => ({ _id: `d${String(k).padStart(6, '0')}_${j}`, k, j, v: 'x'.repeat(64) }));
    const r = await call(nodes[0].url, 'POST', `/${db}/_bulk_docs`, { docs });
    if (r.status !== 201) throw new Error(`bulk: ${r.status} ${r.text.slice(0, 200)}`);
    written += n;
  }
  out.write_s = +((performance.now() - t0) / 1000).toFixed(1);
  await until(async () => (await docCounts(nodes[1].url)) === CHANGES, 600_000, 'n1 has everything', 500);
  out.eager_everything_on_n1_s = +((performance.now() - t0) / 1000).toFixed(1);
  await sleep(2000);

  // Back: the catch-up.
  // CPU of every process involved (clock ticks, load-independent beside the wall clock).
  const cpuOf = (list) => list.reduce((a, x) => a + cpuTicks(x.proc.pid), 0);
  const pushed = async () => {
    let w = 0;
    for (const x of nodes.slice(0, 2)) w += (await call(x.url, 'GET', '/_mesh')).json.replication.docs_written;
    return w;
  };
  const pushed0 = await pushed();
  let cpu0 = cpuOf(nodes.slice(0, 2));
  t0 = performance.now();
  const back = await startNode(dir, 'n2', [...args, '--join', nodes[0].url]);
  procs.push(back.proc);
  await until(async () => (await docCounts(back.url)) === CHANGES, 900_000, 'n2 caught up', 250);
  out.catchup_cpu_s = (cpuOf([...nodes.slice(0, 2), back]) - cpu0) / 100;
  const catchup = (performance.now() - t0) / 1000;
  out.catchup_s = +catchup.toFixed(2);
  out.catchup_docs_per_s = Math.round(CHANGES / catchup);
  const m = (await call(back.url, 'GET', '/_mesh')).json.replication;
  out.catchup_replications = m.completed;
  out.catchup_docs_written = m.docs_written;
  // What the two peers' own replications wrote meanwhile (their pushes to the returning node).
  out.catchup_peer_docs_written = (await pushed()) - pushed0;

  // The replicator alone, same data, same parallelism.
  const plain = await startNode(dir, 'plain', [], { mesh: false });
  procs.push(plain.proc);
  cpu0 = cpuOf([nodes[0], plain]);
  t0 = performance.now();
  const queue = [...names];
  await Promise.all(Array.from({ length: WORKERS }, async () => {
    for (let db; (db = queue.shift());) {
      const r = await call(plain.url, 'POST', '/_replicate',
        { source: `${nodes[0].url}/${db}`, target: db, create_target: true }, 600_000);
      if (r.status !== 200) throw new Error(`replicate ${db}: ${r.status} ${r.text.slice(0, 200)}`);
    }
  }));
  const one = (performance.now() - t0) / 1000;
  out.oneshot_cpu_s = (cpuOf([nodes[0], plain]) - cpu0) / 100;
  if ((await docCounts(plain.url)) !== CHANGES) throw new Error('the one-shot replications missed documents');
  out.oneshot_s = +one.toFixed(2);
  out.oneshot_docs_per_s = Math.round(CHANGES / one);
  out.catchup_vs_oneshot = +(out.catchup_docs_per_s / out.oneshot_docs_per_s).toFixed(2);
  out.cpu_oneshot_vs_catchup = +(out.oneshot_cpu_s / out.catchup_cpu_s).toFixed(2);
  console.log(JSON.stringify(out));
  console.log('\n| changes behind | databases | mesh catch-up (s, docs/s) | one-shot replications, 4 at a time (s, docs/s) | ratio | revisions written (returning node + peers) | CPU s, catch-up / one-shot |');
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  console.log(`| ${CHANGES} | ${DBS} | ${out.catchup_s} s, ${out.catchup_docs_per_s} | ${out.oneshot_s} s, ${out.oneshot_docs_per_s} | ${out.catchup_vs_oneshot} | ` +
    `${out.catchup_docs_written} + ${out.catchup_peer_docs_written} | ${out.catchup_cpu_s} / ${out.oneshot_cpu_s} |`);
} finally {
  for (const p of procs) p.kill('SIGKILL');
  call.destroy();
  await sleep(300);
  await fs.rm(dir, { recursive: true, force: true });
}
