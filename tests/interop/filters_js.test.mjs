// JavaScript filters on the changes feed: filter=ddoc/name with CouchDB's req, filter=_view,
// filter=_design, hostile functions (throws, endless loops), and PouchDB's filtered changes
// and replication by filter function against mimeo.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import { client, docPath, assertError, expectStatus } from './lib/http.mjs';
import { openFeed } from './lib/feed.mjs';
import { PouchDB, memoryDb } from './lib/pouch.mjs';
import { uniqueDbName } from './lib/util.mjs';

let server;
let c;

before(async () => {
  server = await startServer({ args: ['--set', 'couchdb.os_process_timeout=1500'] });
  c = client(server.url);
});

after(async () => {
  await server?.stop();
});

const DDOC = {
  _id: '_design/app',
  filters: {
    by_type: 'function(doc, req) { return doc.type === req.query.type; }',
    arrow: '(doc) => doc.n !== undefined && doc.n % 3 === 0',
    req_echo: `function(doc, req) {
      return doc._id === 'a1' && req.method === 'GET' && req.userCtx && Array.isArray(req.userCtx.roles)
        && req.query.filter === 'app/req_echo' && req.info.db_name === req.userCtx.db
        && typeof req.headers === 'object' && req.path[1] === '_changes'
        && req.peer === '127.0.0.1' && typeof req.secObj === 'object' && Array.isArray(req.secObj.members.roles);
    }`,
    throws: 'function(doc) { if (doc.n % 2) throw new Error("odd " + doc._id); return true; }',
    forever: 'function(doc) { while (true) {} }',
  },
  views: {
    typed: { map: 'function(doc) { if (doc.type === "b") emit(doc._id, null); }' },
  },
};

async function seeded() {
  const db = uniqueDbName('jsf');
  expectStatus(await c.put(`/${db}`), 201);
  const docs = [];
  for (let i = 0; i < 10; i++) docs.push({ _id: `${i % 2 ? 'b' : 'a'}${i}`, n: i, type: i % 2 ? 'b' : 'a' });
  docs.push(DDOC);
  expectStatus(await c.post(`/${db}/_bulk_docs`, { docs }), 201);
  return db;
}

const ids = (body) => body.results.map((r) => r.id);

describe('_changes with JavaScript filters', () => {
  test('filter=ddoc/name sees req.query; ES2015 functions; req as CouchDB builds it', async () => {
    const db = await seeded();
    let res = await c.get(`/${db}/_changes?filter=app/by_type&type=b`);
    assert.deepEqual(ids(expectStatus(res, 200)), ['b1', 'b3', 'b5', 'b7', 'b9']);
    res = await c.get(`/${db}/_changes?filter=app/by_type&type=a&limit=2&include_docs=true`);
    const body = expectStatus(res, 200);
    assert.deepEqual(ids(body), ['a0', 'a2']);
    assert.equal(body.results[1].doc.n, 2);
    res = await c.get(`/${db}/_changes?filter=app/arrow`);
    assert.deepEqual(ids(expectStatus(res, 200)), ['a0', 'b3', 'a6', 'b9']);
    res = await c.get(`/${db}/_changes?filter=app/req_echo`);
    assert.deepEqual(ids(expectStatus(res, 200)), []);
    // a1 does not exist (odd numbers are b): nothing passes; a doc that does gets through
    expectStatus(await c.put(docPath(db, 'a1'), { n: 100 }), 201);
    res = await c.get(`/${db}/_changes?filter=app/req_echo`);
    assert.deepEqual(ids(expectStatus(res, 200)), ['a1']);
  });

  test('filter=_view and filter=_design', async () => {
    const db = await seeded();
    let res = await c.get(`/${db}/_changes?filter=_view&view=app/typed`);
    assert.deepEqual(ids(expectStatus(res, 200)), ['b1', 'b3', 'b5', 'b7', 'b9']);
    res = await c.get(`/${db}/_changes?filter=_design`);
    assert.deepEqual(ids(expectStatus(res, 200)), ['_design/app']);
    assertError(await c.get(`/${db}/_changes?filter=_view`), 400, 'bad_request');
    res = await c.get(`/${db}/_changes?filter=_view&view=app/nope`);
    assertError(res, 404, 'not_found');
    assert.equal(res.json.reason, 'missing json key: nope');
    res = await c.get(`/${db}/_changes?filter=_view&view=nope/typed`);
    assertError(res, 404, 'not_found');
  });

  test('a filter that throws skips those documents', async () => {
    const db = await seeded();
    const res = await c.get(`/${db}/_changes?filter=app/throws`);
    // the design document has no n: NaN % 2 is falsy, so it passes
    assert.deepEqual(ids(expectStatus(res, 200)), ['a0', 'a2', 'a4', 'a6', 'a8', '_design/app']);
  });

  test('documents go to the filter in batches: the same rows as one by one, limit, since, descending', async () => {
    const db = uniqueDbName('jsfb');
    expectStatus(await c.put(`/${db}`), 201);
    const docs = [{ _id: '_design/b', filters: {
      f: 'function(doc, req) { if (doc.n % 7 === 0) throw new Error("seven"); return doc.n % 3 === 0; }' } }];
    for (let i = 1; i <= 450; i++) docs.push({ _id: `k${String(i).padStart(3, '0')}`, n: i });
    expectStatus(await c.post(`/${db}/_bulk_docs`, { docs }), 201);
    // one edit after the load moves a document to the end of the feed
    const k003 = expectStatus(await c.get(docPath(db, 'k003')), 200);
    expectStatus(await c.put(docPath(db, 'k003'), { ...k003, n: 3, edited: true }), 201);
    const want = [];
    for (let i = 1; i <= 450; i++) if (i % 3 === 0 && i % 7 !== 0 && i !== 3) want.push(`k${String(i).padStart(3, '0')}`);
    want.push('k003');
    const all = expectStatus(await c.get(`/${db}/_changes?filter=b/f`), 200);
    assert.deepEqual(ids(all), want);
    const lim = expectStatus(await c.get(`/${db}/_changes?filter=b/f&limit=5`), 200);
    assert.deepEqual(ids(lim), want.slice(0, 5));
    assert.equal(lim.last_seq, lim.results[4].seq);
    const next = expectStatus(await c.get(`/${db}/_changes?filter=b/f&since=${lim.last_seq}&include_docs=true`), 200);
    assert.deepEqual(ids(next), want.slice(5));
    assert.ok(next.results.every((r) => r.doc && r.doc.n % 3 === 0));
    const desc = expectStatus(await c.get(`/${db}/_changes?filter=b/f&descending=true&limit=3`), 200);
    assert.deepEqual(ids(desc), want.slice(-3).reverse());
  });

  test('a filter that never returns: 500 os_process_error, and the server goes on', async () => {
    const db = await seeded();
    let res = await c.get(`/${db}/_changes?filter=app/forever`);
    assertError(res, 500, 'os_process_error');
    res = await c.get(`/${db}/_changes?filter=app/by_type&type=b`);
    assert.deepEqual(ids(expectStatus(res, 200)), ['b1', 'b3', 'b5', 'b7', 'b9']);
    expectStatus(await c.get(`/${db}`), 200);
  });

  test('continuous feed with a filter function', async () => {
    const db = await seeded();
    const f = await openFeed(server.url, `/${db}/_changes?feed=continuous&filter=app/by_type&type=b&heartbeat=1000`);
    try {
      expectStatus(await c.put(docPath(db, 'x'), { type: 'a' }), 201);
      expectStatus(await c.put(docPath(db, 'y'), { type: 'b' }), 201);
      await f.waitFor((fd) => fd.rows().some((r) => r.id === 'y'));
      assert.deepEqual(f.rows().filter((r) => r.id).map((r) => r.id), ['b1', 'b3', 'b5', 'b7', 'b9', 'y']);
    } finally {
      f.close();
    }
  });
});

describe('PouchDB against mimeo', () => {
  test('changes and replication with filter + query_params, and by _view', async () => {
    const db = await seeded();
    const remote = new PouchDB(`${server.url}/${db}`);
    const res = await remote.changes({ filter: 'app/by_type', query_params: { type: 'b' } });
    assert.deepEqual(res.results.map((r) => r.id), ['b1', 'b3', 'b5', 'b7', 'b9']);
    const local = memoryDb('jsrep');
    await PouchDB.replicate(remote, local, { filter: 'app/by_type', query_params: { type: 'a' } });
    assert.deepEqual((await local.allDocs()).rows.map((r) => r.id), ['a0', 'a2', 'a4', 'a6', 'a8']);
    const byView = memoryDb('jsview');
    await PouchDB.replicate(remote, byView, { filter: '_view', view: 'app/typed' });
    assert.deepEqual((await byView.allDocs()).rows.map((r) => r.id), ['b1', 'b3', 'b5', 'b7', 'b9']);
  });
});
