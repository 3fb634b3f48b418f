// The mesh moves the data, with real processes: four nodes joined through one seed, each
// with an admin and require_valid_user (so the nodes must authenticate to each other with the
// credential derived from the mesh secret). Writes on random nodes converge everywhere,
// revision trees and conflicts included, doc by doc; concurrent edits of the same documents on
// two nodes end as the same conflicts on every node; a node killed with -9 during writes
// loses nothing it acknowledged and catches up after its restart; a node that joins late with
// an empty disk receives everything; eager push delivers a write to every node well inside
// one anti-entropy interval. Random choices come from SEED (printed; rerun with SEED=n).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startServer } from './lib/server.mjs';
import { request } from './lib/http.mjs';
import { waitFor } from './lib/util.mjs';

const SEED = Number(process.env.SEED ?? (Date.now() % 1_000_000));
console.log(`# mesh_data SEED=${SEED}`);
let rngState = SEED || 1;
function rnd(n) {                          // xorshift32: the same seed, the same run
  rngState ^= rngState << 13; rngState >>>= 0;
  rngState ^= rngState >>> 17;
  rngState ^= rngState << 5; rngState >>>= 0;
  return rngState % n;
}

const AE_MS = 10000;
const ADMIN = { name: 'root', password: 'r00t-pw' };
const AUTH = 'Basic ' + Buffer.from(`${ADMIN.name}:${ADMIN.password}`).toString('base64');
const ARGS = [
  '--set', 'mesh.probe_interval_ms=300',
  '--set', 'mesh.probe_timeout_ms=150',
  '--set', 'mesh.gossip_interval_ms=100',
  '--set', 'mesh.suspicion_mult=3',
  '--set', 'mesh.pushpull_interval_ms=3000',
  '--set', `mesh.anti_entropy_interval_ms=${AE_MS}`,
  '--set', `admins.${ADMIN.name}=${ADMIN.password}`,
  '--set', 'chttpd.require_valid_user=true',
];

let dir;
let secretFile;
const nodes = {};

function req(node, method, p, body, opts = {}) {
  return request(nodes[node].url, method, p, { body, headers: { authorization: AUTH }, ...opts });
}

function startNode(name, extra = []) {
  return startServer({ args: ['--node-name', name, '--mesh-secret-file', secretFile, ...ARGS, ...extra] });
}

async function meshOf(name) {
  const res = await req(name, 'GET', '/_mesh');
  assert.equal(res.status, 200, res.text);
  assert.ok(res.json?.members, `GET /_mesh on ${name}: ${res.text.slice(0, 2000)}`);
  return res.json;
}

async function allAlive(observers, members) {
  for (const o of observers) {
    await waitFor(async () => {
      const v = await meshOf(o);
      return members.every((n) => v.members.find((m) => m.name === n)?.state === 'alive');
    }, { timeout: 30_000, message: `${o} sees ${members} alive`, describe: () => meshOf(o) });
  }
}

async function createDb(on, db, everywhere) {
  assert.equal((await req(on, 'PUT', `/${db}`)).status, 201);
  for (const o of everywhere) {
    await waitFor(async () => (await req(o, 'GET', `/${db}`)).status === 200,
      { timeout: 20_000, message: `${db} on ${o}` });
  }
}

// Everything a node holds of db, doc by doc: every leaf with its deleted flag and revision
// path, and what a plain GET answers (the winner and _conflicts, or "deleted").
async function snapshot(node, db) {
  const ch = await req(node, 'GET', `/${db}/_changes?style=all_docs`);
  assert.equal(ch.status, 200, ch.text);
  const ids = [...new Set(ch.json.results.map((r) => r.id))].sort();
  const docs = {};
  for (const id of ids) {
    const e = encodeURIComponent(id);
    const leaves = await req(node, 'GET', `/${db}/${e}?open_revs=all&revs=true`);
    assert.equal(leaves.status, 200, leaves.text);
    const tree = leaves.json.map((x) => ({
      rev: x.ok._rev, deleted: !!x.ok._deleted,
      revisions: `${x.ok._revisions.start}:${x.ok._revisions.ids.join(',')}`,
    })).sort((a, b) => (a.rev < b.rev ? -1 : 1));
    const win = await req(node, 'GET', `/${db}/${e}?conflicts=true&deleted_conflicts=true`);
    const winner = win.status === 200
      ? { rev: win.json._rev, conflicts: (win.json._conflicts ?? []).sort(),
          deleted_conflicts: (win.json._deleted_conflicts ?? []).sort() }
      : { status: win.status, reason: win.json?.reason };
    docs[id] = { tree, winner };
  }
  return docs;
}

// Waits until every node in `on` holds the same copy of db; returns it.
async function converged(on, db, timeout = 40_000) {
  let snaps;
  await waitFor(async () => {
    snaps = await Promise.all(on.map((n) => snapshot(n, db)));
    const first = JSON.stringify(snaps[0]);
    return snaps.every((s) => JSON.stringify(s) === first);
  }, {
    timeout, interval: 300, message: `${db} identical on ${on}`,
    describe: () => on.map((n, i) => ({ n, docs: Object.keys(snaps?.[i] ?? {}).length })),
  });
  return snaps[0];
}

// Every acknowledged revision is in the converged copy: a leaf, or on a leaf's path.
function assertKept(copy, acked, what) {
  for (const [id, revs] of acked) {
    const doc = copy[id];
    assert.ok(doc, `${what}: acknowledged document ${id} is missing`);
    for (const rev of revs) {
      const [gen, hash] = rev.split('-');
      const onPath = doc.tree.some((l) => {
        const [start, ids] = l.revisions.split(':');
        const k = Number(start) - Number(gen);
        return k >= 0 && ids.split(',')[k] === hash;
      });
      assert.ok(onPath, `${what}: acknowledged ${id} ${rev} is lost`);
    }
  }
}

// A writer that edits random documents on random nodes and remembers what was acknowledged.
function writer(db, names, nodesOf) {
  const acked = new Map();
  const revs = new Map();        // last rev this writer saw per node and id
  const ack = (id, rev) => {
    if (!acked.has(id)) acked.set(id, new Set());
    acked.get(id).add(rev);
  };
  async function one(i) {
    const on = nodesOf()[rnd(nodesOf().length)];
    const id = names[rnd(names.length)];
    const key = `${on}/${id}`;
    let res;
    if (revs.has(key) && rnd(5) === 0) {
      res = await req(on, 'DELETE', `/${db}/${id}?rev=${revs.get(key)}`).catch(() => null);
    } else {
      const body = { n: i, on };
      if (revs.has(key)) body._rev = revs.get(key);
      res = await req(on, 'PUT', `/${db}/${id}`, body).catch(() => null);
    }
    if (res && (res.status === 201 || res.status === 200)) {
      ack(id, res.json.rev);
      revs.set(key, res.json.rev);
    } else if (res && res.status === 409) {
      // Stale: read what this node has now and go on from there.
      const cur = await req(on, 'GET', `/${db}/${id}`).catch(() => null);
      if (cur?.status === 200) revs.set(key, cur.json._rev);
      else revs.delete(key);
    }
  }
  return { acked, one };
}

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-mesh-data-'));
  secretFile = path.join(dir, 'secret');
  await fs.writeFile(secretFile, 'the-mesh-data-test-secret-0123456789\n');
  nodes.a = await startNode('a');
  for (const n of ['b', 'c', 'd']) nodes[n] = await startNode(n, ['--join', nodes.a.url]);
  await allAlive(['a', 'b', 'c', 'd'], ['a', 'b', 'c', 'd']);
});

after(async () => {
  for (const s of Object.values(nodes)) await s.stop();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});

test('nodes authenticate to each other; strangers do not get in', async () => {
  const anon = await request(nodes.a.url, 'GET', '/_mesh/summary');
  assert.equal(anon.status, 401);
  const bad = await request(nodes.a.url, 'GET', '/_mesh/summary',
    { headers: { authorization: 'Basic ' + Buffer.from('_mesh:not-the-password').toString('base64') } });
  assert.equal(bad.status, 401);
  const ok = await req('a', 'GET', '/_mesh/summary');
  assert.equal(ok.status, 200);
  assert.equal(typeof ok.json.dbs, 'object');
});

test('summaries: full at first, then only what changed after the cursor', async () => {
  await createDb('a', 'sumdb', ['b']);
  const full = (await req('a', 'GET', '/_mesh/summary')).json;
  assert.equal(full.full, true);
  assert.equal(full.dbs.sumdb, 0);
  const cursor = `/_mesh/summary?epoch=${full.epoch}&since=${full.gen}`;
  const idle = (await req('a', 'GET', cursor)).json;
  assert.deepEqual([idle.full, idle.dbs, idle.gen], [false, {}, full.gen]);
  assert.equal((await req('a', 'PUT', '/sumdb/x', { x: 1 })).status, 201);
  const moved = (await req('a', 'GET', cursor)).json;
  assert.equal(moved.full, false);
  assert.equal(moved.dbs.sumdb, 1);
  assert.ok(moved.gen > full.gen);
  const other = (await req('a', 'GET', `/_mesh/summary?epoch=0000&since=${full.gen}`)).json;
  assert.equal(other.full, true, 'another epoch (a restart) gets everything');
  assert.equal((await req('a', 'GET', '/_mesh/summary?since=abc')).status, 400);
});

test('writes on random nodes converge everywhere, trees and conflicts alike', async () => {
  await createDb('a', 'conv', ['b', 'c', 'd']);
  const ids = Array.from({ length: 20 }, (_, i) => `doc${i}`);
  const w = writer('conv', ids, () => ['a', 'b', 'c', 'd']);
  for (let i = 0; i < 80; i++) await w.one(i);
  const copy = await converged(['a', 'b', 'c', 'd'], 'conv');
  assertKept(copy, w.acked, 'random writes');
  assert.ok(Object.keys(copy).length > 10);
  // Every node reports how each peer stands: checkpointed and, once pushed, nothing behind.
  await waitFor(async () => {
    const rows = (await meshOf('a')).sync.filter((r) => r.db === 'conv');
    return rows.length === 3 && rows.every((r) => r.checkpointed_seq === r.local_seq &&
      r.behind === 0 && typeof r.last_sync_ms === 'number');
  }, { timeout: 3 * AE_MS, message: 'a sees every peer caught up', describe: async () => (await meshOf('a')).sync });
});

test('concurrent edits on two nodes end as the same conflicts on every node', async () => {
  await createDb('b', 'confl', ['a', 'c', 'd']);
  const ids = Array.from({ length: 12 }, (_, i) => `c${i}`);
  const base = {};
  for (const id of ids) base[id] = (await req('b', 'PUT', `/confl/${id}`, { v: 0 })).json.rev;
  await converged(['a', 'b', 'c', 'd'], 'confl');
  // The same base revision edited on b and on c at the same moment; some edits delete.
  const acked = new Map();
  const both = [];
  await Promise.all(ids.map(async (id, i) => {
    const [rb, rc] = await Promise.all([
      req('b', 'PUT', `/confl/${id}`, { _rev: base[id], v: 'b' }),
      i % 4 === 0 ? req('c', 'DELETE', `/confl/${id}?rev=${base[id]}`)
                  : req('c', 'PUT', `/confl/${id}`, { _rev: base[id], v: 'c' }),
    ]);
    const revs = [rb, rc].filter((r) => r.status === 201 || r.status === 200).map((r) => r.json.rev);
    acked.set(id, new Set(revs));
    if (revs.length === 2) both.push(id);
  }));
  const copy = await converged(['a', 'b', 'c', 'd'], 'confl');
  assertKept(copy, acked, 'conflicting writes');
  assert.ok(both.length > 0, 'at least one pair of edits raced (both acknowledged)');
  for (const id of both) {
    assert.equal(copy[id].tree.length, 2, `${id}: both edits are leaves on every node`);
    if (copy[id].winner.rev) {
      const others = [...copy[id].winner.conflicts, ...copy[id].winner.deleted_conflicts];
      assert.equal(others.length, 1, `${id}: the losing edit is listed`);
    }
  }
  console.log(`# ${both.length}/${ids.length} concurrent pairs both acknowledged`);
});

test('eager push: a write reaches all four nodes well inside one anti-entropy interval', async () => {
  await createDb('c', 'eager', ['a', 'b', 'd']);
  await new Promise((r) => setTimeout(r, 500));
  const times = [];
  for (let i = 0; i < 5; i++) {
    const on = ['a', 'b', 'c', 'd'][rnd(4)];
    const t0 = Date.now();
    assert.equal((await req(on, 'PUT', `/eager/e${i}`, { i })).status, 201);
    await Promise.all(['a', 'b', 'c', 'd'].map((o) => waitFor(
      async () => (await req(o, 'GET', `/eager/e${i}`)).status === 200,
      { timeout: AE_MS, interval: 20, message: `e${i} on ${o}` })));
    times.push(Date.now() - t0);
  }
  times.sort((x, y) => x - y);
  console.log(`# eager push, write to all 4 nodes: ${times.join(', ')} ms (anti-entropy ${AE_MS} ms)`);
  assert.ok(times[times.length - 1] < AE_MS / 2, `every write everywhere within ${AE_MS / 2} ms: ${times}`);
});

test('kill -9 during writes, restart: nothing acknowledged lost, the node catches up', async () => {
  await createDb('a', 'crash', ['b', 'c', 'd']);
  const ids = Array.from({ length: 30 }, (_, i) => `k${i}`);
  let live = ['a', 'b', 'c', 'd'];
  const w = writer('crash', ids, () => live);
  let i = 0;
  for (; i < 40; i++) await w.one(i);
  const killed = nodes.d.kill9();
  live = ['a', 'b', 'c'];
  await killed;
  for (; i < 80; i++) await w.one(i);
  await nodes.d.restart();
  live = ['a', 'b', 'c', 'd'];
  for (; i < 110; i++) await w.one(i);
  await allAlive(['a', 'b', 'c', 'd'], ['a', 'b', 'c', 'd']);
  const copy = await converged(['a', 'b', 'c', 'd'], 'crash');
  assertKept(copy, w.acked, 'kill -9');
});

test('a database deleted and created again while a node was away: its old copy stays out', async () => {
  await createDb('a', 'reborn', ['b', 'c', 'd']);
  assert.equal((await req('b', 'PUT', '/reborn/old1', { old: true })).status, 201);
  assert.equal((await req('d', 'PUT', '/reborn/old2', { old: true })).status, 201);
  await converged(['a', 'b', 'c', 'd'], 'reborn');
  await nodes.d.kill9();
  assert.equal((await req('a', 'DELETE', '/reborn')).status, 200);
  for (const o of ['b', 'c']) {
    await waitFor(async () => (await req(o, 'GET', '/reborn')).status === 404,
      { timeout: 20_000, message: `reborn deleted on ${o}` });
  }
  await createDb('a', 'reborn', ['b', 'c']);
  assert.equal((await req('c', 'PUT', '/reborn/new1', { old: false })).status, 201);
  await nodes.d.restart();
  await allAlive(['a', 'b', 'c', 'd'], ['a', 'b', 'c', 'd']);
  await waitFor(async () => (await req('d', 'GET', '/reborn/new1')).status === 200,
    { timeout: 30_000, message: 'new1 on d' });
  const copy = await converged(['a', 'b', 'c', 'd'], 'reborn');
  assert.deepEqual(Object.keys(copy), ['new1']);
});

test('a node that joins late with an empty disk receives everything', async () => {
  nodes.e = await startNode('e', ['--join', nodes.b.url]);
  await allAlive(['e'], ['a', 'b', 'c', 'd', 'e']);
  for (const db of ['conv', 'confl', 'eager', 'crash']) {
    const copy = await converged(['a', 'e'], db);
    assert.ok(Object.keys(copy).length > 0);
  }
});

test('anti-entropy alone (eager push off) converges, and an idle round moves nothing', async () => {
  const secret2 = path.join(dir, 'secret2');
  await fs.writeFile(secret2, 'a-second-mesh-of-its-own-0123456789\n');
  const AE = ['--mesh-secret-file', secret2, ...ARGS, '--set', 'mesh.eager_push=false',
    '--set', 'mesh.anti_entropy_interval_ms=1000'];
  nodes.f = await startServer({ args: ['--node-name', 'f', ...AE] });
  nodes.g = await startServer({ args: ['--node-name', 'g', ...AE, '--join', nodes.f.url] });
  await allAlive(['f', 'g'], ['f', 'g']);
  await createDb('f', 'quiet', ['g']);
  for (let i = 0; i < 5; i++) assert.equal((await req(i % 2 ? 'f' : 'g', 'PUT', `/quiet/q${i}`, { i })).status, 201);
  await converged(['f', 'g'], 'quiet', 20_000);
  // Settled: rounds go on (one summary each), replications do not.
  const settled = async () => {
    const rows = (await meshOf('f')).sync.filter((r) => r.db === 'quiet');
    return rows.length === 1 && rows[0].behind === 0 && rows[0].pull_behind === 0;
  };
  await waitFor(settled, { timeout: 10_000, message: 'f and g settled' });
  await new Promise((r) => setTimeout(r, 1500));
  const before = (await meshOf('f')).replication;
  await new Promise((r) => setTimeout(r, 3500));
  const after = (await meshOf('f')).replication;
  assert.ok(after.summaries >= before.summaries + 2, `rounds went on: ${JSON.stringify([before, after])}`);
  assert.equal(after.completed, before.completed, 'an idle round replicates nothing');
  assert.equal(after.failed, before.failed);
  // The two meshes stay apart: nothing of the first one is here.
  assert.equal((await req('f', 'GET', '/conv')).status, 404);
});

test('a restart resumes from the saved progress: its first rounds replicate nothing', async () => {
  // f and g (eager push off, a round every second) share 'quiet'; two more databases, then
  // wait until each side knows the other is in step in every one of them.
  const dbs = ['quiet', 'quiet2', 'quiet3'];
  for (const db of dbs.slice(1)) {
    await createDb('f', db, ['g']);
    for (let i = 0; i < 3; i++) assert.equal((await req(i % 2 ? 'f' : 'g', 'PUT', `/${db}/r${i}`, { i })).status, 201);
    await converged(['f', 'g'], db, 20_000);
  }
  const inStep = async (node) => {
    const rows = (await meshOf(node)).sync.filter((r) => dbs.includes(r.db));
    return rows.length === dbs.length && rows.every((r) => r.behind === 0 && r.pull_behind === 0);
  };
  await waitFor(async () => await inStep('f') && await inStep('g'),
    { timeout: 20_000, message: 'f and g in step', describe: async () => [(await meshOf('f')).sync, (await meshOf('g')).sync] });
  const fBefore = (await meshOf('f')).replication;
  await nodes.g.restart();                  // SIGTERM: the progress is saved as it stops
  await allAlive(['f', 'g'], ['f', 'g']);
  // Three rounds of g's with f, and f's rounds with g's new process meanwhile.
  await waitFor(async () => (await meshOf('g')).replication.summaries >= 3,
    { timeout: 15_000, message: 'g rounds with f' });
  const g = await meshOf('g');
  assert.equal(g.replication.completed, 0, `g replicated after its restart: ${JSON.stringify(g.replication)}`);
  assert.equal(g.replication.failed, 0);
  for (const db of dbs) {
    const row = g.sync.find((r) => r.db === db && r.peer === 'f');
    assert.ok(row, `a row of ${db}: ${JSON.stringify(g.sync)}`);
    assert.equal(row.behind, 0, `the saved checkpoint of ${db}: ${JSON.stringify(row)}`);
    assert.equal(row.pull_behind, 0, `${db}: ${JSON.stringify(row)}`);
  }
  const fAfter = (await meshOf('f')).replication;
  assert.equal(fAfter.completed, fBefore.completed, 'f has nothing to move either');
  // And it still moves what is new.
  assert.equal((await req('f', 'PUT', '/quiet2/after-restart', { x: 1 })).status, 201);
  await waitFor(async () => (await req('g', 'GET', '/quiet2/after-restart')).status === 200,
    { timeout: 15_000, message: 'a new write reaches g' });
});
