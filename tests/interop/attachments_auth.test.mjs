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
