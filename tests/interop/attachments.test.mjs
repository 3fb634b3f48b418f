// Attachments: CouchDB's API shapes (inline, stubs, standalone GET/HEAD/PUT/DELETE with
// rev, ETag, Range, Content-MD5, gzip for text types, atts_since, att_encoding_info,
// _bulk_get/_all_docs/_changes with attachments=true), PouchDB pushing and pulling
// attachments of 0 B to 50 MiB (binary and text) with conflicts, content addressing (one
// blob for 1,000 documents), memory held flat while a 256 MiB attachment streams in and out
// (1 GiB runs on the release build in attachments_repl.test.mjs), replication between local
// databases that copies no byte, compaction releasing old revisions' blobs, and a cut or
// crashed upload leaving nothing pending while every referenced blob stays.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import crypto from 'node:crypto';
import zlib from 'node:zlib';
import fs from 'node:fs';
import { startServer } from './lib/server.mjs';
import { client, request, assertError, expectStatus } from './lib/http.mjs';
import { PouchDB, memoryDb } from './lib/pouch.mjs';

let S;
let c;

before(async () => {
  // A smaller allocator quarantine, so that the sanitizer build's RSS reflects what the
  // server holds rather than freed memory parked for use-after-free checks.
  process.env.ASAN_OPTIONS = 'abort_on_error=0:detect_leaks=1:quarantine_size_mb=16';
  // Default limits on purpose: PouchDB's push of a 50 MiB attachment is a ~70 MiB
  // _bulk_docs body (base64 inside JSON), which a default-configured node must accept.
  S = await startServer();
  c = client(S.url);
});

after(async () => {
  await S?.stop();
});

const md5 = (buf) => `md5-${crypto.createHash('md5').update(buf).digest('base64')}`;
const blobs = async () => expectStatus(await c.get('/_node/_local/_blobs'), 200);

function bytes(n, seed = 1) {
  const b = Buffer.alloc(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

test('inline attachments: stub shape, data, digests, missing_stub, bad names', async () => {
  expectStatus(await c.put('/shapes'), 201);
  const hello = Buffer.from('hello world');
  let r = await c.put('/shapes/a', { x: 1, _attachments: {
    'f.bin': { content_type: 'application/octet-stream', data: hello.toString('base64') } } });
  const rev1 = expectStatus(r, 201).rev;
  r = await c.get('/shapes/a');
  assert.deepEqual(r.json._attachments, { 'f.bin': { content_type: 'application/octet-stream',
    revpos: 1, digest: 'md5-XrY7u+Ae7tCTyyK7j1rNww==', length: 11, stub: true } });
  assert.equal(r.json.x, 1);
  r = await c.get('/shapes/a?attachments=true');
  assert.equal(r.json._attachments['f.bin'].data, hello.toString('base64'));
  assert.equal(r.json._attachments['f.bin'].stub, undefined);
  // A stub keeps the attachment; revpos stays 1.
  r = await c.put('/shapes/a', { _rev: rev1, x: 2, _attachments: { 'f.bin': { stub: true } } });
  const rev2 = expectStatus(r, 201).rev;
  r = await c.get(`/shapes/a/f.bin?rev=${rev2}`);
  assert.equal(r.status, 200);
  assert.deepEqual(r.body, hello);
  // Stubs naming nothing: 412 missing_stub.
  r = await c.put('/shapes/a', { _rev: rev2, _attachments: { nope: { stub: true } } });
  assertError(r, 412, 'missing_stub');
  r = await c.put('/shapes/new', { _attachments: { nope: { stub: true } } });
  assertError(r, 412, 'missing_stub');
  assertError(await c.put('/shapes/b', { _attachments: { _x: { data: '' } } }), 400, 'bad_request');
  assertError(await c.put('/shapes/_local/b', { _attachments: { x: { data: '' } } }), 400, 'bad_request');
  assertError(await c.put('/shapes/b/_x', 'x', { headers: { 'content-type': 'text/plain' } }),
    400, 'bad_request');
  // _bulk_docs with inline data, new_edits=false (PouchDB's push), keeps the given revpos.
  r = await c.post('/shapes/_bulk_docs', { new_edits: false, docs: [{ _id: 'r', _rev: '2-bb',
    _revisions: { start: 2, ids: ['bb', 'aa'] }, _attachments: { 'q.txt': {
      content_type: 'text/plain', data: Buffer.from('replicated').toString('base64'),
      digest: 'md5-whatever', revpos: 1 } } }] });
  assert.deepEqual(expectStatus(r, 201), []);
  r = await c.get('/shapes/r/q.txt');
  assert.equal(r.text, 'replicated');
  r = await c.get('/shapes/r');
  assert.equal(r.json._attachments['q.txt'].revpos, 1);
});

test('standalone API: names with /, rev, ETag, Range, Content-MD5, HEAD, DELETE', async () => {
  expectStatus(await c.put('/solo'), 201);
  const data = bytes(300_000, 7);
  let r = await c.put('/solo/doc/dir/sub/a.bin', data,
    { headers: { 'content-type': 'application/octet-stream' } });
  const rev1 = expectStatus(r, 201).rev;
  assert.match(rev1, /^1-/);
  // Without a rev on an existing doc: conflict.
  assertError(await c.put('/solo/doc/b.bin', data, { headers: { 'content-type': 'x/y' } }),
    409, 'conflict');
  r = await c.get('/solo/doc/dir/sub/a.bin');
  assert.equal(r.status, 200);
  assert.deepEqual(r.body, data);
  assert.equal(r.headers['content-type'], 'application/octet-stream');
  assert.equal(r.headers.etag, `"${md5(data).slice(4)}"`);
  assert.equal(r.headers['accept-ranges'], 'bytes');
  // The same name with an encoded slash.
  r = await c.get('/solo/doc/dir%2Fsub%2Fa.bin');
  assert.deepEqual(r.body, data);
  r = await c.get('/solo/doc/dir/sub/a.bin', { headers: { 'if-none-match': r.headers.etag } });
  assert.equal(r.status, 304);
  r = await c.get('/solo/doc/dir/sub/a.bin', { headers: { range: 'bytes=1000-1999' } });
  assert.equal(r.status, 206);
  assert.equal(r.headers['content-range'], 'bytes 1000-1999/300000');
  assert.deepEqual(r.body, data.subarray(1000, 2000));
  r = await c.get('/solo/doc/dir/sub/a.bin', { headers: { range: 'bytes=-10' } });
  assert.equal(r.status, 206);
  assert.deepEqual(r.body, data.subarray(data.length - 10));
  r = await c.get('/solo/doc/dir/sub/a.bin', { headers: { range: 'bytes=400000-' } });
  assert.equal(r.status, 416);
  r = await c.head('/solo/doc/dir/sub/a.bin');
  assert.equal(r.status, 200);
  assert.equal(r.headers['content-length'], String(data.length));
  assert.equal(r.body.length, 0);
  // Content-MD5 checked.
  r = await c.put(`/solo/doc/c.txt?rev=${rev1}`, 'abc', { headers: {
    'content-type': 'application/octet-stream', 'content-md5': crypto.createHash('md5').update('abd').digest('base64') } });
  assertError(r, 400, 'content_md5_mismatch');
  r = await c.put(`/solo/doc/c.bin?rev=${rev1}`, 'abc', { headers: {
    'content-type': 'application/octet-stream', 'content-md5': crypto.createHash('md5').update('abc').digest('base64') } });
  const rev2 = expectStatus(r, 201).rev;
  // A text type is stored gzip-encoded: Content-MD5 is still of the bytes sent.
  const md5b64 = (t) => crypto.createHash('md5').update(t).digest('base64');
  r = await c.put('/solo/tdoc/t.txt', 'some text', { headers: {
    'content-type': 'text/plain', 'content-md5': md5b64('other text') } });
  assertError(r, 400, 'content_md5_mismatch');
  r = await c.put('/solo/tdoc/t.txt', 'some text', { headers: {
    'content-type': 'text/plain', 'content-md5': md5b64('some text') } });
  expectStatus(r, 201);
  assert.equal((await c.get('/solo/tdoc/t.txt')).text, 'some text');
  r = await c.get('/solo/doc');
  assert.deepEqual(Object.keys(r.json._attachments).sort(), ['c.bin', 'dir/sub/a.bin']);
  assert.equal(r.json._attachments['c.bin'].revpos, 2);
  assert.equal(r.json._attachments['dir/sub/a.bin'].revpos, 1);
  // Old revision still served by ?rev=.
  r = await c.get(`/solo/doc/c.bin?rev=${rev1}`);
  assertError(r, 404, 'not_found');
  r = await c.delete(`/solo/doc/c.bin?rev=${rev2}`);
  const rev3 = expectStatus(r, 200).rev;
  assert.match(rev3, /^3-/);
  assertError(await c.get('/solo/doc/c.bin'), 404, 'not_found');
  assertError(await c.delete(`/solo/doc/c.bin?rev=${rev3}`), 404, 'not_found');
  assertError(await c.get('/solo/missing/x'), 404, 'not_found');
  // A name of more path segments than the router keeps, some with escapes.
  r = await c.put('/solo/deep/a/b/c/d/e/f/g%20x/h/i%2Fj.txt', 'deep', { headers: { 'content-type': 'application/octet-stream' } });
  expectStatus(r, 201);
  r = await c.get('/solo/deep');
  assert.deepEqual(Object.keys(r.json._attachments), ['a/b/c/d/e/f/g x/h/i/j.txt']);
  r = await c.get('/solo/deep/a/b/c/d/e/f/g%20x/h/i/j.txt');
  assert.equal(r.text, 'deep');
  // Chunked upload (no Content-Length).
  r = await new Promise((resolve, reject) => {
    const u = new URL(`${S.url}/solo/chunked/x.bin`);
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method: 'PUT',
      headers: { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' } },
    (res) => { const parts = []; res.on('data', (d) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(parts).toString() })); });
    req.on('error', reject);
    for (let i = 0; i < 10; i++) req.write(data.subarray(i * 30_000, (i + 1) * 30_000));
    req.end();
  });
  assert.equal(r.status, 201, r.text);
  r = await c.get('/solo/chunked/x.bin');
  assert.deepEqual(r.body, data);
});

test('text types are stored gzip: encoding info, Accept-Encoding, digest of the gzip bytes', async () => {
  expectStatus(await c.put('/gz'), 201);
  const text = Buffer.from('the quick brown fox jumps over the lazy dog\n'.repeat(2000));
  let r = await c.put('/gz/t/notes.txt', text, { headers: { 'content-type': 'text/plain' } });
  expectStatus(r, 201);
  r = await c.get('/gz/t?att_encoding_info=true');
  const st = r.json._attachments['notes.txt'];
  assert.equal(st.encoding, 'gzip');
  assert.equal(st.length, text.length);
  assert.ok(st.encoded_length < text.length / 10);
  r = await c.get('/gz/t');
  assert.equal(r.json._attachments['notes.txt'].encoding, undefined);
  r = await c.get('/gz/t/notes.txt');
  assert.deepEqual(r.body, text);
  assert.equal(r.headers['content-encoding'], undefined);
  r = await request(S.url, 'GET', '/gz/t/notes.txt', { headers: { 'accept-encoding': 'gzip' } });
  assert.equal(r.headers['content-encoding'], 'gzip');
  assert.equal(r.body.length, st.encoded_length);
  assert.equal(md5(r.body), st.digest);
  assert.deepEqual(zlib.gunzipSync(r.body), text);
  r = await c.get('/gz/t?attachments=true');
  assert.deepEqual(Buffer.from(r.json._attachments['notes.txt'].data, 'base64'), text);
});

test('reads: atts_since, _bulk_get, _all_docs and _changes with attachments=true', async () => {
  expectStatus(await c.put('/reads'), 201);
  const rev1 = expectStatus(await c.put('/reads/d', { _attachments: {
    a: { content_type: 'image/png', data: Buffer.from('AAA').toString('base64') } } }), 201).rev;
  const rev2 = expectStatus(await c.put('/reads/d', { _rev: rev1, _attachments: {
    a: { stub: true }, b: { content_type: 'image/png', data: Buffer.from('BBB').toString('base64') } } }), 201).rev;
  let r = await c.get(`/reads/d?atts_since=${encodeURIComponent(JSON.stringify([rev1]))}`);
  assert.equal(r.json._attachments.a.stub, true);
  assert.equal(r.json._attachments.b.data, Buffer.from('BBB').toString('base64'));
  r = await c.post('/reads/_bulk_get?revs=true&attachments=true', { docs: [
    { id: 'd', rev: rev2 }, { id: 'd', rev: rev2, atts_since: [rev1] }] });
  const [full, since] = r.json.results.map((x) => x.docs[0].ok);
  assert.equal(full._attachments.a.data, Buffer.from('AAA').toString('base64'));
  assert.equal(full._attachments.b.data, Buffer.from('BBB').toString('base64'));
  assert.equal(since._attachments.a.stub, true);
  assert.equal(since._attachments.b.data, Buffer.from('BBB').toString('base64'));
  r = await c.post('/reads/_bulk_get?revs=true', { docs: [{ id: 'd' }] });
  assert.equal(r.json.results[0].docs[0].ok._attachments.a.stub, true);
  r = await c.get('/reads/_all_docs?include_docs=true&attachments=true');
  assert.equal(r.json.rows[0].doc._attachments.a.data, Buffer.from('AAA').toString('base64'));
  assert.equal(r.json.rows[0].doc._rev, rev2);
  r = await c.get('/reads/_changes?include_docs=true&attachments=true');
  assert.equal(r.json.results[0].doc._attachments.b.data, Buffer.from('BBB').toString('base64'));
  r = await c.get('/reads/_all_docs?include_docs=true');
  assert.equal(r.json.rows[0].doc._attachments.a.stub, true);
  r = await c.get(`/reads/d?open_revs=all&attachments=true`);
  assert.equal(r.json[0].ok._attachments.b.data, Buffer.from('BBB').toString('base64'));
});

test('PouchDB pushes and pulls 0 B, 1 B, 1 MiB, 50 MiB, binary and text, with conflicts', async () => {
  const remote = new PouchDB(`${S.url}/pouch`);
  const local = memoryDb('att');
  const sizes = { empty: 0, one: 1, mib: 1 << 20, big: 50 << 20 };
  const made = {};
  for (const [name, n] of Object.entries(sizes)) {
    const bin = bytes(n, n + 3);
    const txt = Buffer.from('line of text\n'.repeat(Math.ceil(n / 13)).slice(0, n));
    made[name] = { bin, txt };
    await local.put({ _id: name, _attachments: {
      'b.bin': { content_type: 'application/octet-stream', data: bin },
      't.txt': { content_type: 'text/plain', data: txt } } });
  }
  const push = await local.replicate.to(remote);
  assert.equal(push.doc_write_failures, 0);
  for (const [name, { bin, txt }] of Object.entries(made)) {
    let r = await c.get(`/pouch/${name}/b.bin`);
    assert.equal(r.body.length, bin.length, name);
    assert.ok(r.body.equals(bin), name);
    r = await c.get(`/pouch/${name}/t.txt`);
    assert.ok(r.body.equals(txt), name);
  }
  // Pull into a fresh PouchDB.
  const back = memoryDb('att-back');
  const pull = await back.replicate.from(remote);
  assert.equal(pull.doc_write_failures, 0);
  for (const [name, { bin, txt }] of Object.entries(made)) {
    const b = await back.getAttachment(name, 'b.bin');
    assert.ok(Buffer.from(b).equals(bin), name);
    const t = await back.getAttachment(name, 't.txt');
    assert.ok(Buffer.from(t).equals(txt), name);
  }
  // A conflict where each side changes the attachment: both blobs are kept.
  const doc = await back.get('one');
  await back.put({ ...doc, _attachments: { ...doc._attachments,
    'b.bin': { content_type: 'application/octet-stream', data: Buffer.from('pouch side') } } });
  const rdoc = expectStatus(await c.get('/pouch/one'), 200);
  expectStatus(await c.put(`/pouch/one/b.bin?rev=${rdoc._rev}`, 'mimeo side',
    { headers: { 'content-type': 'application/octet-stream' } }), 201);
  await back.sync(remote);
  const leaves = expectStatus(await c.get('/pouch/one?open_revs=all&attachments=true'), 200);
  const datas = leaves.map((l) => Buffer.from(l.ok._attachments['b.bin'].data, 'base64').toString()).sort();
  assert.deepEqual(datas, ['mimeo side', 'pouch side']);
  expectStatus(await c.post('/pouch/_compact', {}), [200, 201, 202]);
  for (const l of leaves) {
    const r = await c.get(`/pouch/one/b.bin?rev=${l.ok._rev}`);
    assert.equal(r.status, 200);
  }
  const pulledDoc = await back.get('one', { conflicts: true });
  assert.equal(pulledDoc._conflicts.length, 1);
  await local.destroy();
  await back.destroy();
});

test('replication between local databases names the blobs it has: no byte is copied', async () => {
  expectStatus(await c.put('/lsrc'), 201);
  const big = bytes(5 << 20, 31);                          // several chunks, one flush
  const txt = Buffer.from('shared text\n'.repeat(5000));    // stored gzip-encoded
  let r = await c.put('/lsrc/d1', { _attachments: {
    'big.bin': { content_type: 'application/octet-stream', data: big.toString('base64') },
    't.txt': { content_type: 'text/plain', data: txt.toString('base64') } } });
  const rev1 = expectStatus(r, 201).rev;
  // A second revision with one attachment changed: both revisions' blobs travel.
  r = await c.put(`/lsrc/d1/small.bin?rev=${rev1}`, Buffer.from('small'),
    { headers: { 'content-type': 'application/octet-stream' } });
  expectStatus(r, 201);
  const before = await blobs();
  r = await c.post('/_replicate', { source: 'lsrc', target: 'ldst', create_target: true });
  assert.equal(expectStatus(r, 200).history[0].docs_written, 1, r.text);
  const after = await blobs();
  assert.equal(after.bytes_in, before.bytes_in, 'bytes went into the blob store');
  assert.equal(after.blobs, before.blobs);
  assert.equal(after.bytes, before.bytes);
  const src = expectStatus(await c.get('/lsrc/d1'), 200);
  const dst = expectStatus(await c.get('/ldst/d1?att_encoding_info=true'), 200);
  assert.equal(dst._rev, src._rev);
  for (const [name, want] of [['big.bin', big], ['t.txt', txt], ['small.bin', Buffer.from('small')]]) {
    assert.equal(dst._attachments[name].digest, src._attachments[name].digest, name);
    assert.equal(dst._attachments[name].revpos, src._attachments[name].revpos, name);
    const got = await c.get(`/ldst/d1/${name}`);
    assert.ok(got.body.equals(want), name);
  }
  assert.equal(dst._attachments['t.txt'].encoding, 'gzip');
  // The references are counted: with the source gone the target still reads every blob,
  // and with both gone the blobs are released.
  expectStatus(await c.delete('/lsrc'), 200);
  assert.ok((await c.get('/ldst/d1/big.bin')).body.equals(big));
  expectStatus(await c.delete('/ldst'), 200);
  const gone = await blobs();
  assert.equal(gone.blobs, before.blobs - 3);
});

test('content addressing: 1,000 documents carrying the same 1 MiB blob store it once', async () => {
  expectStatus(await c.put('/dedupe'), 201);
  const before = await blobs();
  const blob = bytes(1 << 20, 99);
  // 950 through the standalone API (raw bytes, four requests in flight) and 50 inline in
  // one _bulk_docs request: both paths name the same blob.
  let next = 0;
  const worker = async () => {
    while (next < 950) {
      const i = next++;
      const r = await c.put(`/dedupe/d${String(i).padStart(4, '0')}/same.bin`, blob,
        { headers: { 'content-type': 'application/octet-stream' } });
      assert.equal(r.status, 201, r.text);
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  const b64 = blob.toString('base64');
  const docs = [];
  for (let i = 950; i < 1000; i++) {
    docs.push({ _id: `d${String(i).padStart(4, '0')}`, _attachments: {
      'same.bin': { content_type: 'application/octet-stream', data: b64 } } });
  }
  const r0 = await c.post('/dedupe/_bulk_docs', { docs });
  assert.equal(r0.status, 201);
  assert.ok(r0.json.every((x) => x.ok), r0.text.slice(0, 300));
  const all = await c.get('/dedupe');
  assert.equal(all.json.doc_count, 1000);
  const afterPut = await blobs();
  assert.equal(afterPut.blobs - before.blobs, 1);
  assert.equal(afterPut.bytes - before.bytes, 1 << 20);
  const r = await c.get('/dedupe/d0999/same.bin');
  assert.ok(r.body.equals(blob));
  // Deleting the database releases it.
  expectStatus(await c.delete('/dedupe'), 200);
  const afterDelete = await blobs();
  assert.equal(afterDelete.blobs, before.blobs);
  assert.equal(afterDelete.bytes, before.bytes);
});

function anonKiB(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/RssAnon:\s+(\d+) kB/.exec(status)[1]);
}
/**
 * The peak of the server's anonymous resident memory, sampled while fn runs. Not VmHWM: that
 * also counts the pages of the LMDB map a download reads through (file-backed, the kernel's
 * to drop), which grow with the data and say nothing of what the process holds.
 */
async function anonPeakDuring(pid, fn) {
  let peak = anonKiB(pid);
  const timer = setInterval(() => {
    try { peak = Math.max(peak, anonKiB(pid)); } catch { /* gone */ }
  }, 10);
  try {
    const result = await fn();
    return { result, peak: Math.max(peak, anonKiB(pid)) };
  } finally {
    clearInterval(timer);
  }
}

test('a 256 MiB attachment streams in and out with memory held flat', async () => {
  const pid = S.proc?.pid;
  assert.ok(pid, 'the server runs here');
  expectStatus(await c.put('/big'), 201);
  const SIZE = 256 << 20;
  const piece = bytes(1 << 20, 5);
  const baseAnon = anonKiB(pid);
  const hash = crypto.createHash('md5');
  const { result: put, peak: peakUp } = await anonPeakDuring(pid, () => new Promise((resolve, reject) => {
    const u = new URL(`${S.url}/big/doc/huge.bin`);
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method: 'PUT',
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(SIZE) } },
    (res) => { const parts = []; res.on('data', (d) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(parts).toString() })); });
    req.on('error', reject);
    let sent = 0;
    const pump = () => {
      while (sent < SIZE) {
        const p = Buffer.from(piece);
        p.writeUInt32LE(sent >>> 20, 0);   // every MiB differs
        hash.update(p);
        sent += p.length;
        if (!req.write(p)) { req.once('drain', pump); return; }
      }
      req.end();
    };
    pump();
  }));
  assert.equal(put.status, 201, put.text);
  const digest = hash.digest('base64');
  // Download, streamed to a hash.
  const { result: got, peak: peakDown } = await anonPeakDuring(pid, () => new Promise((resolve, reject) => {
    http.get(`${S.url}/big/doc/huge.bin`, (res) => {
      const h = crypto.createHash('md5');
      let n = 0;
      res.on('data', (d) => { h.update(d); n += d.length; });
      res.on('end', () => resolve({ status: res.statusCode, n, digest: h.digest('base64'),
        etag: res.headers.etag }));
    }).on('error', reject);
  }));
  assert.equal(got.status, 200);
  assert.equal(got.n, SIZE);
  assert.equal(got.digest, digest);
  assert.equal(got.etag, `"${digest}"`);
  const growUp = (peakUp - baseAnon) / 1024;
  const growDown = (peakDown - baseAnon) / 1024;
  process.stdout.write(`# 256 MiB: peak anonymous memory growth upload ${growUp.toFixed(1)} MiB, ` +
    `download ${growDown.toFixed(1)} MiB (baseline ${(baseAnon / 1024).toFixed(1)} MiB)\n`);
  // Bounded by a few chunks and the allocator's slack, far below the 256 MiB moved.
  assert.ok(growUp < 48, `upload grew peak RSS by ${growUp} MiB`);
  assert.ok(growDown < 48, `download grew peak RSS by ${growDown} MiB`);
});

test('a cut upload leaves no blob and nothing pending', async () => {
  expectStatus(await c.put('/cut'), 201);
  const before = await blobs();
  await new Promise((resolve) => {
    const u = new URL(`${S.url}/cut/doc/part.bin`);
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method: 'PUT',
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(10 << 20) } });
    req.on('error', () => resolve());
    req.write(bytes(3 << 20, 11), () => setTimeout(() => { req.destroy(); resolve(); }, 300));
  });
  // The server notices the closed connection and discards the partial blob.
  const deadline = Date.now() + 10_000;
  let now;
  for (;;) {
    now = await blobs();
    if (now.pending === before.pending || Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(now.pending, before.pending);
  assert.equal(now.blobs, before.blobs);
  assertError(await c.get('/cut/doc'), 404, 'not_found');
});

test('compaction releases the blobs only old revisions named, and keeps the live ones', async () => {
  expectStatus(await c.put('/compact'), 201);
  const before = await blobs();
  const oldBytes = bytes(3 << 20, 41), newBytes = bytes(1000, 42), kept = bytes(500, 43);
  let r = await c.put('/compact/d', { _attachments: {
    'a.bin': { content_type: 'application/octet-stream', data: oldBytes.toString('base64') },
    'k.bin': { content_type: 'application/octet-stream', data: kept.toString('base64') } } });
  const rev1 = expectStatus(r, 201).rev;
  r = await c.put(`/compact/d/a.bin?rev=${rev1}`, newBytes,
    { headers: { 'content-type': 'application/octet-stream' } });
  const rev2 = expectStatus(r, 201).rev;
  assert.equal((await blobs()).blobs - before.blobs, 3);
  expectStatus(await c.post('/compact/_compact', {}), [200, 201, 202]);
  // Compaction may run in the background: poll until the old revision's blob is gone.
  const deadline = Date.now() + 20_000;
  let now;
  for (;;) {
    now = await blobs();
    if (now.blobs - before.blobs === 2 || Date.now() > deadline) break;
    await new Promise((res) => setTimeout(res, 100));
  }
  assert.equal(now.blobs - before.blobs, 2, 'the replaced 3 MiB blob is released');
  assert.equal(now.bytes - before.bytes, newBytes.length + kept.length);
  assert.ok((await c.get(`/compact/d/a.bin?rev=${rev2}`)).body.equals(newBytes));
  assert.ok((await c.get('/compact/d/k.bin')).body.equals(kept));
  assertError(await c.get(`/compact/d/a.bin?rev=${rev1}`), 404, 'not_found');
});

test('a crash in the middle of an upload loses no referenced blob and leaves nothing pending', async () => {
  const s = await startServer();
  try {
    const sc = client(s.url);
    expectStatus(await sc.put('/crash'), 201);
    const keep = bytes(5 << 20, 51);   // several flushes: committed chunks, then published
    expectStatus(await sc.put('/crash/keep/k.bin', keep,
      { headers: { 'content-type': 'application/octet-stream' } }), 201);
    // A second upload, killed with -9 once several of its buffers are committed pending.
    await new Promise((resolve) => {
      const u = new URL(`${s.url}/crash/cut/c.bin`);
      const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method: 'PUT',
        headers: { 'content-type': 'application/octet-stream', 'content-length': String(64 << 20) } });
      req.on('error', () => resolve());
      const piece = bytes(1 << 20, 52);
      let sent = 0;
      const more = () => {
        while (sent < (12 << 20)) {
          sent += piece.length;
          if (!req.write(piece)) { req.once('drain', more); return; }
        }
        setTimeout(async () => { await s.kill9(); req.destroy(); resolve(); }, 500);
      };
      more();
    });
    await s.restart();
    const sc2 = client(s.url);   // a new port
    const st = expectStatus(await sc2.get('/_node/_local/_blobs'), 200);
    assert.equal(st.pending, 0, 'the cut upload was swept at open');
    assert.equal(st.blobs, 1);
    assert.equal(st.bytes, keep.length);
    const got = await sc2.get('/crash/keep/k.bin');
    assert.equal(got.status, 200);
    assert.ok(got.body.equals(keep));
    assertError(await sc2.get('/crash/cut'), 404, 'not_found');
  } finally {
    await s.stop();
  }
});
