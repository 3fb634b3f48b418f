// The convergence checker: records every write a node acknowledged, and at the end compares
// every copy of every database doc by doc — the whole revision tree (every leaf with its
// path of ancestors, deleted or not) and what a client sees (winner and _conflicts) — and
// checks that every acknowledged revision is in the tree on every node.

import assert from 'node:assert/strict';
import { request, docPath } from '../../interop/lib/http.mjs';

export class Checker {
  constructor() {
    this.acked = [];   // {db, id, rev, deleted, node}
    this.refused = 0;  // writes the node did not acknowledge (e.g. it was killed)
  }

  /** PUT (or, with doc._deleted, DELETE) on node i; records the revision when acknowledged.
   * Returns the new rev or null. Connection errors count as not acknowledged. */
  async write(cluster, i, db, doc) {
    let res;
    try {
      res = await request(cluster.url(i), 'PUT', docPath(db, doc._id), { body: doc, timeout: 10_000 });
    } catch {
      this.refused++;
      return null;
    }
    if (res.status !== 201 && res.status !== 202) {
      this.refused++;
      return null;
    }
    this.acked.push({ db, id: doc._id, rev: res.json.rev, deleted: !!doc._deleted, node: i });
    return res.json.rev;
  }

  /** _bulk_docs on node i; records each acknowledged entry. */
  async bulk(cluster, i, db, docs) {
    let res;
    try {
      res = await request(cluster.url(i), 'POST', `/${encodeURIComponent(db)}/_bulk_docs`,
        { body: { docs }, timeout: 20_000 });
    } catch {
      this.refused += docs.length;
      return [];
    }
    if (res.status !== 201) {
      this.refused += docs.length;
      return [];
    }
    const out = [];
    res.json.forEach((r, k) => {
      if (r.ok) {
        this.acked.push({ db, id: r.id, rev: r.rev, deleted: !!docs[k]._deleted, node: i });
        out.push(r);
      } else {
        this.refused++;
      }
    });
    return out;
  }

  /** One node's copy of db: {id: {tree: [...leaf paths], winner, conflicts}}. */
  static async snapshot(url, db) {
    const ch = await request(url, 'GET', `/${encodeURIComponent(db)}/_changes?style=all_docs`, { timeout: 60_000 });
    assert.equal(ch.status, 200, `${url}/${db}/_changes: ${ch.text.slice(0, 300)}`);
    const ids = ch.json.results.map((r) => r.id).sort();
    const docs = {};
    const one = async (id) => {
      const p = docPath(db, id);
      const all = await request(url, 'GET', `${p}?open_revs=all&revs=true`, {
        headers: { accept: 'application/json' }, timeout: 30_000,
      });
      assert.equal(all.status, 200, `${url}${p}?open_revs=all: ${all.text.slice(0, 300)}`);
      const tree = all.json.filter((x) => x.ok).map(({ ok }) => {
        const r = ok._revisions;
        const path = r.ids.map((h, k) => `${r.start - k}-${h}`);
        return `${ok._rev}${ok._deleted ? ' (deleted)' : ''} <- ${path.join(' ')}`;
      }).sort();
      const w = await request(url, 'GET', `${p}?conflicts=true&deleted_conflicts=true`, { timeout: 30_000 });
      const winner = w.status === 200
        ? { rev: w.json._rev, conflicts: (w.json._conflicts ?? []).sort(),
          deleted_conflicts: (w.json._deleted_conflicts ?? []).sort() }
        : { deleted: true, status: w.status };
      docs[id] = { tree, winner };
    };
    for (let k = 0; k < ids.length; k += 16) await Promise.all(ids.slice(k, k + 16).map(one));
    return docs;
  }

  /** Asserts that every node in `nodes` holds the same copy of each db, and that every
   * acknowledged revision of it is in that copy. */
  async verify(cluster, nodes, dbs) {
    for (const db of dbs) {
      const snaps = [];
      for (const i of nodes) snaps.push(await Checker.snapshot(cluster.url(i), db));
      const base = snaps[0];
      for (let k = 1; k < snaps.length; k++) {
        const a = cluster.nodes[nodes[0]].name;
        const b = cluster.nodes[nodes[k]].name;
        const ids = new Set([...Object.keys(base), ...Object.keys(snaps[k])]);
        for (const id of ids) {
          assert.deepEqual(snaps[k][id], base[id], `${db}/${id}: ${b} differs from ${a}`);
        }
      }
      for (const w of this.acked.filter((x) => x.db === db)) {
        const d = base[w.id];
        assert.ok(d, `${db}/${w.id}: acknowledged by ${cluster.nodes[w.node].name} but missing everywhere`);
        const found = d.tree.some((line) => line.split(' <- ')[1].split(' ').includes(w.rev));
        assert.ok(found, `${db}/${w.id}: acknowledged rev ${w.rev} (on ${cluster.nodes[w.node].name}) lost; tree ${JSON.stringify(d.tree)}`);
      }
    }
    return { acked: this.acked.length, refused: this.refused };
  }
}
