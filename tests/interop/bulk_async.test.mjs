// _bulk_docs and POST /{db} that wait for their group commit hold no worker thread (issue 13):
// with commits slowed to a slow disk's pace (MIMEO_TEST_COMMIT_DELAY_MS, read only by the
// sanitizer builds) and a pool of 4 workers, many writes wait at once while reads are still
// answered at once, and the pool never has to grow (it grows when every worker is stuck with
// requests queued: that is what a waiting write used to do). The answers (201, 417, 400, 415,
// per-document errors, replies built on the writer thread and on a worker) are checked too,
// and SIGTERM finishes the writes in flight.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';

import { startServer } from './lib/server.mjs';
import { request } from './lib/http.mjs';
import { rawRequest } from './lib/conns.mjs';

const DELAY_MS = 400;
const WORKERS = 4;

// Threads of the server's worker pool, by name (loop.c names them).
function workerThreads(pid) {
  let n = 0;
  for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      if (fs.readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim() === 'mimeo-worker') n++;
    } catch { /* the thread ended */ }
  }
  return n;
}

function bulkBody(prefix, n, extra = {}) {
  return JSON.stringify({ ...extra,
    docs: Array.from({ length: n }, (_, i) => ({ _id: `${prefix}-${String(i).padStart(4, '0')}`, i })) });
}

describe('waiting writes hold no worker', () => {
  let server, port;
  before(async () => {
    server = await startServer({
      args: ['--set', `chttpd.worker_threads=${WORKERS}`],
      env: { MIMEO_TEST_COMMIT_DELAY_MS: String(DELAY_MS) },
    });
    port = Number(new URL(server.url).port);
    assert.equal((await request(server.url, 'PUT', '/w')).status, 201);
  });
  after(async () => {
    const out = await server.stop();
    assert.doesNotMatch(out.stderr, /ERROR: AddressSanitizer|runtime error|ThreadSanitizer/);
  });

  test('many _bulk_docs and POSTs wait for slow commits; reads are answered meanwhile', async () => {
    const pid = server.proc.pid;
    assert.equal(workerThreads(pid), WORKERS, 'the pool starts at its configured size');
    // 24 writes, six times the pool, all waiting on commits that take DELAY_MS each.
    const writes = [];
    for (let k = 0; k < 20; k++)
      writes.push(rawRequest(port, 'POST', '/w/_bulk_docs', { body: bulkBody(`b${k}`, 5), timeout: 30_000 }));
    for (let k = 0; k < 4; k++)
      writes.push(rawRequest(port, 'POST', '/w', { body: JSON.stringify({ _id: `p${k}` }), timeout: 30_000 }));
    await new Promise((r) => setTimeout(r, 150));
    // While they wait: reads answered quickly (the commit in progress takes DELAY_MS; a read
    // that had to wait for a worker would take about as long).
    const reads = [];
    for (let i = 0; i < 10; i++) {
      const r = await rawRequest(port, 'GET', '/w');
      assert.equal(r.status, 200, r.head);
      reads.push(r.ms);
    }
    const slowest = Math.max(...reads);
    const replies = await Promise.all(writes);
    const threads = workerThreads(pid);
    console.log(`# reads while ${writes.length} writes waited: slowest ${slowest.toFixed(0)} ms; ` +
      `worker threads ${threads}`);
    for (const [k, r] of replies.entries()) {
      assert.equal(r.status, 201, `write ${k}: ${r.head}`);
      if (k < 20) {
        const body = JSON.parse(r.body);
        assert.equal(body.length, 5);
        assert.ok(body.every((e) => e.ok === true && /^1-/.test(e.rev)), r.body);
      } else {
        assert.match(r.head, /\r\nETag: "1-/i);
        assert.match(r.head, /\r\nLocation: .*\/w\/p\d/i);
      }
    }
    // Had the writes held workers, every worker would have been stuck with requests
    // queued for longer than the pool's 100 ms stall limit, and it would have grown.
    assert.equal(threads, WORKERS, 'the worker pool did not have to grow');
    assert.ok(slowest < DELAY_MS, `a read took ${slowest.toFixed(0)} ms beside the waiting writes`);
    const info = (await request(server.url, 'GET', '/w')).json;
    assert.equal(info.doc_count, 20 * 5 + 4);
  });

  test('answers: big replies (built on a worker), conflicts, 417, 400, 415, batch=ok', async () => {
    // Over 64 documents: the reply is handed back to a worker.
    const big = await request(server.url, 'POST', '/w/_bulk_docs', { body: bulkBody('big', 300) });
    assert.equal(big.status, 201);
    assert.equal(big.json.length, 300);
    assert.deepEqual(big.json[299].id, 'big-0299');
    assert.ok(big.json.every((e) => e.ok));
    // The same again: each a conflict.
    const again = await request(server.url, 'POST', '/w/_bulk_docs', { body: bulkBody('big', 70) });
    assert.equal(again.status, 201);
    assert.ok(again.json.every((e) => e.error === 'conflict' && e.reason === 'Document update conflict.'));
    // all_or_nothing with a conflict: 417, the failures, nothing written.
    const aon = await request(server.url, 'POST', '/w/_bulk_docs', {
      body: JSON.stringify({ all_or_nothing: true, docs: [{ _id: 'aon-new' }, { _id: 'big-0000' }] }) });
    assert.equal(aon.status, 417);
    assert.deepEqual(aon.json, [{ id: 'big-0000', error: 'conflict', reason: 'Document update conflict.' }]);
    assert.equal((await request(server.url, 'GET', '/w/aon-new')).status, 404);
    // new_edits false: []
    const ne = await request(server.url, 'POST', '/w/_bulk_docs', { body: JSON.stringify({ new_edits: false,
      docs: [{ _id: 'rep', _rev: '2-aaaa', _revisions: { start: 2, ids: ['aaaa', 'bbbb'] } }] }) });
    assert.equal(ne.status, 201);
    assert.deepEqual(ne.json, []);
    // Request-wide errors, as before.
    const bad = await request(server.url, 'POST', '/w/_bulk_docs', { body: '{"docs":[' });
    assert.equal(bad.status, 400);
    assert.equal(bad.json.error, 'bad_request');
    const nodocs = await request(server.url, 'POST', '/w/_bulk_docs', { body: '{}' });
    assert.equal(nodocs.status, 400);
    const ct = await request(server.url, 'POST', '/w/_bulk_docs',
      { body: bulkBody('ct', 1), headers: { 'content-type': 'text/plain' } });
    assert.equal(ct.status, 415);
    const missing = await request(server.url, 'POST', '/nope/_bulk_docs', { body: bulkBody('m', 1) });
    assert.equal(missing.status, 404);
    const empty = await request(server.url, 'POST', '/w/_bulk_docs', { body: '{"docs":[]}' });
    assert.equal(empty.status, 201);
    assert.deepEqual(empty.json, []);
    // POST /{db}: 201 with ETag and Location; batch=ok 202 without ETag; a conflict 409.
    const p = await request(server.url, 'POST', '/w', { body: { _id: 'post1', a: 1 } });
    assert.equal(p.status, 201);
    assert.equal(p.json.id, 'post1');
    assert.match(p.headers.etag, /^"1-/);
    assert.match(p.headers.location, /\/w\/post1$/);
    const pb = await request(server.url, 'POST', '/w?batch=ok', { body: { _id: 'post2' } });
    assert.equal(pb.status, 202);
    assert.equal(pb.headers.etag, undefined);
    assert.deepEqual(pb.json, { ok: true, id: 'post2' });
    const pc = await request(server.url, 'POST', '/w', { body: { _id: 'post1' } });
    assert.equal(pc.status, 409);
    const pg = await request(server.url, 'POST', '/w', { body: { gen: true } });
    assert.equal(pg.status, 201);
    assert.match(pg.json.id, /^[0-9a-f]{32}$/);
    const pbad = await request(server.url, 'POST', '/w', { body: '{"a":' });
    assert.equal(pbad.status, 400);
  });

  test('SIGTERM finishes the writes in flight', async () => {
    const writes = [];
    for (let k = 0; k < 8; k++)
      writes.push(rawRequest(port, 'POST', '/w/_bulk_docs', { body: bulkBody(`t${k}`, 100), timeout: 30_000 }));
    await new Promise((r) => setTimeout(r, 100));
    const out = await server.stop({ keepData: true });
    assert.equal(out.killed, false);
    const replies = await Promise.all(writes);
    // Each was either answered 201 (and is on disk) or never taken (no answer at all).
    const answered = replies.filter((r) => r.status === 201);
    for (const r of replies) assert.ok(r.status === 201 || r.status === 0, r.head);
    assert.ok(answered.length > 0, 'writes in flight were answered');
    await server.launch();
    for (const [k, r] of replies.entries()) {
      if (r.status !== 201) continue;
      const doc = await request(server.url, 'GET', `/w/t${k}-0099`);
      assert.equal(doc.status, 200, `t${k}-0099 answered 201 but missing after the restart`);
    }
  });
});

// A member's batch holding design documents (answered entry by entry, each design document
// refused in its place) goes the same way: a big one's reply is built on a worker.
describe('a member\'s _bulk_docs with design documents', () => {
  const basic = (n, p) => ({ authorization: 'Basic ' + Buffer.from(`${n}:${p}`).toString('base64') });
  const ADMIN = basic('root', 'pw');
  const MEMBER = basic('mia', 'm');
  let s;
  before(async () => {
    s = await startServer({
      args: ['--set', 'admins.root=pw', '--set', 'chttpd_auth.iterations=1000',
        '--set', `chttpd.worker_threads=${WORKERS}`],
      env: { MIMEO_TEST_COMMIT_DELAY_MS: '50' },
    });
    const r = await request(s.url, 'PUT', '/_users/org.couchdb.user:mia', {
      headers: ADMIN, body: { name: 'mia', password: 'm', roles: [], type: 'user' } });
    assert.equal(r.status, 201, r.text);
    assert.equal((await request(s.url, 'PUT', '/db', { headers: ADMIN })).status, 201);
    assert.equal((await request(s.url, 'PUT', '/db/_security', { headers: ADMIN,
      body: { admins: { names: [], roles: [] }, members: { names: ['mia'], roles: [] } } })).status, 200);
  });
  after(async () => {
    const out = await s.stop();
    assert.doesNotMatch(out.stderr, /ERROR: AddressSanitizer|runtime error|ThreadSanitizer/);
  });

  test('small and big batches, in order', async () => {
    for (const n of [3, 150]) {
      const docs = [];
      for (let i = 0; i < n; i++) {
        docs.push({ _id: `m${n}-${i}` });
        if (i % 50 === 1) docs.push({ _id: `_design/d${n}-${i}` });
      }
      const r = await request(s.url, 'POST', '/db/_bulk_docs', { headers: MEMBER, body: { docs } });
      assert.equal(r.status, 201, r.text);
      assert.equal(r.json.length, docs.length);
      for (const [k, d] of docs.entries()) {
        assert.equal(r.json[k].id, d._id);
        if (d._id.startsWith('_design/')) assert.equal(r.json[k].error, 'forbidden');
        else assert.equal(r.json[k].ok, true);
      }
    }
  });
});
