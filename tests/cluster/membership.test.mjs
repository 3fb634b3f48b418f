// Membership with real processes behind fault-injecting proxies: nodes join through one
// seed; a partition (proxy cut) makes each side declare the other dead and the heal merges
// the views; kill -9 makes a node dead everywhere; a graceful stop makes it left everywhere;
// a database created and then deleted while a node is cut off stays deleted after the heal,
// on that node too. The tests share one cluster and run in order.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request } from '../interop/lib/http.mjs';
import { waitFor } from '../interop/lib/util.mjs';
import { Cluster, clusterSeed } from './lib/cluster.mjs';

const N = 4;
let c;
let rng;

function names(idx) { return idx.map((i) => c.nodes[i].name); }
function expectAll(idx, state) { return Object.fromEntries(names(idx).map((n) => [n, state])); }
function shuffled(list) {
  const a = [...list];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

before(async () => {
  const seed = clusterSeed('membership');
  c = await new Cluster({ seed }).init();
  rng = c.rng;
  for (let i = 0; i < N; i++) await c.addNode();
});

after(async () => {
  if (c) {
    for (const n of c.nodes) {
      const s = n.proxy.stats;
      console.log(`# proxy ${n.name}: udp ${s.udpIn} in, ${s.udpDropped} dropped; http ${s.httpOut} out, ` +
        `${s.httpDropped} dropped; ${s.direct} connections around the proxies`);
    }
    await c.close();
  }
});

test('every node joins through one seed and sees all the others alive', async () => {
  await c.waitView(expectAll([0, 1, 2, 3], 'alive'));
  const v = await c.mesh(2);
  for (const m of v.members) assert.equal(m.url, c.nodes.find((n) => n.name === m.name).proxy.url());
  // The proxies carried the mesh's traffic: probes through the relays, push-pulls (the join)
  // through the egress proxies, nothing around them.
  assert.ok(c.nodes[0].proxy.stats.udpIn > 0, 'probes crossed the UDP relay');
  assert.ok(c.nodes.slice(1).every((n) => n.proxy.stats.httpOut > 0), 'joins crossed the egress proxies');
  assert.ok(c.nodes.every((n) => n.proxy.stats.direct === 0), 'no node traffic around the proxies');
});

test('a partition makes each side declare the other dead; the heal merges the views', async () => {
  const order = shuffled([0, 1, 2, 3]);
  const left = order.slice(0, 2);
  const right = order.slice(2);
  c.partition([left, right]);
  await c.waitView(expectAll(right, 'dead'), 30_000, left);
  await c.waitView(expectAll(left, 'dead'), 30_000, right);
  for (const i of left) await c.waitView(expectAll(left, 'alive'), 5_000, [i]);
  c.heal();
  // Dead members are retried by push-pull every reconnect interval (10 s): each side learns
  // the other is back and the suspects refute with a higher incarnation.
  await c.waitView(expectAll([0, 1, 2, 3], 'alive'), 60_000);
  const v = await c.mesh(left[0]);
  for (const i of right) assert.ok(v.members.find((m) => m.name === c.nodes[i].name).incarnation > 0);
});

test('a database created and deleted while a node is cut off stays deleted after the heal', async () => {
  const away = 1 + Math.floor(rng() * (N - 1));
  const others = [0, 1, 2, 3].filter((i) => i !== away);
  const writer = others[Math.floor(rng() * others.length)];
  // "before" exists everywhere before the cut; "during" is born and dies during it.
  assert.equal((await request(c.url(writer), 'PUT', '/before_cut')).status, 201);
  for (const i of [0, 1, 2, 3]) {
    await waitFor(async () => (await request(c.url(i), 'GET', '/before_cut')).status === 200,
      { timeout: 20_000, message: `before_cut on ${c.nodes[i].name}` });
  }
  c.isolate(away);
  await c.waitState(others, c.nodes[away].name, 'dead');
  assert.equal((await request(c.url(writer), 'PUT', '/during_cut')).status, 201);
  assert.equal((await request(c.url(writer), 'DELETE', '/during_cut')).status, 200);
  assert.equal((await request(c.url(writer), 'DELETE', '/before_cut')).status, 200);
  for (const i of others) {
    await waitFor(async () => (await request(c.url(i), 'GET', '/before_cut')).status === 404,
      { timeout: 20_000, message: `before_cut deleted on ${c.nodes[i].name}` });
  }
  // The cut-off node still has its copy and knows nothing of the deletion.
  assert.equal((await request(c.url(away), 'GET', '/before_cut')).status, 200);
  c.heal();
  await c.waitView(expectAll([0, 1, 2, 3], 'alive'), 60_000);
  await waitFor(async () => (await request(c.url(away), 'GET', '/before_cut')).status === 404,
    { timeout: 30_000, message: 'the returning node drops its copy of the deleted database' });
  // Give a returning registry every chance to resurrect them, then check all nodes.
  await new Promise((r) => setTimeout(r, 3000));
  for (const i of [0, 1, 2, 3]) {
    for (const db of ['before_cut', 'during_cut']) {
      assert.equal((await request(c.url(i), 'GET', `/${db}`)).status, 404, `${db} on ${c.nodes[i].name}`);
    }
    const entry = (await c.mesh(i)).databases.find((d) => d.name === 'before_cut');
    assert.equal(entry.deleted, true);
  }
});

test('kill -9 makes a node dead on every other node; a restart brings it back', async () => {
  const victim = 1 + Math.floor(rng() * (N - 1));
  const others = [0, 1, 2, 3].filter((i) => i !== victim);
  await c.kill9(victim);
  await c.waitState(others, c.nodes[victim].name, 'dead');
  await c.restart(victim);
  await c.waitView(expectAll([0, 1, 2, 3], 'alive'), 60_000);
});

test('a graceful stop is left, not dead, on every other node', async () => {
  const leaver = 1 + Math.floor(rng() * (N - 1));
  const others = [0, 1, 2, 3].filter((i) => i !== leaver);
  const res = await c.stop(leaver);
  assert.equal(res.code, 0);
  await c.waitState(others, c.nodes[leaver].name, 'left', 20_000);
  // It stays left: nobody later declares it dead.
  await new Promise((r) => setTimeout(r, 2000));
  for (const o of others) {
    assert.equal((await c.mesh(o)).members.find((m) => m.name === c.nodes[leaver].name).state, 'left');
  }
});
