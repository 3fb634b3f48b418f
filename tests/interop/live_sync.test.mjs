// PouchDB live sync (push and pull, longpoll feeds) between a memory PouchDB and mimeo: writes on
// either side reach the other, a concurrent edit of one doc becomes the same conflict on both
// sides, and cancelling ends the sync cleanly.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import { client, docPath } from './lib/http.mjs';
import { uniqueDbName, waitFor, sorted, compareLeaves, once } from './lib/util.mjs';
import { PouchDB, memoryDb } from './lib/pouch.mjs';

let server;
let c;
let dbName;
let local;
let remote;
let sync;
const events = { change: 0, paused: 0, active: 0, error: [], denied: [] };

before(async () => {
  server = await startServer();
  c = client(server.url);
  dbName = uniqueDbName('livesync');
  const created = await c.put(`/${dbName}`);
  assert.equal(created.status, 201, created.text);
  local = memoryDb('live');
  remote = new PouchDB(`${server.url}/${dbName}`);
});

after(async () => {
  if (sync) sync.cancel();
  await local?.destroy().catch(() => {});
  await server?.stop();
});

/** {id: {rev, deleted, conflicts}} for every doc of a database. */
async function state(db) {
  const out = {};
  const res = await db.changes({ style: 'all_docs', include_docs: true, conflicts: true });
  for (const row of res.results) {
    out[row.id] = {
      rev: row.doc?._rev ?? null,
      deleted: !!row.deleted,
      conflicts: row.doc?._conflicts ? sorted(row.doc._conflicts) : [],
      body: row.deleted ? null : stripped(row.doc),
    };
  }
  return out;
}

function stripped(doc) {
  const { _rev, _conflicts, ...rest } = doc;
  return rest;
}

async function converged() {
  const [a, b] = await Promise.all([state(local), state(remote)]);
  try {
    assert.deepEqual(b, a);
    return a;
  } catch {
    return false;
  }
}

async function waitConverged(message) {
  return waitFor(converged, {
    timeout: 30_000, interval: 100, message,
    describe: async () => ({ local: await state(local), remote: await state(remote) }),
  });
}

test('a live sync starts and reaches the paused (idle) state', async () => {
  sync = local.sync(remote, { live: true, retry: true });
  sync.on('change', () => { events.change++; });
  sync.on('paused', () => { events.paused++; });
  sync.on('active', () => { events.active++; });
  sync.on('error', (e) => { events.error.push(e); });
  sync.on('denied', (e) => { events.denied.push(e); });
  await waitFor(() => events.paused > 0, { message: 'sync paused after its first catch-up' });
});

test('writes on the local side reach mimeo', async () => {
  const docs = Array.from({ length: 20 }, (_, i) => ({ _id: `local-${i}`, from: 'local', i }));
  await local.bulkDocs(docs);
  await local.put({ _id: 'local-single', from: 'local' });
  await waitFor(async () => {
    const res = await c.get(`/${dbName}/_all_docs`);
    return res.json.rows.filter((r) => r.id.startsWith('local-')).length === 21;
  }, { message: 'local docs visible on mimeo' });
  await waitConverged('both sides hold the local writes');
});

test('writes on mimeo reach the local side', async () => {
  for (let i = 0; i < 10; i++) {
    const res = await c.put(docPath(dbName, `remote-${i}`), { from: 'remote', i });
    assert.equal(res.status, 201, res.text);
  }
  const bulk = await c.post(`/${dbName}/_bulk_docs`, { docs: Array.from({ length: 10 }, (_, i) => ({ _id: `remote-bulk-${i}`, i })) });
  assert.equal(bulk.status, 201, bulk.text);
  await waitFor(async () => (await local.allDocs({ startkey: 'remote-', endkey: 'remote-\uffff' })).rows.length === 20,
    { message: 'remote docs visible locally' });
  await waitConverged('both sides hold the remote writes');
});

test('interleaved updates and deletions on both sides converge', async () => {
  for (let i = 0; i < 5; i++) {
    const d = await local.get(`remote-${i}`);
    await local.put({ ...d, touched: 'local' });
    const r = await c.get(docPath(dbName, `local-${i}`));
    const u = await c.put(docPath(dbName, `local-${i}`), { ...r.json, touched: 'remote' });
    assert.equal(u.status, 201, u.text);
  }
  const gone = await local.get('local-10');
  await local.remove(gone);
  const r = await c.get(docPath(dbName, 'remote-9'));
  const del = await c.delete(`${docPath(dbName, 'remote-9')}?rev=${r.json._rev}`);
  assert.equal(del.status, 200, del.text);
  const s = await waitConverged('updates and deletions converge');
  assert.equal(s['local-10'].deleted, true);
  assert.equal(s['remote-9'].deleted, true);
  assert.equal(s['remote-0'].body.touched, 'local');
  assert.equal(s['local-0'].body.touched, 'remote');
});

test('a concurrent edit of one doc on both sides becomes the same conflict on both sides', async () => {
  // Both sides edit the same revision before either edit replicates. If the replication wins the
  // race on mimeo (its PUT then answers 409), try again with another document.
  let id;
  let localRev;
  let remoteRev;
  for (let attempt = 0; attempt < 5 && !remoteRev; attempt++) {
    id = `contested-${attempt}`;
    const base = await local.put({ _id: id, v: 'base' });
    await waitFor(async () => (await c.get(docPath(dbName, id))).status === 200, { message: `${id} reached mimeo` });
    const [l, r] = await Promise.all([
      local.put({ _id: id, _rev: base.rev, v: 'edited locally' }),
      c.put(docPath(dbName, id), { _rev: base.rev, v: 'edited on mimeo' }),
    ]);
    localRev = l.rev;
    if (r.status === 201) remoteRev = r.json.rev;
    else assert.equal(r.status, 409, r.text);
  }
  assert.ok(remoteRev, 'produced a concurrent edit');
  assert.notEqual(localRev, remoteRev);
  const [winner, loser] = [localRev, remoteRev]
    .map((rev) => ({ rev, deleted: false })).sort(compareLeaves).reverse().map((l) => l.rev);

  const s = await waitFor(async () => {
    const st = await converged();
    return st && st[id].conflicts.length === 1 ? st : false;
  }, { timeout: 30_000, interval: 100, message: 'the conflict converged',
    describe: async () => ({ local: (await state(local))[id], remote: (await state(remote))[id] }) });
  assert.equal(s[id].rev, winner, 'both sides pick the deterministic winner');
  assert.deepEqual(s[id].conflicts, [loser]);

  const viaHttp = await c.get(`${docPath(dbName, id)}?conflicts=true`);
  assert.equal(viaHttp.json._rev, winner);
  assert.deepEqual(viaHttp.json._conflicts, [loser]);
  const viaPouch = await local.get(id, { conflicts: true });
  assert.equal(viaPouch._rev, winner);
  assert.deepEqual(viaPouch._conflicts, [loser]);

  // Resolving the conflict on one side resolves it on both.
  const del = await c.delete(`${docPath(dbName, id)}?rev=${loser}`);
  assert.equal(del.status, 200, del.text);
  await waitFor(async () => {
    const st = await converged();
    return st && st[id].conflicts.length === 0 && st[id].rev === winner;
  }, { timeout: 30_000, interval: 100, message: 'the resolution converged' });
});

test('the sync reported no errors and cancel() completes it cleanly', async () => {
  assert.deepEqual(events.error, [], 'no error events');
  assert.deepEqual(events.denied, [], 'no denied events');
  assert.ok(events.change > 0, 'change events seen');
  const completed = once(sync, 'complete', 20_000);
  sync.cancel();
  await completed;
  sync = null;
});
