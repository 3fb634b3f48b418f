// PouchDB's own replicator against mimeo: a local PouchDB with 1,000 documents (conflicting
// branches, deleted winners, deleted losing leaves, design docs, odd ids) is pushed to mimeo and
// pulled back into a fresh PouchDB; all three must hold the same revision trees. A second push
// after more edits must move only the delta and resume from the checkpoint.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import { client, docPath } from './lib/http.mjs';
import { uniqueDbName, randomHash, parseRev } from './lib/util.mjs';
import { PouchDB, memoryDb, recordingRemote, allIds, snapshot, assertSnapshotConsistent } from './lib/pouch.mjs';

const DOCS = 1000;

let server;
let c;
let dbName;
let remoteUrl;
let source;       // the local PouchDB the data starts in
let pulled;       // a fresh PouchDB filled from mimeo
const expected = { deletedWinners: 0, conflicted: 0, deletedLosers: 0 };

before(async () => {
  server = await startServer();
  c = client(server.url);
  dbName = uniqueDbName('pouchrep');
  remoteUrl = `${server.url}/${dbName}`;
  source = memoryDb('source');
  await buildSourceData(source);
});

after(async () => {
  await source?.destroy().catch(() => {});
  await pulled?.destroy().catch(() => {});
  await server?.stop();
});

function idOf(i) {
  const special = { 3: 'a/b with slash', 4: 'plus+and space', 5: 'ünïcødé ☃', 6: '_design/app', 7: '_design/other' };
  return special[i] ?? `doc-${String(i).padStart(4, '0')}`;
}

function bodyOf(i, extra = {}) {
  return {
    n: i,
    kind: ['alpha', 'beta', 'gamma'][i % 3],
    text: `document ${i} – “quoted” ${'x'.repeat(i % 50)}`,
    nested: { list: [i, i * 1.5, -i, null, true, { deep: [String(i)] }], empty: {}, none: [] },
    big: 2 ** 40 + i,
    ...extra,
  };
}

/** A branch of `depth` new revisions grafted on `parentRev`, as {_revisions} docs for new_edits:false. */
function branch(id, parentRev, depth, body, deleted = false) {
  const p = parseRev(parentRev);
  const hashes = Array.from({ length: depth }, () => randomHash());
  const ids = [...hashes].reverse().concat([p.hash]);
  const doc = { _id: id, _rev: `${p.gen + depth}-${ids[0]}`, _revisions: { start: p.gen + depth, ids }, ...body };
  if (deleted) doc._deleted = true;
  return doc;
}

/**
 * 1,000 docs: all created, a third updated, every 10th (i % 10 == 1) given conflicting branches,
 * every 10th (i % 10 == 5) deleted; among the conflicted ones some lose their winner (a branch
 * takes over), some lose a losing leaf (deleted conflict), some lose every leaf; a few docs are
 * deleted then recreated, a few get a second disconnected root, a few a deleted branch.
 */
async function buildSourceData(db) {
  const ids = Array.from({ length: DOCS }, (_, i) => idOf(i));
  const created = await db.bulkDocs(ids.map((id, i) => ({ _id: id, ...bodyOf(i) })));
  const rev = {};
  created.forEach((r, i) => { assert.ok(r.ok, JSON.stringify(r)); rev[ids[i]] = r.rev; });

  const updates = [];
  // Every doc that gets a conflicting branch is updated first, so a branch from its first
  // revision forks the tree instead of extending a leaf.
  for (let i = 0; i < DOCS; i++) if (i % 3 === 0 || i % 10 === 1) updates.push({ _id: ids[i], _rev: rev[ids[i]], ...bodyOf(i, { updated: 1 }) });
  for (const r of await db.bulkDocs(updates)) rev[r.id] = r.rev;
  const updates2 = [];
  for (let i = 0; i < DOCS; i += 9) updates2.push({ _id: ids[i], _rev: rev[ids[i]], ...bodyOf(i, { updated: 2 }) });
  for (const r of await db.bulkDocs(updates2)) rev[r.id] = r.rev;

  // Conflicting branches from the first revision's parent chain.
  const branches = [];
  for (let i = 1; i < DOCS; i += 10) {
    const first = (await db.get(ids[i], { revs: true }))._revisions;
    const rootRev = `${first.start - first.ids.length + 1}-${first.ids.at(-1)}`;
    branches.push(branch(ids[i], rootRev, 1 + (i % 3), bodyOf(i, { branch: 'one' })));
    if (i % 20 === 1) branches.push(branch(ids[i], rootRev, 3, bodyOf(i, { branch: 'two' })));
    if (i % 50 === 1) {
      // A second root: a history that shares nothing with the first.
      const h = randomHash();
      branches.push({ _id: ids[i], _rev: `1-${h}`, _revisions: { start: 1, ids: [h] }, ...bodyOf(i, { branch: 'root2' }) });
    }
    if (i % 30 === 11) branches.push(branch(ids[i], rootRev, 2, { gone: true }, true));
    expected.conflicted++;
  }
  const res = await db.bulkDocs(branches, { new_edits: false });
  assert.deepEqual(res.filter((r) => r.error), []);

  const leavesOf = async (id) => (await db.get(id, { open_revs: 'all' })).map((r) => r.ok)
    .filter((d) => !d._deleted);

  for (let i = 1; i < DOCS; i += 10) {
    const id = ids[i];
    const live = await leavesOf(id);
    const winner = await db.get(id);
    if (i % 40 === 1) {
      // Delete the winner: a losing branch takes over.
      await db.remove(id, winner._rev);
    } else if (i % 40 === 11) {
      // Delete one losing leaf: the winner stays, a deleted conflict appears.
      const loser = live.find((d) => d._rev !== winner._rev);
      await db.remove(id, loser._rev);
      expected.deletedLosers++;
    } else if (i % 40 === 21) {
      // Delete every live leaf: the doc is deleted, with several tombstones.
      for (const d of live) await db.remove(id, d._rev);
    }
  }

  // Plain deletions.
  for (let i = 5; i < DOCS; i += 10) {
    const d = await db.get(ids[i]);
    await db.remove(d);
  }
  // Deleted and recreated.
  for (let i = 15; i < DOCS; i += 100) {
    await db.put({ _id: ids[i], ...bodyOf(i, { recreated: true }) });
  }
}

/** Compares two snapshots id by id (whole-object comparison would bury the first difference). */
function assertSameState(label, a, b) {
  assert.deepEqual(Object.keys(b).sort(), Object.keys(a).sort(), `${label}: same ids`);
  for (const id of Object.keys(a)) {
    assert.deepEqual(b[id], a[id], `${label}: document ${JSON.stringify(id)} differs`);
  }
}

let sourceSnap;
let ids;

test('the source data has 1,000 docs with conflicts, deleted winners and deleted losing leaves', async () => {
  ids = await allIds(source);
  assert.equal(ids.length, DOCS);
  sourceSnap = await snapshot(source, ids);
  assertSnapshotConsistent('source', sourceSnap);
  const states = Object.values(sourceSnap);
  assert.ok(states.filter((s) => s.deleted).length > 100, 'many deleted docs');
  assert.ok(states.filter((s) => !s.deleted && s.conflicts.length > 0).length > 30, 'many conflicted docs');
  assert.ok(states.filter((s) => !s.deleted && s.leaves.some((l) => l.deleted)).length > 20, 'deleted losing leaves');
  assert.ok(states.filter((s) => s.deleted && s.leaves.length > 1).length > 10, 'deleted docs with several tombstones');
});

test('PouchDB pushes everything to mimeo', async () => {
  const remote = new PouchDB(remoteUrl);
  const result = await PouchDB.replicate(source, remote);
  assert.equal(result.ok, true);
  assert.equal(result.doc_write_failures, 0);
  assert.deepEqual(result.errors, []);
  const info = await c.get(`/${encodeURIComponent(dbName)}`);
  const live = Object.values(sourceSnap).filter((s) => !s.deleted).length;
  assert.equal(info.json.doc_count, live, 'doc_count counts live docs');
  assert.equal(info.json.doc_del_count, DOCS - live, 'doc_del_count counts deleted docs');
});

test('mimeo holds the same trees, winners, conflicts, deleted states and bodies as the source', async () => {
  const remote = new PouchDB(remoteUrl);
  assert.deepEqual(await allIds(remote), ids, 'the changes feed lists every id');
  const remoteSnap = await snapshot(remote, ids);
  assertSnapshotConsistent('mimeo', remoteSnap);
  assertSameState('source vs mimeo', sourceSnap, remoteSnap);
});

test('a fresh PouchDB pulls everything back from mimeo identically', async () => {
  pulled = memoryDb('pulled');
  const result = await PouchDB.replicate(new PouchDB(remoteUrl), pulled);
  assert.equal(result.ok, true);
  assert.equal(result.doc_write_failures, 0);
  assert.deepEqual(result.errors, []);
  assert.deepEqual(await allIds(pulled), ids);
  const pulledSnap = await snapshot(pulled, ids);
  assertSnapshotConsistent('pulled', pulledSnap);
  assertSameState('source vs pulled', sourceSnap, pulledSnap);
});

test('the push left a PouchDB checkpoint in a _local doc on mimeo', async () => {
  const { db: remote, log } = recordingRemote(remoteUrl);
  const extra = { _id: 'checkpoint-probe', v: 1 };
  await source.put(extra);
  await PouchDB.replicate(source, remote);
  const puts = log.filter((r) => r.method === 'PUT' && r.url.includes('/_local/'));
  assert.ok(puts.length > 0, 'the replication wrote a checkpoint');
  const path = new URL(puts.at(-1).url).pathname;
  const res = await c.get(path);
  assert.equal(res.status, 200, res.text);
  const cp = res.json;
  assert.match(cp._id, /^_local\//);
  assert.match(cp._rev, /^0-\d+$/);
  assert.equal(cp.replicator, 'pouchdb');
  assert.equal(typeof cp.session_id, 'string');
  assert.ok(Array.isArray(cp.history) && cp.history.length >= 1);
  assert.deepEqual(cp.last_seq, (await source.info()).update_seq, 'checkpoint at the source update_seq');
});

test('a second push after more edits replicates only the delta', async () => {
  const changed = [];
  for (let i = 100; i < 110; i++) {
    const id = idOf(i);
    const doc = await source.get(id).catch(() => null);
    if (doc) await source.put({ ...doc, edited: true }); else await source.put({ _id: id, revived: true });
    changed.push(id);
  }
  for (let i = 0; i < 5; i++) {
    await source.put({ _id: `delta-new-${i}`, i });
    changed.push(`delta-new-${i}`);
  }
  for (const i of [200, 201, 202]) {
    const d = await source.get(idOf(i)).catch(() => null);
    if (d) { await source.remove(d); changed.push(idOf(i)); }
  }

  const { db: remote, log } = recordingRemote(remoteUrl);
  const result = await PouchDB.replicate(source, remote);
  assert.equal(result.ok, true);
  assert.equal(result.doc_write_failures, 0);
  assert.equal(result.docs_written, changed.length, `docs_written ${result.docs_written}`);
  assert.equal(result.docs_read, changed.length, `docs_read ${result.docs_read}`);
  // Only the changed ids were asked about: the replication resumed from its checkpoint.
  const asked = new Set();
  for (const r of log.filter((x) => x.method === 'POST' && x.url.includes('/_revs_diff'))) {
    for (const id of Object.keys(JSON.parse(r.body))) asked.add(id);
  }
  assert.ok(asked.size <= changed.length, `_revs_diff asked about ${asked.size} ids, expected ≤ ${changed.length}`);

  const newIds = await allIds(source);
  const srcSnap = await snapshot(source, newIds);
  const remoteSnap = await snapshot(new PouchDB(remoteUrl), newIds);
  assertSameState('source vs mimeo after the delta', srcSnap, remoteSnap);

  // Pulling the delta into the earlier copy moves only the changed documents too.
  const { db: src, log: pullLog } = recordingRemote(remoteUrl);
  const pull = await PouchDB.replicate(src, pulled);
  assert.equal(pull.ok, true);
  assert.ok(pull.docs_written <= changed.length + 1, `pull wrote ${pull.docs_written}`);
  const bulkGets = pullLog.filter((x) => x.method === 'POST' && x.url.includes('/_bulk_get'));
  assert.ok(bulkGets.length > 0, 'PouchDB pulled with _bulk_get');
  assert.equal(pullLog.filter((x) => x.url.includes('open_revs=')).length, 0,
    'no fallback to per-document open_revs requests');
  const fetched = bulkGets.reduce((n, r) => n + JSON.parse(r.body).docs.length, 0);
  assert.ok(fetched <= changed.length + 1, `pull fetched ${fetched} revisions`);
  assertSameState('source vs pulled after the delta', srcSnap, await snapshot(pulled, newIds));
});

test('a replicated deleted doc reads as deleted over plain HTTP', async () => {
  const id = idOf(5);
  const res = await c.get(docPath(dbName, id));
  assert.equal(res.status, 404);
  assert.equal(res.json.reason, 'deleted');
});
