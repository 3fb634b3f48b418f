// Filtered replication by mimeo's replicator: `selector` and `filter` + `query_params` in
// /_replicate bodies, _replicator documents and `mimeo replicate` flags; remote sources
// filter their own feed, local ones are filtered in place; mimeo→mimeo both directions,
// pouchdb-server as a selector source; the replication id follows the filter.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import { client, docPath, expectStatus, assertError } from './lib/http.mjs';
import { waitFor, runReplicate, postReplicate, startPouchServer } from './lib/repl_peers.mjs';
import { uniqueDbName } from './lib/util.mjs';

let A;
let B;
let a;
let b;

const DDOC = {
  _id: '_design/app',
  filters: { by_type: 'function(doc, req) { return doc.type === req.query.type; }' },
  views: { bs: { map: 'function(doc) { if (doc.type === "b") emit(doc._id); }' } },
};

before(async () => {
  A = await startServer();
  B = await startServer();
  a = client(A.url);
  b = client(B.url);
});

after(async () => {
  await A?.stop();
  await B?.stop();
});

async function seed(c) {
  const db = uniqueDbName('frep');
  expectStatus(await c.put(`/${db}`), 201);
  const docs = [DDOC];
  for (let i = 0; i < 12; i++) docs.push({ _id: `d${String(i).padStart(2, '0')}`, n: i, type: i % 3 ? 'a' : 'b' });
  expectStatus(await c.post(`/${db}/_bulk_docs`, { docs }), 201);
  return db;
}

async function ids(c, db) {
  const r = expectStatus(await c.get(`/${db}/_all_docs`), 200);
  return r.rows.map((row) => row.id);
}

const B_IDS = ['d00', 'd03', 'd06', 'd09'];

test('selector: remote source (mimeo→mimeo) and local source (local→remote)', async () => {
  const src = await seed(a);
  let r = await postReplicate(B.url, { source: `${A.url}/${src}`, target: 'sel1', create_target: true,
    selector: { type: 'b' } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(await ids(b, 'sel1'), B_IDS);
  // the other way: a local source on A pushed to B
  const tgt = uniqueDbName('push');
  r = await postReplicate(A.url, { source: src, target: `${B.url}/${tgt}`, create_target: true,
    selector: { n: { $gte: 9 } } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(await ids(b, tgt), ['d09', 'd10', 'd11']);
  // a changed selector is a new replication (new checkpoint): it copies what the old skipped
  const r2 = await postReplicate(A.url, { source: src, target: `${B.url}/${tgt}`, selector: { n: { $lt: 2 } } });
  assert.equal(r2.status, 200, r2.text);
  assert.notEqual(r2.json.history[0].session_id, r.json.history[0].session_id);
  assert.deepEqual(await ids(b, tgt), ['d00', 'd01', 'd09', 'd10', 'd11']);
  // bad selector: 400
  assertError(await postReplicate(A.url, { source: src, target: 'x', selector: { n: { $bogus: 1 } } }), 400);
  assertError(await postReplicate(A.url, { source: src, target: 'x', selector: { n: 1 }, doc_ids: ['a'] }), 400);
});

test('filter + query_params and _view: remote and local sources', async () => {
  const src = await seed(a);
  let r = await postReplicate(B.url, { source: `${A.url}/${src}`, target: 'fil1', create_target: true,
    filter: 'app/by_type', query_params: { type: 'b' } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(await ids(b, 'fil1'), B_IDS);
  const tgt = uniqueDbName('pushf');
  r = await postReplicate(A.url, { source: src, target: `${B.url}/${tgt}`, create_target: true,
    filter: 'app/by_type', query_params: { type: 'b' } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(await ids(b, tgt), B_IDS);
  const tv = uniqueDbName('view');
  r = await postReplicate(A.url, { source: src, target: tv, create_target: true,
    filter: '_view', query_params: { view: 'app/bs' } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(await ids(a, tv), B_IDS);
  const tv2 = uniqueDbName('view');
  r = await postReplicate(B.url, { source: `${A.url}/${src}`, target: tv2, create_target: true,
    filter: '_view', query_params: { view: 'app/bs' } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(await ids(b, tv2), B_IDS);
});

test('a local source filters hundreds of documents in batches: the same documents', async () => {
  const src = uniqueDbName('frepb');
  expectStatus(await a.put(`/${src}`), 201);
  const docs = [DDOC];
  for (let i = 0; i < 420; i++) docs.push({ _id: `e${String(i).padStart(3, '0')}`, n: i, type: i % 5 ? 'a' : 'b' });
  expectStatus(await a.post(`/${src}/_bulk_docs`, { docs }), 201);
  const tgt = uniqueDbName('pushb');
  const r = await postReplicate(A.url, { source: src, target: `${B.url}/${tgt}`, create_target: true,
    filter: 'app/by_type', query_params: { type: 'b' } });
  assert.equal(r.status, 200, r.text);
  const want = docs.slice(1).filter((d) => d.type === 'b').map((d) => d._id);
  assert.deepEqual(await ids(b, tgt), want);
  // edited documents: one leaves the filter, one enters it
  const e000 = expectStatus(await a.get(docPath(src, 'e000')), 200);
  expectStatus(await a.put(docPath(src, 'e000'), { ...e000, type: 'a' }), 201);
  const e001 = expectStatus(await a.get(docPath(src, 'e001')), 200);
  expectStatus(await a.put(docPath(src, 'e001'), { ...e001, type: 'b' }), 201);
  const r2 = await postReplicate(A.url, { source: src, target: `${B.url}/${tgt}`,
    filter: 'app/by_type', query_params: { type: 'b' } });
  assert.equal(r2.status, 200, r2.text);
  assert.equal(r2.json.history[0].docs_written, 1);
  assert.equal(expectStatus(await b.get(docPath(tgt, 'e001')), 200).type, 'b');
});

test("an edited filter function (local source) is a new replication", async () => {
  const src = await seed(a);
  const tgt = uniqueDbName('code');
  const body = { source: src, target: tgt, create_target: true, filter: 'app/by_type', query_params: { type: 'b' } };
  let r = await postReplicate(A.url, body);
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(await ids(a, tgt), B_IDS);
  const dd = expectStatus(await a.get(docPath(src, '_design/app')), 200);
  dd.filters.by_type = 'function(doc, req) { return doc.type === req.query.type || doc.n === 1; }';
  expectStatus(await a.put(docPath(src, '_design/app'), dd), 201);
  r = await postReplicate(A.url, body);
  assert.equal(r.status, 200, r.text);
  // from the start again: d01 (written before the old checkpoint) arrives too
  assert.deepEqual(await ids(a, tgt), ['d00', 'd01', 'd03', 'd06', 'd09']);
});

test('mimeo replicate --selector and --filter --query-params', async () => {
  const src = await seed(a);
  let r = await runReplicate([`${A.url}/${src}`, `${B.url}/cli1`, '--create-target', '--selector', '{"type":"b"}']);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(await ids(b, 'cli1'), B_IDS);
  r = await runReplicate([`${A.url}/${src}`, `${B.url}/cli2`, '--create-target', '--filter', 'app/by_type',
    '--query-params', '{"type":"b"}']);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(await ids(b, 'cli2'), B_IDS);
  r = await runReplicate([`${A.url}/${src}`, `${B.url}/cli3`, '--selector', 'not json']);
  assert.equal(r.code, 2);
});

test('a _replicator document with a selector, continuous', async () => {
  const src = await seed(a);
  expectStatus(await b.put('/_replicator'), [201, 412]);
  const tgt = uniqueDbName('rdoc');
  expectStatus(await b.put(docPath('_replicator', tgt), {
    source: `${A.url}/${src}`, target: tgt, create_target: true, continuous: true, selector: { type: 'b' },
  }), 201);
  try {
    await waitFor(async () => JSON.stringify(await ids(b, tgt).catch(() => [])) === JSON.stringify(B_IDS),
      { what: 'the selector replication', timeout: 30_000 });
    expectStatus(await a.put(docPath(src, 'late-a'), { type: 'a' }), 201);
    expectStatus(await a.put(docPath(src, 'late-b'), { type: 'b' }), 201);
    await waitFor(async () => (await ids(b, tgt)).includes('late-b'), { what: 'live change', timeout: 30_000 });
    assert.ok(!(await ids(b, tgt)).includes('late-a'));
  } finally {
    const d = expectStatus(await b.get(docPath('_replicator', tgt)), 200);
    await b.delete(`${docPath('_replicator', tgt)}?rev=${d._rev}`);
  }
});

test('pouchdb-server as a source with a selector', async () => {
  const P = await startPouchServer();
  try {
    const p = client(P.url);
    const src = await seed(p);
    const r = await postReplicate(B.url, { source: `${P.url}/${src}`, target: 'frompouch', create_target: true,
      selector: { type: 'b' } });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(await ids(b, 'frompouch'), B_IDS);
  } finally {
    await P.stop();
  }
});
