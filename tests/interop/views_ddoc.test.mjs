// Design documents are checked when they are written, as CouchDB does (couch_mrview:validate):
// member types, a map for every view, known built-in reduces, and JavaScript functions that
// compile, on PUT, POST, _bulk_docs and replicated (new_edits=false) writes, and from PouchDB.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import { client, assertError, expectStatus } from './lib/http.mjs';
import { PouchDB } from './lib/pouch.mjs';
import { uniqueDbName } from './lib/util.mjs';

let server;
let c;
let db;

before(async () => {
  server = await startServer();
  c = client(server.url);
  db = uniqueDbName('vddoc');
  expectStatus(await c.put(`/${db}`), 201);
});

after(async () => {
  await server?.stop();
});

const good = 'function(doc) { emit(doc._id, 1); }';

describe('design documents validated on write', () => {
  test('a map with a syntax error: 400 compilation_error naming the view', async () => {
    const res = await c.put(`/${db}/_design/badmap`, { views: { v: { map: 'function(doc) { emit(doc._id' } } });
    assertError(res, 400, 'compilation_error');
    assert.match(res.json.reason, /^Compilation of the map function in the 'v' view failed: /);
    expectStatus(await c.get(`/${db}/_design/badmap`), 404);
  });

  test('a reduce with a syntax error: 400 compilation_error', async () => {
    const res = await c.put(`/${db}/_design/badred`, { views: { v: { map: good, reduce: 'function(k, v) { return' } } });
    assertError(res, 400, 'compilation_error');
    assert.match(res.json.reason, /^Compilation of the reduce function in the 'v' view failed: /);
  });

  test('an unknown built-in reduce: 400 invalid_design_doc', async () => {
    const res = await c.put(`/${db}/_design/badbuiltin`, { views: { v: { map: good, reduce: '_foo' } } });
    assertError(res, 400, 'invalid_design_doc');
    assert.equal(res.json.reason, '`_foo` is not a supported reduce function.');
  });

  test('members of the wrong type and views without a map: 400 invalid_design_doc', async () => {
    const cases = [
      [{ views: { v: { map: 42 } } }, '`views.v.map` field must have string type'],
      [{ views: { v: { map: good, reduce: {} } } }, '`views.v.reduce` field must have string type'],
      [{ views: [] }, '`views` field must have object type'],
      [{ views: { v: 'x' } }, '`views.v` field must have object type'],
      [{ views: { lib: 'x' } }, '`views.lib` field must have object type'],
      [{ views: { v: { reduce: '_count' } } }, 'View `v` must contain map function'],
      [{ language: 1 }, '`language` field must have string type'],
      [{ validate_doc_update: {} }, '`validate_doc_update` field must have string type'],
      [{ filters: { f: 1 } }, '`filters.f` field must have object or string type'],
      [{ options: 'x' }, '`options` field must have object type'],
    ];
    for (const [body, reason] of cases) {
      const res = await c.put(`/${db}/_design/types`, body);
      assertError(res, 400, 'invalid_design_doc', JSON.stringify(body));
      assert.equal(res.json.reason, reason);
    }
  });

  test('good design documents are accepted; other languages are not compiled', async () => {
    expectStatus(await c.put(`/${db}/_design/good`, {
      views: { v: { map: good, reduce: '_sum' }, w: { map: '(doc) => { emit(doc.n, null); }', reduce: 'function(k, v) { return sum(v); }' },
               lib: { m: 'exports.x = 1;' } },
      filters: { f: 'function(doc, req) { return true; }' } }), 201);
    expectStatus(await c.put(`/${db}/_design/erl`, { language: 'erlang', views: { v: { map: 'fun({Doc}) -> ok end.' } } }), 201);
    expectStatus(await c.put(`/${db}/_design/empty`, { views: {} }), 201);
    // a fix of a bad update goes through; deleting needs no check
    const r = expectStatus(await c.put(`/${db}/_design/fix`, { views: { v: { map: good } } }), 201);
    assertError(await c.put(`/${db}/_design/fix`, { _rev: r.rev, views: { v: { map: 'nope(' } } }), 400, 'compilation_error');
    expectStatus(await c.delete(`/${db}/_design/fix?rev=${r.rev}`), 200);
  });

  test('POST and _bulk_docs: the bad design document fails alone', async () => {
    assertError(await c.post(`/${db}`, { _id: '_design/postbad', views: { v: { map: 'function(' } } }), 400, 'compilation_error');
    const res = expectStatus(await c.post(`/${db}/_bulk_docs`, { docs: [
      { _id: 'plain', n: 1 },
      { _id: '_design/bulkbad', views: { v: { map: good, reduce: '_nope' } } },
      { _id: '_design/bulkgood', views: { v: { map: good } } },
    ] }), 201);
    assert.equal(res[0].ok, true);
    assert.equal(res[1].error, 'invalid_design_doc');
    assert.equal(res[1].reason, '`_nope` is not a supported reduce function.');
    assert.equal(res[2].ok, true);
  });

  test('replicated writes (new_edits=false) are checked too', async () => {
    const res = expectStatus(await c.post(`/${db}/_bulk_docs`, { new_edits: false, docs: [
      { _id: '_design/replbad', _rev: '1-abc', views: { v: { map: 'function(doc) {' } } },
      { _id: '_design/replgood', _rev: '1-abc', views: { v: { map: good } } },
    ] }), 201);
    assert.equal(res.length, 1);
    // a replicated tombstone carrying a bad body is refused as CouchDB refuses it
    const del = expectStatus(await c.post(`/${db}/_bulk_docs`, { new_edits: false, docs: [
      { _id: '_design/replgood', _rev: '2-def', _revisions: { start: 2, ids: ['def', 'abc'] }, _deleted: true,
        views: { v: { map: 'nope(' } } },
    ] }), 201);
    assert.equal(del.length, 1);
    assert.equal(del[0].error, 'compilation_error');
    assert.equal(res[0].id, '_design/replbad');
    assert.equal(res[0].error, 'compilation_error');
    expectStatus(await c.get(`/${db}/_design/replgood`), 200);
    expectStatus(await c.get(`/${db}/_design/replbad`), 404);
  });

  test('PouchDB putting a bad design document gets the error', async () => {
    const remote = new PouchDB(`${server.url}/${db}`);
    await assert.rejects(remote.put({ _id: '_design/pouchbad', views: { v: { map: 'function(doc) { emit(' } } }),
      (err) => err.status === 400 && err.name === 'compilation_error');
    const ok = await remote.put({ _id: '_design/pouchgood', views: { v: { map: good } } });
    assert.equal(ok.ok, true);
    const out = await remote.query('pouchgood/v');
    assert.equal(typeof out.total_rows, 'number');
  });
});
