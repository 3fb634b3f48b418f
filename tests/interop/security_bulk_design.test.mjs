// A member's _bulk_docs holding design documents: only those entries are refused, each with
// CouchDB's per-entry {"id","error":"forbidden","reason":"You are not a db or server admin."}
// in its place; the other documents are written. With all_or_nothing nothing is written and
// the request is refused as a whole; db admins write design documents through _bulk_docs.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import { request } from './lib/http.mjs';

const basic = (n, p) => ({ authorization: 'Basic ' + Buffer.from(`${n}:${p}`).toString('base64') });
const ADMIN = basic('root', 'pw');
const MEMBER = basic('mia', 'm');
const DBADMIN = basic('dan', 'd');
const REASON = 'You are not a db or server admin.';

describe('design documents in a member\'s _bulk_docs', () => {
  let s, base;
  before(async () => {
    s = await startServer({ args: ['--set', 'admins.root=pw', '--set', 'chttpd_auth.iterations=1000'] });
    base = s.url;
    for (const [name, password] of [['mia', 'm'], ['dan', 'd']]) {
      const r = await request(base, 'PUT', `/_users/org.couchdb.user:${name}`, {
        headers: ADMIN, body: { name, password, roles: [], type: 'user' } });
      assert.equal(r.status, 201, r.text);
    }
    assert.equal((await request(base, 'PUT', '/db', { headers: ADMIN })).status, 201);
    assert.equal((await request(base, 'PUT', '/db/_security', { headers: ADMIN,
      body: { admins: { names: ['dan'], roles: [] }, members: { names: ['mia'], roles: [] } } })).status, 200);
  });
  after(async () => { await s?.stop(); });

  test('only the design entries are refused, in their places; the rest is written', async () => {
    const r = await request(base, 'POST', '/db/_bulk_docs', { headers: MEMBER, body: {
      docs: [{ _id: 'a', n: 1 }, { _id: '_design/x', views: {} }, { _id: 'b' }, { _id: '_design/y' }, { n: 3 }] } });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json.length, 5);
    assert.equal(r.json[0].id, 'a');
    assert.equal(r.json[0].ok, true);
    assert.deepEqual(r.json[1], { id: '_design/x', error: 'forbidden', reason: REASON });
    assert.equal(r.json[2].id, 'b');
    assert.equal(r.json[2].ok, true);
    assert.deepEqual(r.json[3], { id: '_design/y', error: 'forbidden', reason: REASON });
    assert.equal(r.json[4].ok, true);
    assert.equal((await request(base, 'GET', '/db/a', { headers: MEMBER })).json.n, 1);
    assert.equal((await request(base, 'GET', `/db/${r.json[4].id}`, { headers: MEMBER })).json.n, 3);
    assert.equal((await request(base, 'GET', '/db/_design/x', { headers: ADMIN })).status, 404);
    assert.equal((await request(base, 'GET', '/db/_design/y', { headers: ADMIN })).status, 404);
  });

  test('new_edits: false — the written revisions answer nothing, the refusals are listed', async () => {
    const r = await request(base, 'POST', '/db/_bulk_docs', { headers: MEMBER, body: { new_edits: false,
      docs: [{ _id: 'r1', _rev: '1-abc' }, { _id: '_design/z', _rev: '1-def' }] } });
    assert.equal(r.status, 201, r.text);
    assert.deepEqual(r.json, [{ id: '_design/z', error: 'forbidden', reason: REASON }]);
    assert.equal((await request(base, 'GET', '/db/r1', { headers: MEMBER })).json._rev, '1-abc');
    assert.equal((await request(base, 'GET', '/db/_design/z', { headers: ADMIN })).status, 404);
  });

  test('all_or_nothing: refused as a whole, nothing written', async () => {
    const r = await request(base, 'POST', '/db/_bulk_docs', { headers: MEMBER, body: { all_or_nothing: true,
      docs: [{ _id: 'c' }, { _id: '_design/w' }] } });
    assert.equal(r.status, 403);
    assert.equal(r.json.error, 'forbidden');
    assert.equal((await request(base, 'GET', '/db/c', { headers: MEMBER })).status, 404);
  });

  test('a db admin writes design documents through _bulk_docs', async () => {
    const r = await request(base, 'POST', '/db/_bulk_docs', { headers: DBADMIN, body: {
      docs: [{ _id: '_design/v', views: {} }, { _id: 'd' }] } });
    assert.equal(r.status, 201, r.text);
    assert.ok(r.json.every((e) => e.ok), r.text);
  });

  test('validate_doc_update sees the member in a batch with design documents', async () => {
    // A database of its own, so the validator does not bother the other cases.
    assert.equal((await request(base, 'PUT', '/vdb', { headers: ADMIN })).status, 201);
    assert.equal((await request(base, 'PUT', '/vdb/_security', { headers: ADMIN,
      body: { admins: { names: ['dan'], roles: [] }, members: { names: ['mia'], roles: [] } } })).status, 200);
    const vdu = 'function (newDoc, oldDoc, userCtx) { if (newDoc.owner !== userCtx.name) ' +
      "throw({ forbidden: 'owner must be ' + userCtx.name }); }";
    assert.equal((await request(base, 'PUT', '/vdb/_design/owner', { headers: ADMIN,
      body: { validate_doc_update: vdu } })).status, 201);
    const r = await request(base, 'POST', '/vdb/_bulk_docs', { headers: MEMBER, body: {
      docs: [{ _id: 'mine', owner: 'mia' }, { _id: '_design/q' }, { _id: 'theirs', owner: 'dan' }] } });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json[0].ok, true, r.text);
    assert.deepEqual(r.json[1], { id: '_design/q', error: 'forbidden', reason: REASON });
    assert.deepEqual(r.json[2], { id: 'theirs', error: 'forbidden', reason: 'owner must be mia' });
  });
});
