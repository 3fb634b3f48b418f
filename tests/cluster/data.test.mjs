// The data moving through the mesh, with real processes behind fault-injecting proxies and
// the checker comparing every copy doc by doc (revision trees, winners, _conflicts) with
// every acknowledged write kept: writes on random nodes over lossy, slow links converge; a
// partition with conflicting edits and deletions on both sides heals into identical copies;
// kill -9 during writes and a restart lose nothing; a node that joins late with an empty
// disk receives everything, also when its push-pulls are lost and it hears of its peers
// before the database registry; a node back from an absence writes each revision it missed
// once; a pull that keeps failing does not hold back the push that repairs its copy. The
// tests share one cluster (the last has two nodes of its own) and run in order.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request, docPath } from '../interop/lib/http.mjs';
import { waitFor } from '../interop/lib/util.mjs';
import { Cluster, clusterSeed } from './lib/cluster.mjs';
import { Checker } from './lib/checker.mjs';

const N = 4;
let c;
let rng;
const checker = new Checker();
const dbs = [];

const pick = (list) => list[Math.floor(rng() * list.length)];

/** The current rev of id on node i (null when missing or deleted). */
async function revOn(i, db, id) {
  try {
    const r = await request(c.url(i), 'GET', docPath(db, id), { timeout: 10_000 });
    return r.status === 200 ? r.json._rev : null;
  } catch {
    return null;
  }
}

/** An edit of id on node i as a client would make it: update what that node has, or create. */
async function edit(i, db, id, extra = {}) {
  const rev = await revOn(i, db, id);
  const doc = { _id: id, by: c.nodes[i].name, r: Math.floor(rng() * 1e9), ...extra };
  if (rev) doc._rev = rev;
  return checker.write(c, i, db, doc);
}

async function remove(i, db, id) {
  const rev = await revOn(i, db, id);
  if (!rev) return null;
  return checker.write(c, i, db, { _id: id, _rev: rev, _deleted: true });
}

async function createDb(db) {
  dbs.push(db);
  assert.equal((await request(c.url(0), 'PUT', `/${db}`)).status, 201);
  for (const i of c.running()) {
    await waitFor(async () => (await request(c.url(i), 'GET', `/${db}`)).status === 200,
      { timeout: 20_000, message: `${db} on ${c.nodes[i].name}` });
  }
}

/** What each node's GET /_mesh says of its members and of the sync of the given dbs: the
 * first thing to read when copies do not converge. */
async function meshState(list) {
  const out = {};
  for (const i of c.running().reverse()) {     // the newest node first
    try {
      const m = await c.mesh(i);
      out[c.nodes[i].name] = {
        members: m.members.map((x) => `${x.name}:${x.state}`).join(' '),
        sync: m.sync.filter((r) => list.includes(r.db)).map((r) =>
          `${r.db}/${r.peer} local ${r.local_seq} peer ${r.peer_seq} pulled ${r.pulled_seq} ` +
          `pushed ${r.checkpointed_seq} failures ${r.failures}`),
        databases: m.databases,
      };
    } catch (e) {
      out[c.nodes[i].name] = String(e);
    }
  }
  return out;
}

/** Waits until every running node holds the same copy of each db with every acked write. */
async function converge(list, timeout = 90_000) {
  const nodes = c.running();
  let last;
  await waitFor(async () => {
    last = await checker.verify(c, nodes, list);
    return true;
  }, { timeout, interval: 1000, message: `${list.join(', ')} converge on ${nodes.length} nodes`,
    describe: async () => {
      const st = await meshState(list);
      console.log(`# mesh state: ${JSON.stringify(st, null, 1)}`);
      return st;
    } });
  return last;
}

before(async () => {
  const seed = clusterSeed('data');
  c = await new Cluster({
    seed,
    mesh: { anti_entropy_interval_ms: 1000 },
  }).init();
  rng = c.rng;
  for (let i = 0; i < N; i++) await c.addNode();
  await c.waitView(Object.fromEntries(c.nodes.map((n) => [n.name, 'alive'])));
});

after(async () => {
  if (c) await c.close();
});

test('writes on random nodes over lossy, slow links converge everywhere', async () => {
  await createDb('conv');
  c.degrade({ drop: 0.05, delay: 3 });
  const ids = Array.from({ length: 30 }, (_, k) => `doc${k}`);
  for (let k = 0; k < 150; k++) await edit(pick(c.running()), 'conv', pick(ids));
  c.heal();
  const r = await converge(['conv']);
  assert.ok(r.acked >= 140, `acknowledged ${r.acked} of 150`);
});

test('a partition with conflicting edits and deletions on both sides heals into identical copies', async () => {
  await createDb('split');
  const ids = Array.from({ length: 20 }, (_, k) => `s${k}`);
  for (const id of ids) await edit(0, 'split', id);
  await converge(['split']);
  const order = [0, 1, 2, 3].sort(() => rng() - 0.5);
  const sides = [order.slice(0, 2), order.slice(2)];
  c.partition(sides);
  await c.waitState(sides[0], c.nodes[sides[1][0]].name, 'dead');
  for (const [s, side] of sides.entries()) {
    for (const id of ids) {
      const roll = rng();
      const node = pick(side);
      // Each side: edits (conflicts with the other side's), deletions, and brand-new docs
      // under the same ids on both sides.
      if (roll < 0.5) await edit(node, 'split', id, { side: s });
      else if (roll < 0.75) await remove(node, 'split', id);
      else { await edit(node, 'split', id, { side: s }); await edit(pick(side), 'split', id, { side: s, again: true }); }
    }
    for (let k = 0; k < 5; k++) await edit(pick(side), 'split', `new${k}`, { side: s });
  }
  c.heal();
  await c.waitView(Object.fromEntries(c.nodes.map((n) => [n.name, 'alive'])), 60_000);
  await converge(['split']);
  // The conflicts made on both sides are the same conflicts everywhere.
  const snap = await Checker.snapshot(c.url(0), 'split');
  const conflicted = Object.values(snap).filter((d) => d.tree.length > 1).length;
  assert.ok(conflicted > 0, 'the partition produced conflicts');
});

test('kill -9 during writes and a restart lose no acknowledged write', async () => {
  await createDb('crash');
  const victim = 1 + Math.floor(rng() * (N - 1));
  const ids = Array.from({ length: 25 }, (_, k) => `k${k}`);
  let killed = false;
  const writes = (async () => {
    for (let k = 0; k < 120; k++) {
      // The victim is favoured until it dies, so it holds writes nobody else has yet.
      const up = c.running().filter((i) => !(killed && i === victim));
      const node = !killed && rng() < 0.5 ? victim : pick(up);
      await edit(node, 'crash', pick(ids));
    }
  })();
  // Kill once the victim has acknowledged a few writes of its own, at a random count.
  const before = 3 + Math.floor(rng() * 8);
  await waitFor(() => checker.acked.filter((w) => w.db === 'crash' && w.node === victim).length >= before,
    { timeout: 60_000, interval: 20, message: 'the victim acknowledges writes' });
  await c.kill9(victim);
  killed = true;
  await writes;
  await c.restart(victim);
  await c.waitView(Object.fromEntries(c.nodes.map((n) => [n.name, 'alive'])), 60_000);
  const acked = checker.acked.filter((w) => w.db === 'crash' && w.node === victim).length;
  console.log(`# ${acked} writes acknowledged by the victim before kill -9`);
  await converge(['crash']);
});

test('a node that joins late with an empty disk receives everything', async () => {
  const late = await c.addNode({ name: 'late' });
  await c.waitView(Object.fromEntries(c.nodes.map((n) => [n.name, 'alive'])), 60_000);
  for (const db of dbs) {
    await waitFor(async () => (await request(c.url(late.index), 'GET', `/${db}`)).status === 200,
      { timeout: 30_000, message: `${db} created on the late node` });
  }
  const r = await converge(dbs, 120_000);
  console.log(`# ${r.acked} acknowledged writes on ${c.running().length} nodes, ${r.refused} refused`);
});

test('a node that hears of its peers before the database registry still pulls every database', async () => {
  // Every push-pull towards the newcomer is lost (the answer to its join, and the others'
  // own push-pulls), so it learns the members from their probes but not the registry; its
  // first anti-entropy rounds with each peer then find databases it cannot take in yet. Once
  // the registry arrives, nothing is written any more: only rounds that read those databases
  // again can bring them.
  const index = c.nodes.length;
  const others = c.running();
  for (const i of others) c.setLink(i, index, { block: /^POST \/_mesh$/ });
  const late = await c.addNode({ name: 'later' });
  await c.waitView(Object.fromEntries(c.running().map((i) => [c.nodes[i].name, 'alive'])), 60_000, [index]);
  await new Promise((r) => setTimeout(r, 3000));      // a few rounds with every peer
  const before = (await request(c.url(index), 'GET', '/_all_dbs')).json;
  assert.deepEqual(before.filter((db) => dbs.includes(db)), [], 'the registry was held back');
  for (const i of others) c.setLink(i, index, { block: undefined });
  for (const db of dbs) {
    await waitFor(async () => (await request(c.url(late.index), 'GET', `/${db}`)).status === 200,
      { timeout: 30_000, message: `${db} created on ${late.name}` });
  }
  await converge(dbs, 60_000);
});

test('a node back from an absence writes each revision it missed once', async () => {
  // While it is away (SIGTERM: it leaves) 120 documents go to one node and spread to the
  // others; back, it could pull the database from every peer at once, and the same
  // revisions would be written by each pull that ran before the others finished. It pulls
  // from one peer at a time, so its replications write at most the 120 it lacks.
  await createDb('away');
  const victim = 1;
  // Every running node's count: the victim's own pulls count on it, its peers' pushes to it
  // on them.
  const written = async () => {
    let sum = 0;
    for (const i of c.running()) sum += (await c.mesh(i)).replication.docs_written;
    return sum;
  };
  await c.stop(victim);
  const docs = Array.from({ length: 120 }, (_, k) => ({ _id: `a${k}`, k }));
  for (let k = 0; k < docs.length; k += 40) {
    assert.equal((await checker.bulk(c, 0, 'away', docs.slice(k, k + 40))).length, 40);
  }
  await converge(['away']);
  const before = await written();
  await c.restart(victim);
  await c.waitView(Object.fromEntries(c.running().map((i) => [c.nodes[i].name, 'alive'])), 60_000);
  await converge(['away']);
  const m = await c.mesh(victim);
  const moved = (await written()) - before;
  console.log(`# back: ${moved} revisions written by all nodes; the victim's ${JSON.stringify(m.replication)}`);
  assert.ok(moved <= docs.length,
    `${moved} revisions written for ${docs.length} missed: the victim's ${JSON.stringify(m.replication)}`);
});

test('a pull that keeps failing does not hold back the push that repairs it', async () => {
  // Two nodes of their own, so that x has a round with q every period. x reads q's summaries,
  // but each of its data requests for `stuck` to q is lost; q's write is not pushed to x
  // eagerly (eager push off: a push that was lost). x keeps queuing its pull of `stuck` from
  // q, and each attempt fails; only q's anti-entropy push can bring the write, so q must not
  // skip it on the word that x is pulling that database from it. Nothing was ever written to
  // x's copy, so q has not heard of it in x's summaries since it was made: x's failing pull
  // must list it there again.
  const c2 = await new Cluster({
    seed: Math.floor(rng() * 2 ** 31),
    mesh: { anti_entropy_interval_ms: 1000, eager_push: false },
  }).init();
  try {
    const q = 0, x = 1;
    await c2.addNode();
    await c2.addNode();
    await c2.waitView({ n0: 'alive', n1: 'alive' });
    const check = new Checker();
    assert.equal((await request(c2.url(q), 'PUT', '/stuck')).status, 201);
    await waitFor(async () => (await request(c2.url(x), 'GET', '/stuck')).status === 200,
      { timeout: 20_000, message: 'stuck on x' });
    c2.setLink(x, q, { block: /^[A-Z]+ \/stuck(\/|$)/ });
    await check.write(c2, q, 'stuck', { _id: 'w', v: 1 });
    await waitFor(async () => {
      await check.verify(c2, [q, x], ['stuck']);
      return true;
    }, { timeout: 30_000, interval: 1000, message: 'the write on q reaches x',
      describe: async () => (await c2.mesh(x)).sync.filter((r) => r.db === 'stuck') });
    const row = (await c2.mesh(x)).sync.find((r) => r.db === 'stuck' && r.peer === 'n0');
    assert.ok(row?.failures > 0, `x's pulls from q failed meanwhile: ${JSON.stringify(row)}`);
  } finally {
    await c2.close();
  }
});
