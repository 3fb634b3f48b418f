// Forgetting members with real processes, with [mesh] reap_dead_ms and reap_left_ms cut to
// seconds: a kill -9ed node, once dead everywhere, disappears from every GET /_mesh after
// reap_dead_ms and stays gone; restarted, it is alive everywhere again; a node stopped
// gracefully is left, then gone after reap_left_ms. The tests share one cluster, in order.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { waitFor } from '../interop/lib/util.mjs';
import { Cluster, clusterSeed } from './lib/cluster.mjs';

const N = 4;
const REAP_DEAD_MS = 4000;
const REAP_LEFT_MS = 3000;
let c;

async function listedBy(observers, name) {
  const out = [];
  for (const o of observers) if ((await c.mesh(o)).members.some((m) => m.name === name)) out.push(o);
  return out;
}

async function waitGone(observers, name) {
  await waitFor(async () => (await listedBy(observers, name)).length === 0, {
    timeout: 30_000,
    message: `${name} forgotten by every other node`,
    describe: async () => (await listedBy(observers, name)).map((o) => c.nodes[o].name),
  });
}

before(async () => {
  const seed = clusterSeed('reap');
  c = await new Cluster({ seed, mesh: { reap_dead_ms: REAP_DEAD_MS, reap_left_ms: REAP_LEFT_MS } }).init();
  for (let i = 0; i < N; i++) await c.addNode();
  await c.waitView(Object.fromEntries(c.nodes.map((n) => [n.name, 'alive'])));
});

after(async () => { if (c) await c.close(); });

test('a node dead longer than reap_dead_ms is forgotten everywhere; restarted, it is back', async () => {
  const victim = 1 + Math.floor(c.rng() * (N - 1));
  const others = [...Array(N).keys()].filter((i) => i !== victim);
  const name = c.nodes[victim].name;
  await c.kill9(victim);
  await c.waitState(others, name, 'dead');
  await waitGone(others, name);
  // Gossip and push-pulls (every 2 s here) do not bring it back.
  await new Promise((r) => setTimeout(r, 5000));
  assert.deepEqual(await listedBy(others, name), []);
  for (const o of others) assert.equal((await c.mesh(o)).members.length, N - 1);
  // By now the tombstones (kept reap_dead_ms again) are gone too: it joins as a newcomer.
  await c.restart(victim);
  await c.waitView(Object.fromEntries(c.nodes.map((n) => [n.name, 'alive'])), 60_000);
});

test('a node that left is forgotten after reap_left_ms', async () => {
  const leaver = 1 + Math.floor(c.rng() * (N - 1));
  const others = [...Array(N).keys()].filter((i) => i !== leaver);
  const name = c.nodes[leaver].name;
  const res = await c.stop(leaver);
  assert.equal(res.code, 0);
  await c.waitState(others, name, 'left', 20_000);
  await waitGone(others, name);
});
