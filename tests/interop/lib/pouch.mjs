// PouchDB set-up (memory adapter) and a snapshot of a database's revision state for comparing
// replicas: every document's leaves (open_revs=all with their bodies and ancestry), winner,
// deleted state and conflicts.

import assert from 'node:assert/strict';
import PouchDB from 'pouchdb';
import memoryAdapter from 'pouchdb-adapter-memory';
import { compareLeaves, sorted } from './util.mjs';

PouchDB.plugin(memoryAdapter);

export { PouchDB };

let localCounter = 0;

/** A new, empty in-memory PouchDB. */
export function memoryDb(prefix = 'local') {
  localCounter += 1;
  return new PouchDB(`${prefix}-${process.pid}-${localCounter}-${Date.now()}`, { adapter: 'memory' });
}

/**
 * A PouchDB handle on a remote database that records every HTTP request it makes.
 * @returns {{db: PouchDB, log: Array<{method:string, url:string, body:string|undefined}>}}
 */
export function recordingRemote(url) {
  const log = [];
  const db = new PouchDB(url, {
    fetch: (u, opts = {}) => {
      log.push({ method: (opts.method || 'GET').toUpperCase(), url: String(u),
        body: typeof opts.body === 'string' ? opts.body : undefined });
      return PouchDB.fetch(u, opts);
    },
  });
  return { db, log };
}

/** Every document id the database knows, deleted ones included (from its changes feed). */
export async function allIds(db) {
  const ids = new Set();
  let since = 0;
  for (;;) {
    const res = await db.changes({ since, limit: 500, style: 'all_docs' });
    for (const row of res.results) ids.add(row.id);
    if (res.results.length === 0) break;
    since = res.last_seq;
  }
  return sorted(ids);
}

async function mapLimit(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

function stripMeta(doc) {
  const body = {};
  for (const [k, v] of Object.entries(doc)) {
    if (k === '_id' || k === '_rev' || k === '_revisions' || k === '_deleted' ||
        k === '_conflicts' || k === '_deleted_conflicts' || k === '_revs_info') continue;
    body[k] = v;
  }
  return body;
}

/**
 * The revision state of each id: {winner, deleted, conflicts, deletedConflicts, leaves}.
 * leaves: sorted by rev, each {rev, deleted, body, ancestry} where ancestry is the list of rev
 * ids on its path (newest first, from _revisions).
 */
export async function snapshot(db, ids) {
  const state = {};
  // Winners and deleted state for every id, in one call.
  const all = await db.allDocs({ keys: ids });
  for (const row of all.rows) {
    state[row.key] = row.error
      ? { error: row.error }
      : { winner: row.value.rev, deleted: !!row.value.deleted };
  }
  // _conflicts of live documents, as the database reports them.
  const live = await db.allDocs({ keys: ids, include_docs: true, conflicts: true });
  for (const row of live.rows) {
    if (row.doc) state[row.key].conflicts = sorted(row.doc._conflicts ?? []);
  }
  await mapLimit(ids, 8, async (id) => {
    const revs = await db.get(id, { open_revs: 'all', revs: true });
    const leaves = revs.map((r) => {
      assert.ok(r.ok, `open_revs=all for ${id} returned a non-ok entry: ${JSON.stringify(r)}`);
      const d = r.ok;
      const ancestry = d._revisions
        ? d._revisions.ids.map((h, k) => `${d._revisions.start - k}-${h}`)
        : null;
      return { rev: d._rev, deleted: !!d._deleted, body: stripMeta(d), ancestry };
    });
    leaves.sort((a, b) => (a.rev < b.rev ? -1 : a.rev > b.rev ? 1 : 0));
    state[id].leaves = leaves;
  });
  return state;
}

/**
 * Checks a snapshot against CouchDB's rules on its own: the reported winner is the leaf the
 * winner order picks, deleted state follows it, _conflicts are exactly the other live leaves.
 */
export function assertSnapshotConsistent(name, snap) {
  for (const [id, s] of Object.entries(snap)) {
    assert.ok(!s.error, `${name}: ${id} missing (${s.error})`);
    assert.ok(s.leaves.length > 0, `${name}: ${id} has no leaves`);
    const best = [...s.leaves].sort(compareLeaves).at(-1);
    assert.equal(s.winner, best.rev, `${name}: ${id} winner ${s.winner}, expected ${best.rev} from leaves ${JSON.stringify(s.leaves.map((l) => [l.rev, l.deleted]))}`);
    assert.equal(s.deleted, best.deleted, `${name}: ${id} deleted state`);
    if (!s.deleted) {
      const expected = sorted(s.leaves.filter((l) => !l.deleted && l.rev !== s.winner).map((l) => l.rev));
      assert.deepEqual(s.conflicts, expected, `${name}: ${id} _conflicts`);
    }
  }
}
