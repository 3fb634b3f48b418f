// Replicated writes (new_edits:false) as CouchDB 3.5 takes them: a bare "N-" revision is
// answered and ignored, generation 0 and generations past 2^63 are stored, a
// _revisions.start smaller than its ids count is accepted; a huge _revisions is bounded
// (only _revs_limit ids are kept) and an absurd one is refused with 400.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import { request, docPath } from './lib/http.mjs';

let server;
const DB = 'replrevs';

before(async () => {
  server = await startServer();
  assert.equal((await request(server.url, 'PUT', `/${DB}`)).status, 201);
});

after(async () => {
  await server?.stop();
});

function bulk(text) {
  return request(server.url, 'POST', `/${DB}/_bulk_docs`, { body: text });
}

test('"1-" with new_edits:false is answered with [] and nothing is stored', async () => {
  const res = await bulk('{"new_edits":false,"docs":[{"_id":"bare","_rev":"1-"}]}');
  assert.equal(res.status, 201);
  assert.deepEqual(res.json, []);
  assert.equal((await request(server.url, 'GET', docPath(DB, 'bare'))).status, 404);
});

test('revisions CouchDB stores are stored', async () => {
  const res = await bulk('{"new_edits":false,"docs":[' +
    '{"_id":"zero","_rev":"0-abc","v":0},' +
    '{"_id":"short","_rev":"1-c","_revisions":{"start":1,"ids":["c","b","a"]}},' +
    '{"_id":"high","_rev":"9223372036854775809-b","_revisions":{"start":9223372036854775809,"ids":["b","a"]}}' +
    ']}');
  assert.equal(res.status, 201);
  assert.deepEqual(res.json, []);
  const zero = await request(server.url, 'GET', docPath(DB, 'zero'));
  assert.equal(zero.json._rev, '0-abc');
  const short = await request(server.url, 'GET', `${docPath(DB, 'short')}?revs=true`);
  assert.equal(short.json._rev, '1-c');
  assert.deepEqual(short.json._revisions.ids, ['c', 'b']);
  const high = await request(server.url, 'GET', docPath(DB, 'high'));
  assert.match(high.text, /"_rev":"9223372036854775809-b"/);
});

test('a long _revisions keeps _revs_limit ids; an absurd one is refused', async () => {
  const ids = (n) => Array.from({ length: n }, (_, i) => (n - i).toString(16).padStart(32, '0'));
  const many = ids(60000);
  const ok = await request(server.url, 'POST', `/${DB}/_bulk_docs`, {
    body: { new_edits: false, docs: [{ _id: 'many', _rev: `60000-${many[0]}`, _revisions: { start: 60000, ids: many } }] },
  });
  assert.equal(ok.status, 201);
  const got = await request(server.url, 'GET', `${docPath(DB, 'many')}?revs=true`);
  assert.equal(got.json._revisions.ids.length, 1000);
  assert.equal(got.json._revisions.ids[0], many[0]);

  const absurd = ids(100001);
  const bad = await request(server.url, 'POST', `/${DB}/_bulk_docs`, {
    body: { new_edits: false, docs: [{ _id: 'absurd', _rev: `100001-${absurd[0]}`, _revisions: { start: 100001, ids: absurd } }] },
  });
  assert.equal(bad.status, 400);
  assert.equal(bad.json.error, 'doc_validation');
});
