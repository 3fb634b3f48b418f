// Mesh convergence: how long until a write made on one node is readable on every node.
// Starts N `mimeo serve` processes on loopback (one seed, the rest join it), creates one
// meshed database, then makes writes one at a time, each on a random node, and times from the
// write's acknowledgement until every node has it (a long-polling _changes on every node,
// opened before the write, so nothing is polled). Eager push on (default anti-entropy 10 s)
// and off (anti-entropy only, with the interval given, reported also in rounds).
//   node bench/mesh_converge.mjs [N,…] — default 4,8,16,32; env MIMEO_BIN (default build/mimeo),
//   WRITES (30 eager, 10 without), AE_MS for the eager-off runs (1000), SEED.
// Prints a Markdown table and one JSON line per configuration.

import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { makeCall, until, startNode, seeded, pct, sleep } from './mesh_lib.mjs';

const sizes = (process.argv[2] || '4,8,16,32').split(',').map(Number);
const AE_OFF_MS = Number(process.env.AE_MS || 1000);
const rnd = seeded('mesh_converge');
const call = makeCall(64);

async function run(n, eager) {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-mesh-bench-'));
  const secret = path.join(dir, 'secret');
  await fs.writeFile(secret, 'mesh-bench-secret-0123456789abcdef\n');
  const args = ['--mesh-secret-file', secret,
    '--set', `mesh.eager_push=${eager}`,
    ...(eager ? [] : ['--set', `mesh.anti_entropy_interval_ms=${AE_OFF_MS}`])];
  const nodes = [];
  try {
    nodes.push(await startNode(dir, 'n0', args));
    for (let i = 1; i < n; i++) nodes.push(await startNode(dir, `n${i}`, [...args, '--join', nodes[0].url]));
    for (const x of nodes) {
      await until(async () => {
        const v = (await call(x.url, 'GET', '/_mesh')).json;
        return v.members.filter((m) => m.state === 'alive').length === n;
      }, 60_000, `${x.name} sees ${n} alive`);
    }
    await call(nodes[0].url, 'PUT', '/bench');
    for (const x of nodes) await until(async () => (await call(x.url, 'GET', '/bench')).status === 200, 30_000, `db on ${x.name}`);
    await sleep(eager ? 1000 : 2 * AE_OFF_MS);
    const writes = Number(process.env.WRITES || (eager ? 30 : 10));
    const times = [];
    for (let w = 0; w < writes; w++) {
      // Every node's current seq, then a long poll from it on every node.
      const seqs = await Promise.all(nodes.map(async (x) => (await call(x.url, 'GET', '/bench')).json.update_seq));
      let t0 = 0;
      const seen = nodes.map((x, i) => call(x.url, 'GET',
        `/bench/_changes?feed=longpoll&timeout=120000&since=${encodeURIComponent(JSON.stringify(seqs[i]).replace(/^"|"$/g, ''))}`)
        .then(() => performance.now()));
      await sleep(20);     // the long polls are in place
      const on = nodes[rnd(n)];
      t0 = performance.now();
      const res = await call(on.url, 'PUT', `/bench/w${w}`, { w, on: on.name });
      if (res.status !== 201) throw new Error(`write: ${res.status} ${res.text}`);
      const ends = await Promise.all(seen);
      times.push(Math.max(...ends) - t0);
    }
    times.sort((a, b) => a - b);
    const out = {
      n, eager, writes, p50_ms: +pct(times, 50).toFixed(1), p99_ms: +pct(times, 99).toFixed(1),
      max_ms: +times[times.length - 1].toFixed(1), log2n: +Math.log2(n).toFixed(2),
      ...(eager ? {} : { ae_ms: AE_OFF_MS, p50_rounds: +(pct(times, 50) / AE_OFF_MS).toFixed(2),
        p99_rounds: +(pct(times, 99) / AE_OFF_MS).toFixed(2) }),
    };
    const stats = await Promise.all(nodes.map(async (x) => (await call(x.url, 'GET', '/_mesh')).json.replication));
    out.replications_per_write = +(stats.reduce((s, r) => s + r.completed, 0) / writes).toFixed(1);
    console.log(JSON.stringify(out));
    return out;
  } finally {
    for (const x of nodes) x.proc.kill('SIGKILL');
    await sleep(200);
    await fs.rm(dir, { recursive: true, force: true });
  }
}

const rows = [];
for (const n of sizes) {
  rows.push(await run(n, true));
  rows.push(await run(n, false));
}
call.destroy();
console.log('\n| N | eager push | writes | p50 | p99 | log₂N | rounds p50 / p99 (anti-entropy only) | replications per write |');
console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
for (const r of rows) {
  console.log(`| ${r.n} | ${r.eager ? 'on' : 'off'} | ${r.writes} | ${r.p50_ms} ms | ${r.p99_ms} ms | ${r.log2n} | ` +
    `${r.eager ? '—' : `${r.p50_rounds} / ${r.p99_rounds} (of ${r.ae_ms} ms)`} | ${r.replications_per_write} |`);
}
