// CRDT documents with real CouchDB-protocol clients: a PouchDB (Node, memory adapter) writes
// plain PUTs to a CRDT document while two mimeo nodes apply ops; a PouchDB remote handle puts
// straight to a mimeo node; pouchdb-server sits between the two mimeo nodes and carries the
// conflicts it does not merge. After the nodes merge on their own, everything converges: one
// leaf, the same bytes on both nodes, the plain edits kept as register assigns, the counter
// exact, and the clients read the merged document as an ordinary one.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import { request } from './lib/http.mjs';
import { PouchDB, memoryDb } from './lib/pouch.mjs';
import { SKIP_UNWIRED, startPouchServer } from './lib/repl_peers.mjs';

let A;
let B;
let P;
const DB = 'crdtp';
const ID = 'c:doc';

before(async () => {
  if (SKIP_UNWIRED) return;
  [A, B, P] = await Promise.all([startServer(), startServer(), startPouchServer()]);
  for (const s of [A, B, P]) {
    assert.equal((await request(s.url, 'PUT', `/${DB}`)).status, 201);
  }
  const r = await request(A.url, 'PUT', `/${DB}/_design/crdt`, { body: { rules: [{ prefix: 'c:' }] } });
  assert.equal(r.status, 201, r.text);
});

after(async () => {
  await A?.stop();
  await B?.stop();
  await P?.stop();
});

const ops = (url, list) => request(url, 'POST', `/${DB}/_crdt/${encodeURIComponent(ID)}`, { body: { ops: list } });

async function replicate(driver, source, target) {
  const r = await request(driver.url, 'POST', '/_replicate', {
    body: { source: `${source.url}/${DB}`, target: `${target.url}/${DB}` }, timeout: 60_000,
  });
  assert.equal(r.status, 200, r.text);
}

async function liveLeaves(url) {
  const r = await request(url, 'GET', `/${DB}/${encodeURIComponent(ID)}?open_revs=all`,
    { headers: { accept: 'application/json' } });
  assert.equal(r.status, 200, r.text);
  return r.json.filter((x) => x.ok && !x.ok._deleted).map((x) => x.ok);
}

test('PouchDB plain PUTs, concurrent ops on two nodes, pouchdb-server in between: converge', { skip: SKIP_UNWIRED }, async () => {
  let r = await ops(A.url, [
    { op: 'increment', path: ['likes'], value: 1 },
    { op: 'assign', path: ['title'], value: 't0' },
    { op: 'add', path: ['tags'], value: 'x' },
  ]);
  assert.equal(r.status, 201, r.text);
  await replicate(A, A, B);        // B gets the rules and the document
  await replicate(A, A, P);

  // a PouchDB app that knows nothing of CRDTs edits its copy and syncs to pouchdb-server
  const local = memoryDb('crdt');
  await local.replicate.from(`${A.url}/${DB}`);
  const doc = await local.get(ID);
  assert.equal(doc.likes, 1);
  assert.deepEqual(doc.tags, ['x']);
  doc.title = 'from-pouch';
  doc.note = 'n1';
  doc.likes = 100;                 // counters change only by ops: ignored
  await local.put(doc);
  await local.replicate.to(`${P.url}/${DB}`);

  // another client PUTs straight to node B through PouchDB's HTTP adapter
  const remoteB = new PouchDB(`${B.url}/${DB}`);
  const onB = await remoteB.get(ID);
  await remoteB.put({ ...onB, status: 'done' });

  // meanwhile both nodes apply ops
  r = await ops(A.url, [{ op: 'increment', path: ['likes'], value: 2 }]);
  assert.equal(r.status, 201, r.text);
  r = await ops(B.url, [{ op: 'increment', path: ['likes'], value: 5 }, { op: 'add', path: ['tags'], value: 'y' }]);
  assert.equal(r.status, 201, r.text);

  // everything meets in pouchdb-server, which keeps the conflicts as they are
  await replicate(A, A, P);
  await replicate(B, B, P);
  const onP = await request(P.url, 'GET', `/${DB}/${encodeURIComponent(ID)}?conflicts=true`);
  assert.ok(onP.json._conflicts?.length >= 1, 'pouchdb-server holds the conflict');
  await replicate(A, P, A);
  await replicate(B, P, B);

  for (const s of [A, B]) {
    r = await request(s.url, 'POST', `/${DB}/_crdt_merge`, { body: { doc_ids: [ID] } });
    assert.equal(r.status, 200, r.text);
    // one merge, unless the write path's hook merged on receipt already
    assert.ok(r.json.merged.length <= 1, r.text);
    assert.deepEqual(r.json.conflicts_kept, []);
  }
  const [ga, gb] = [
    await request(A.url, 'GET', `/${DB}/${encodeURIComponent(ID)}`),
    await request(B.url, 'GET', `/${DB}/${encodeURIComponent(ID)}`),
  ];
  assert.equal(ga.text, gb.text, 'the two nodes merged to the same bytes and revision');
  assert.equal(ga.json.likes, 8);
  assert.equal(ga.json.title, 'from-pouch');
  assert.equal(ga.json.note, 'n1');
  assert.equal(ga.json.status, 'done');
  assert.deepEqual(ga.json.tags, ['x', 'y']);

  // the merges travel through pouchdb-server and add no branch
  await replicate(A, A, P);
  await replicate(B, B, P);
  await replicate(A, P, A);
  await replicate(B, P, B);
  for (const s of [A, B, P]) {
    const leaves = await liveLeaves(s.url);
    assert.equal(leaves.length, 1, `one live leaf on ${s.url}`);
    assert.equal(leaves[0]._rev, ga.json._rev);
  }
  // and the PouchDB app reads the merged document as an ordinary one
  await local.replicate.from(`${P.url}/${DB}`);
  const final = await local.get(ID, { conflicts: true });
  assert.equal(final._rev, ga.json._rev);
  assert.equal(final._conflicts, undefined);
  assert.equal(final.likes, 8);
  await local.destroy();
});
