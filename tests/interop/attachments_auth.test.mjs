// Streamed uploads (standalone attachments, multipart documents) reach the blob store as they
// arrive and past the request-size cap, so who sends them is checked when the headers arrive:
// a client without the right is held to the caps like any other body (here 4 MiB: a 6 MiB
// upload gets 413 at once), and nothing of it is written; the admin streams past the cap.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startServer } from './lib/server.mjs';
import { request, expectStatus } from './lib/http.mjs';

let S, admin, dir;

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-attauth-'));
  const file = path.join(dir, 'admin.password');
  S = await startServer({ args: ['--admin-file', file, '--set', 'chttpd_auth.iterations=1000',
    '--set', 'httpd.max_request_size=4M'] });
  const [name, password] = (await fs.readFile(file, 'utf8')).trim().split(':');
  const authorization = 'Basic ' + Buffer.from(`${name}:${password}`).toString('base64');
  const call = (method, p, opts = {}) =>
    request(S.url, method, p, { ...opts, headers: { authorization, ...(opts.headers ?? {}) } });
  admin = { request: call, get: (p) => call('GET', p), put: (p, body) => call('PUT', p, { body }) };
  expectStatus(await admin.put('/private'), 201);
});

after(async () => {
  await S?.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

const blobs = async () => expectStatus(await admin.get('/_node/_local/_blobs'), 200);

test('an anonymous attachment upload is refused and none of it is stored', async () => {
  const r = await request(S.url, 'PUT', '/private/doc/big.bin', {
    body: Buffer.alloc(6 << 20, 1), headers: { 'content-type': 'application/octet-stream' } });
  assert.equal(r.status, 413, r.text);
  const b = await blobs();
  assert.equal(b.blobs, 0);
  assert.equal(b.pending, 0);
});

test('an anonymous multipart document upload is refused and none of it is stored', async () => {
  const att = Buffer.alloc(6 << 20, 2);
  const body = Buffer.concat([
    Buffer.from('--abc\r\nContent-Type: application/json\r\n\r\n' + JSON.stringify({
      _id: 'mp', _rev: '1-0123456789abcdef0123456789abcdef', _revisions: { start: 1, ids: ['0123456789abcdef0123456789abcdef'] },
      _attachments: { 'a.bin': { follows: true, content_type: 'application/octet-stream', length: att.length } } }) +
      '\r\n--abc\r\n\r\n'),
    att, Buffer.from('\r\n--abc--')]);
  const r = await request(S.url, 'PUT', '/private/mp?new_edits=false', {
    body, headers: { 'content-type': 'multipart/related; boundary="abc"' } });
  assert.equal(r.status, 413, r.text);
  const b = await blobs();
  assert.equal(b.blobs, 0);
  assert.equal(b.pending, 0);
});

test('the admin streams an upload past the request cap and reads it back', async () => {
  const data = Buffer.alloc(6 << 20, 7);
  const r = await admin.request('PUT', '/private/doc/ok.bin', {
    body: data, headers: { 'content-type': 'application/octet-stream' } });
  expectStatus(r, 201);
  const g = await admin.get('/private/doc/ok.bin');
  assert.equal(g.status, 200);
  assert.equal(Buffer.compare(g.body, data), 0);
  assert.equal((await blobs()).blobs, 1);
});

// A streamed upload whose password is not in the checked-password cache needs a PBKDF2
// (CouchDB's 600,000 iterations: a good fraction of a second). It runs on a worker with the
// upload's connection suspended, not on the event thread that also serves everyone else:
// with one event thread, GETs sent meanwhile are answered while the upload's check runs.
test('a streamed upload\'s password check does not hold the event thread', async () => {
  const d = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-attauth-hash-'));
  const s = await startServer({ args: ['--set', 'admins.root=r00t-pw', '--set', 'chttpd.event_threads=1'],
    dataDir: d });
  try {
    const auth = (n, p) => ({ authorization: 'Basic ' + Buffer.from(`${n}:${p}`).toString('base64') });
    const root = auth('root', 'r00t-pw');
    expectStatus(await request(s.url, 'PUT', '/up', { headers: root }), 201);
    // A member whose password the server has never checked: its hash is made on this write.
    expectStatus(await request(s.url, 'PUT', '/_users/org.couchdb.user:up', { headers: root,
      body: { name: 'up', password: 'up-pw', roles: [], type: 'user' } }), 201);
    expectStatus(await request(s.url, 'PUT', '/up/_security', { headers: root,
      body: { members: { names: ['up'] } } }), 200);
    const t0 = performance.now();
    const upload = request(s.url, 'PUT', '/up/doc/a.bin', { body: Buffer.alloc(1 << 20, 3),
      headers: { ...auth('up', 'up-pw'), 'content-type': 'application/octet-stream' } })
      .then((r) => ({ r, ms: performance.now() - t0 }));
    const gets = [];
    await new Promise((res) => setTimeout(res, 20));
    for (let i = 0; i < 5; i++) {
      const g0 = performance.now();
      expectStatus(await request(s.url, 'GET', '/'), 200);
      gets.push(performance.now() - g0);
    }
    const { r, ms } = await upload;
    expectStatus(r, 201);
    const worst = Math.max(...gets);
    console.log(`# upload with a password check: ${ms.toFixed(0)} ms; GET / meanwhile: worst ${worst.toFixed(1)} ms`);
    // On the event thread, the first GET would wait for the whole hash.
    if (ms > 100) assert.ok(worst < ms / 2, `GET waited ${worst} ms beside a ${ms} ms upload check`);
  } finally {
    await s.stop();
    await fs.rm(d, { recursive: true, force: true });
  }
});
