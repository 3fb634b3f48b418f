// Eager push reaches every node by itself: six nodes with fanout 1 and anti-entropy rounds
// too far apart to matter, so a write gets to a node only through pushes. Each node's eager
// set starts with its successor on the ring of member names, so the pushes go round the ring
// and every node gets every write; with random peers alone, six nodes each pushing to one
// random other form a graph that rarely leads from the writer to all five others.
// Random choices come from SEED (printed; rerun with SEED=n).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startServer } from './lib/server.mjs';
import { request } from './lib/http.mjs';
import { waitFor } from './lib/util.mjs';

const SEED = Number(process.env.SEED ?? (Date.now() % 1_000_000));
console.log(`# mesh_eager SEED=${SEED}`);
let rngState = SEED || 1;
function rnd(n) {
  rngState ^= rngState << 13; rngState >>>= 0;
  rngState ^= rngState >>> 17;
  rngState ^= rngState << 5; rngState >>>= 0;
  return rngState % n;
}

const N = 6;
const ARGS = [
  '--set', 'mesh.fanout=1',
  '--set', 'mesh.probe_interval_ms=300',
  '--set', 'mesh.probe_timeout_ms=150',
  '--set', 'mesh.gossip_interval_ms=100',
  '--set', 'mesh.pushpull_interval_ms=2000',
  '--set', 'mesh.anti_entropy_interval_ms=600000',
];
let dir;
const nodes = [];

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-mesh-eager-'));
  const secret = path.join(dir, 'secret');
  await fs.writeFile(secret, 'mesh-eager-test-secret-0123456789\n');
  for (let i = 0; i < N; i++) {
    nodes.push(await startServer({ args: ['--node-name', `e${i}`, '--mesh-secret-file', secret, ...ARGS,
      ...(i ? ['--join', nodes[0].url] : [])] }));
  }
  for (const x of nodes) {
    await waitFor(async () => (await request(x.url, 'GET', '/_mesh')).json.members
      .filter((m) => m.state === 'alive').length === N, { timeout: 60_000, message: 'all alive' });
  }
});

after(async () => {
  for (const x of nodes) await x.stop();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});

test('with fanout 1 and no anti-entropy, every write reaches every node by eager push', async () => {
  assert.equal((await request(nodes[0].url, 'PUT', '/ring')).status, 201);
  for (const x of nodes) {
    await waitFor(async () => (await request(x.url, 'GET', '/ring')).status === 200,
      { timeout: 20_000, message: `ring on ${x.url}` });
  }
  // Each node's start-up rounds (one per peer first seen) are over before the writes.
  await new Promise((r) => setTimeout(r, 1000));
  for (let w = 0; w < 4; w++) {
    const on = rnd(N);
    const t0 = Date.now();
    assert.equal((await request(nodes[on].url, 'PUT', `/ring/w${w}`, { body: { on } })).status, 201);
    for (const [i, x] of nodes.entries()) {
      await waitFor(async () => (await request(x.url, 'GET', `/ring/w${w}`)).status === 200,
        { timeout: 15_000, interval: 50, message: `w${w} (written on e${on}) on e${i}` });
    }
    console.log(`# w${w} from e${on} on all ${N} nodes in ${Date.now() - t0} ms`);
  }
  const rounds = await Promise.all(nodes.map(async (x) => (await request(x.url, 'GET', '/_mesh')).json.replication.summaries));
  console.log(`# anti-entropy summaries per node: ${rounds.join(', ')}`);
});
