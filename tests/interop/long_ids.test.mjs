// Document ids longer than LMDB's key size (CouchDB accepts any length by default; apps use
// URLs and hashes as ids): written through the URL and _bulk_docs, read back whole, listed
// by _all_docs in exact byte order in both directions, with startkey/endkey/skip/limit.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import { request, docPath, qs } from './lib/http.mjs';

let server;
const DB = 'longids';

before(async () => {
  // A 64 KiB id in a URL needs a 160 KiB connection buffer (the default 16K takes ~15 KB).
  server = await startServer({ args: ['--set', 'chttpd.connection_memory=160K'] });
  assert.equal((await request(server.url, 'PUT', `/${DB}`)).status, 201);
});

after(async () => {
  await server?.stop();
});

function byteCmp(a, b) {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

test('a 64 KiB id', async () => {
  // Written with _bulk_docs: a PUT's reply carries the id in its Location header, longer
  // than node's HTTP parser takes; the URL is used to read it.
  const id = 'u'.repeat(65536);
  const put = await request(server.url, 'POST', `/${DB}/_bulk_docs`, { body: { docs: [{ _id: id, n: 1 }] } });
  assert.equal(put.status, 201, put.text.slice(0, 200));
  assert.equal(put.json[0].id, id);
  const get = await request(server.url, 'GET', docPath(DB, id));
  assert.equal(get.status, 200);
  assert.equal(get.json._id, id);
  const upd = await request(server.url, 'POST', `/${DB}/_bulk_docs`,
    { body: { docs: [{ _id: id, _rev: get.json._rev, n: 2 }] } });
  assert.equal(upd.status, 201);
  assert.match(upd.json[0].rev, /^2-/);
  const atRev = await request(server.url, 'GET', `${docPath(DB, id)}${qs({ rev: upd.json[0].rev })}`);
  assert.equal(atRev.json.n, 2);
  const tooLong = await request(server.url, 'POST', `/${DB}`, { body: { _id: 'v'.repeat(65537) } });
  assert.equal(tooLong.status, 400);
  assert.equal(tooLong.json.error, 'illegal_docid');
});

test('_all_docs lists long ids in exact byte order', async () => {
  const prefix = 'https://example.com/' + 'p'.repeat(500);
  const ids = [];
  for (let i = 0; i < 40; i++) ids.push(prefix + '/' + (i * 7919 % 97).toString(36) + 'x'.repeat(i * 13));
  ids.push(prefix, prefix.slice(0, 400), prefix.slice(0, 401), 'a', 'q', 'zz');
  const res = await request(server.url, 'POST', `/${DB}/_bulk_docs`,
    { body: { docs: ids.map((_id) => ({ _id })) } });
  assert.equal(res.status, 201);
  assert.ok(res.json.every((r) => r.ok), JSON.stringify(res.json).slice(0, 300));
  const all = [...new Set([...ids, 'u'.repeat(65536)])].sort(byteCmp);

  const asc = await request(server.url, 'GET', `/${DB}/_all_docs`);
  assert.deepEqual(asc.json.rows.map((r) => r.id), all);
  const desc = await request(server.url, 'GET', `/${DB}/_all_docs${qs({ descending: true })}`);
  assert.deepEqual(desc.json.rows.map((r) => r.id), [...all].reverse());

  const start = all[10], end = all[30];
  const page = await request(server.url, 'GET',
    `/${DB}/_all_docs${qs({ startkey: JSON.stringify(start), endkey: JSON.stringify(end), skip: 2, limit: 9 })}`);
  assert.deepEqual(page.json.rows.map((r) => r.id), all.slice(12, 21));
  const back = await request(server.url, 'GET',
    `/${DB}/_all_docs${qs({ descending: true, startkey: JSON.stringify(end), endkey: JSON.stringify(start), inclusive_end: false })}`);
  assert.deepEqual(back.json.rows.map((r) => r.id), all.slice(11, 31).reverse());
});
