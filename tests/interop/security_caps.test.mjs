// Entry-count caps of bulk requests ([couchdb] max_bulk_docs_count, max_bulk_get_count,
// max_revs_diff_count, max_keys_count): one entry over the cap is a 413 with CouchDB's error
// names, counted while scanning (no tree is built), at the cap the request is served; and a
// body of a million tiny entries is refused under the default caps without the server's
// memory growing by the tree it would have needed.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startServer } from './lib/server.mjs';
import { request } from './lib/http.mjs';

const range = (n, f) => Array.from({ length: n }, (_, i) => f(i));

describe('entry-count caps', () => {
  let s, base;
  before(async () => {
    s = await startServer({ args: ['--set', 'couchdb.max_bulk_docs_count=5',
      '--set', 'couchdb.max_bulk_get_count=4', '--set', 'couchdb.max_revs_diff_count=6',
      '--set', 'couchdb.max_keys_count=3'] });
    base = s.url;
    assert.equal((await request(base, 'PUT', '/db')).status, 201);
  });
  after(async () => { await s?.stop(); });

  test('_bulk_docs: 5 served, 6 refused with max_bulk_docs_count_exceeded', async () => {
    const ok = await request(base, 'POST', '/db/_bulk_docs', { body: { docs: range(5, (i) => ({ _id: `a${i}` })) } });
    assert.equal(ok.status, 201);
    assert.equal(ok.json.length, 5);
    const r = await request(base, 'POST', '/db/_bulk_docs', { body: { docs: range(6, (i) => ({ _id: `b${i}`, nested: [1, 2, 3, 4, 5, 6, 7] })) } });
    assert.equal(r.status, 413);
    assert.equal(r.json.error, 'max_bulk_docs_count_exceeded');
    assert.match(r.json.reason, /More than 5 documents.*max_bulk_docs_count/);
    assert.equal((await request(base, 'GET', '/db/b0')).status, 404);
  });

  test('the count is structural: brackets, commas and quotes inside strings and keys do not count', async () => {
    const tricky = (i) => ({
      _id: `t${i}`, s: 'a,b],[{"docs":[1,2,3]}', q: 'quote \\" and \\\\', e: '\\\\', 'k,[]': { docs: [1, 2, 3, 4, 5, 6] },
      n: [1.5e3, true, null, false], u: '\u00e9\u4e2d',
    });
    const ok = await request(base, 'POST', '/db/_bulk_docs', {
      body: { 'new_edits,[': true, other: [[1, 2, 3, 4, 5, 6, 7]], docs: range(5, tricky), after: [1, 2, 3, 4, 5, 6] },
    });
    assert.equal(ok.status, 201);
    assert.equal(ok.json.length, 5);
    const r = await request(base, 'POST', '/db/_bulk_docs', {
      body: { other: 'x", "docs": [', docs: range(6, (i) => tricky(i + 10)) },
    });
    assert.equal(r.status, 413);
    assert.equal(r.json.error, 'max_bulk_docs_count_exceeded');
    // numbers and literals are entries too
    const nums = await request(base, 'POST', '/db/_all_docs', { body: { keys: [1, -2.5e-3, true, null] } });
    assert.equal(nums.status, 413);
  });

  test('_bulk_get: 4 served, 5 refused', async () => {
    const ok = await request(base, 'POST', '/db/_bulk_get', { body: { docs: range(4, (i) => ({ id: `a${i}` })) } });
    assert.equal(ok.status, 200);
    assert.equal(ok.json.results.length, 4);
    const r = await request(base, 'POST', '/db/_bulk_get', { body: { docs: range(5, (i) => ({ id: `a${i}` })) } });
    assert.equal(r.status, 413);
    assert.equal(r.json.error, 'max_bulk_get_count_exceeded');
  });

  test('_revs_diff: ids and revisions both counted', async () => {
    const ok = await request(base, 'POST', '/db/_revs_diff', { body: { x: ['1-a', '1-b', '1-c'], y: ['1-a', '1-b', '1-c'] } });
    assert.equal(ok.status, 200);
    const revs = await request(base, 'POST', '/db/_revs_diff', { body: { x: ['1-a', '1-b', '1-c', '1-d'], y: ['1-a', '1-b', '1-c'] } });
    assert.equal(revs.status, 413);
    assert.equal(revs.json.error, 'max_revs_diff_count_exceeded');
    const ids = await request(base, 'POST', '/db/_revs_diff', { body: Object.fromEntries(range(7, (i) => [`i${i}`, []])) });
    assert.equal(ids.status, 413);
  });

  test('_all_docs keys and _changes doc_ids, in the body or the query', async () => {
    const ok = await request(base, 'POST', '/db/_all_docs', { body: { keys: ['a0', 'a1', 'a2'] } });
    assert.equal(ok.status, 200);
    assert.equal(ok.json.rows.length, 3);
    const body = await request(base, 'POST', '/db/_all_docs', { body: { keys: ['a0', 'a1', 'a2', 'a3'] } });
    assert.equal(body.status, 413);
    assert.equal(body.json.error, 'max_keys_count_exceeded');
    const q = await request(base, 'GET', `/db/_all_docs?keys=${encodeURIComponent(JSON.stringify(['a0', 'a1', 'a2', 'a3']))}`);
    assert.equal(q.status, 413);
    const ch = await request(base, 'POST', '/db/_changes?filter=_doc_ids', { body: { doc_ids: ['a0', 'a1', 'a2', 'a3'] } });
    assert.equal(ch.status, 413);
    assert.equal(ch.json.error, 'max_keys_count_exceeded');
    const chq = await request(base, 'GET', `/db/_changes?filter=_doc_ids&doc_ids=${encodeURIComponent(JSON.stringify(['a0', 'a1', 'a2', 'a3']))}`);
    assert.equal(chq.status, 413);
    const chok = await request(base, 'POST', '/db/_changes?filter=_doc_ids', { body: { doc_ids: ['a0', 'a1'] } });
    assert.equal(chok.status, 200);
    assert.equal(chok.json.results.length, 2);
  });
});

describe('default caps against a body of a million tiny entries', () => {
  let s;
  before(async () => { s = await startServer(); });
  after(async () => { await s?.stop(); });

  test('refused with 413 while scanning; RSS grows by far less than a tree would take', async () => {
    assert.equal((await request(s.url, 'PUT', '/db')).status, 201);
    const before = Number(fs.readFileSync(`/proc/${s.proc.pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]);
    // 1,000,000 ids of 2 bytes: ~6 MB of JSON, ~100 MB as a tree of nodes.
    const keys = '{"keys":[' + range(1_000_000, () => '"k"').join(',') + ']}';
    const r = await request(s.url, 'POST', '/db/_all_docs', { body: keys });
    assert.equal(r.status, 413);
    assert.equal(r.json.error, 'max_keys_count_exceeded');
    const docs = '{"docs":[' + range(1_000_000, () => '{}').join(',') + ']}';
    const d = await request(s.url, 'POST', '/db/_bulk_docs', { body: docs });
    assert.equal(d.status, 413);
    assert.equal(d.json.error, 'max_bulk_docs_count_exceeded');
    const after = Number(fs.readFileSync(`/proc/${s.proc.pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]);
    // The bodies themselves (6 MB each) are buffered; no tree on top of them.
    assert.ok((after - before) * 1024 < 60 * (1 << 20), `RSS grew by ${after - before} kB`);
  });
});
