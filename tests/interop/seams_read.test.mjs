// The read side's seams: feeds that end when their database is deleted, paging that the
// library owns (descending doc_ids feeds, keys in descending order), open_revs with latest,
// CouchDB's errors for filters and keys, ids that contain NUL, and replies that stream with
// bounded memory however often a request names a large document.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startServer } from './lib/server.mjs';
import { uniqueDbName, waitFor } from './lib/util.mjs';

let server;

before(async () => {
  // ASan keeps freed memory in quarantine (256 MB by default), which would hide whether a
  // reply streams: keep it small so RSS measures what the server holds.
  process.env.ASAN_OPTIONS = 'abort_on_error=0:detect_leaks=1:quarantine_size_mb=8';
  server = await startServer();
});
after(() => server?.stop());

const json = { 'Content-Type': 'application/json' };

async function newDb(prefix) {
  const db = `${server.url}/${uniqueDbName(prefix)}`;
  assert.equal((await fetch(db, { method: 'PUT' })).status, 201);
  return db;
}

async function bulk(db, docs) {
  const res = await fetch(`${db}/_bulk_docs`, { method: 'POST', headers: json, body: JSON.stringify({ docs }) });
  assert.equal(res.status, 201);
  return res.json();
}

/** CPU seconds the server process has used so far (utime + stime). */
function cpuSeconds() {
  const stat = fs.readFileSync(`/proc/${server.proc.pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** The server's peak resident set (VmHWM) in bytes. */
function peakRss() {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${server.proc.pid}/status`, 'utf8'));
  return Number(m[1]) * 1024;
}

/** Resets the peak RSS mark to the current RSS (Linux: write 5 to clear_refs). */
function resetPeakRss() {
  try { fs.writeFileSync(`/proc/${server.proc.pid}/clear_refs`, '5'); return true; } catch { return false; }
}

for (const feed of ['longpoll', 'continuous', 'eventsource']) {
  test(`a ${feed} feed ends when its database is deleted, and stops using CPU`, async () => {
    const db = await newDb(`gone_${feed}`);
    const started = Date.now();
    const res = await fetch(`${db}/_changes?feed=${feed}&since=now&timeout=30000`,
      { signal: AbortSignal.timeout(25_000) });
    assert.equal(res.status, 200);
    const text = res.text();
    await new Promise((r) => setTimeout(r, 300));
    assert.equal((await fetch(db, { method: 'DELETE' })).status, 200);
    const body = await text;
    const took = Date.now() - started;
    assert.ok(took < 10_000, `the feed ended only after ${took} ms`);
    if (feed === 'longpoll') assert.deepEqual(JSON.parse(body).results, []);
    // Nothing may keep spinning after the feed ended.
    const cpu0 = cpuSeconds();
    await new Promise((r) => setTimeout(r, 1000));
    const used = cpuSeconds() - cpu0;
    assert.ok(used < 0.5, `the server used ${used} s of CPU in 1 s while idle`);
  });
}

test('a continuous local replication whose source is deleted does not spin', async () => {
  const src = uniqueDbName('repl_src');
  const tgt = uniqueDbName('repl_tgt');
  assert.equal((await fetch(`${server.url}/${src}`, { method: 'PUT' })).status, 201);
  await bulk(`${server.url}/${src}`, [{ _id: 'a' }]);
  const body = { source: src, target: tgt, create_target: true, continuous: true };
  const res = await fetch(`${server.url}/_replicate`, { method: 'POST', headers: json, body: JSON.stringify(body) });
  assert.equal(res.status, 202);
  await waitFor(async () => (await fetch(`${server.url}/${tgt}/a`)).status === 200,
    { message: 'the first document replicated' });
  // The job now long-polls the source's feed (for a few seconds at a time); delete the
  // source under it early in that wait.
  await new Promise((r) => setTimeout(r, 100));
  const cpu0 = cpuSeconds();
  assert.equal((await fetch(`${server.url}/${src}`, { method: 'DELETE' })).status, 200);
  await new Promise((r) => setTimeout(r, 2500));
  const used = cpuSeconds() - cpu0;
  await fetch(`${server.url}/_replicate`, { method: 'POST', headers: json, body: JSON.stringify({ ...body, cancel: true }) });
  assert.ok(used < 0.4, `the server used ${used} s of CPU in 2.5 s with a deleted source`);
});

test('a descending _doc_ids feed with more matches than a page ends, each row once', async () => {
  const db = await newDb('desc_ids');
  const N = 1200;
  const docs = [];
  for (let i = 0; i < N; i++) docs.push({ _id: `d${String(i).padStart(5, '0')}` });
  await bulk(db, docs);
  const doc_ids = docs.map((d) => d._id);
  const res = await fetch(`${db}/_changes?filter=_doc_ids&descending=true`, {
    method: 'POST', headers: json, body: JSON.stringify({ doc_ids }), signal: AbortSignal.timeout(30_000),
  });
  assert.equal(res.status, 200);
  const out = await res.json();
  const seqs = out.results.map((r) => r.seq);
  assert.equal(seqs.length, N);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => b - a));
  assert.equal(new Set(out.results.map((r) => r.id)).size, N);
  assert.equal(out.last_seq, 1);

  const limited = await (await fetch(`${db}/_changes?filter=_doc_ids&descending=true&limit=700`, {
    method: 'POST', headers: json, body: JSON.stringify({ doc_ids }), signal: AbortSignal.timeout(30_000),
  })).json();
  assert.equal(limited.results.length, 700);
  assert.equal(limited.results[0].seq, N);
  assert.equal(limited.last_seq, N - 699);
});

test('_all_docs with keys and descending=true reverses the whole list of keys', async () => {
  const db = await newDb('keys_desc');
  const N = 1100;
  const docs = [];
  for (let i = 0; i < N; i += 2) docs.push({ _id: `k${String(i).padStart(5, '0')}` });
  await bulk(db, docs);
  const keys = [];
  for (let i = 0; i < N; i++) keys.push(`k${String(i).padStart(5, '0')}`);
  const res = await fetch(`${db}/_all_docs?descending=true`, { method: 'POST', headers: json, body: JSON.stringify({ keys }) });
  assert.equal(res.status, 200);
  const out = await res.json();
  assert.equal(out.rows.length, N);
  assert.deepEqual(out.rows.map((r) => r.key), [...keys].reverse());
  assert.equal(out.rows[0].error, 'not_found');           // k01099: odd, missing
  assert.ok(out.rows[1].value.rev);                         // k01098: present
  const page = await (await fetch(`${db}/_all_docs?descending=true&skip=600&limit=3`, {
    method: 'POST', headers: json, body: JSON.stringify({ keys }),
  })).json();
  assert.deepEqual(page.rows.map((r) => r.key), [...keys].reverse().slice(600, 603));
});

test('open_revs with latest lists a leaf once however many of its ancestors are named', async () => {
  const db = await newDb('latest');
  let r = await (await fetch(`${db}/x`, { method: 'PUT', headers: json, body: '{"v":1}' })).json();
  const rev1 = r.rev;
  r = await (await fetch(`${db}/x`, { method: 'PUT', headers: json, body: JSON.stringify({ _rev: rev1, v: 2 }) })).json();
  const rev2 = r.rev;
  r = await (await fetch(`${db}/x`, { method: 'PUT', headers: json, body: JSON.stringify({ _rev: rev2, v: 3 }) })).json();
  const rev3 = r.rev;
  const q = encodeURIComponent(JSON.stringify([rev1, rev2, rev3]));
  const res = await fetch(`${db}/x?open_revs=${q}&latest=true`, { headers: { Accept: 'application/json' } });
  assert.equal(res.status, 200);
  const out = await res.json();
  assert.equal(out.length, 1);
  assert.equal(out[0].ok._rev, rev3);
  // Multipart (CouchDB's replicator) gives the same single part.
  const mp = await fetch(`${db}/x?open_revs=${q}&latest=true`, { headers: { Accept: 'multipart/mixed' } });
  assert.equal(mp.status, 200);
  const text = await mp.text();
  assert.equal(text.split(rev3).length - 1, 1);
  assert.equal(text.split('Content-Type: application/json').length - 1, 1);
});

test('a _changes filter naming a missing design document or filter is 404 not_found', async () => {
  const db = await newDb('filters');
  let res = await fetch(`${db}/_changes?filter=nope/f`);
  assert.equal(res.status, 404);
  assert.deepEqual(await res.json(), { error: 'not_found', reason: 'missing' });
  assert.equal((await fetch(`${db}/_design/app`, { method: 'PUT', headers: json, body: '{"views":{}}' })).status, 201);
  res = await fetch(`${db}/_changes?filter=app/f`);
  assert.equal(res.status, 404);
  assert.deepEqual(await res.json(), { error: 'not_found', reason: 'missing json key: filters' });
  assert.equal((await fetch(`${db}/_design/other`, {
    method: 'PUT', headers: json, body: JSON.stringify({ filters: { g: 'function(doc){return true}' } }),
  })).status, 201);
  res = await fetch(`${db}/_changes?filter=other/f`);
  assert.equal(res.status, 404);
  assert.deepEqual(await res.json(), { error: 'not_found', reason: 'missing json key: f' });
  res = await fetch(`${db}/_changes?filter=nonsense`);
  assert.equal(res.status, 400);
  assert.equal((await res.json()).error, 'bad_request');
});

test('POST _all_docs with keys and key/startkey/endkey in the query is 400 query_parse_error', async () => {
  const db = await newDb('keys_key');
  for (const q of ['key=%22a%22', 'startkey=%22a%22', 'endkey=%22b%22', 'start_key=%22a%22', 'end_key=%22b%22']) {
    const res = await fetch(`${db}/_all_docs?${q}`, { method: 'POST', headers: json, body: '{"keys":["a"]}' });
    assert.equal(res.status, 400, q);
    assert.deepEqual(await res.json(), {
      error: 'query_parse_error', reason: '`keys` is incompatible with `key`, `start_key` and `end_key`',
    });
  }
  // An empty keys list is no conflict (CouchDB).
  const ok = await fetch(`${db}/_all_docs?key=%22a%22`, { method: 'POST', headers: json, body: '{"keys":[]}' });
  assert.equal(ok.status, 200);
});

test('an id containing NUL keeps its length in replies, Location and rows', async () => {
  const db = await newDb('nul');
  const res = await fetch(`${db}/a%00b`, { method: 'PUT', headers: json, body: '{"v":1}' });
  assert.equal(res.status, 201);
  const out = await res.json();
  assert.equal(out.id, 'a\u0000b');
  assert.match(res.headers.get('location'), /\/a%00b$/);
  const doc = await (await fetch(`${db}/a%00b`)).json();
  assert.equal(doc._id, 'a\u0000b');
  assert.equal(res.headers.get('etag'), `"${out.rev}"`);
  const all = await (await fetch(`${db}/_all_docs?include_docs=true`)).json();
  assert.deepEqual(all.rows.map((r) => [r.id, r.key, r.doc._id]), [['a\u0000b', 'a\u0000b', 'a\u0000b']]);
  const ch = await (await fetch(`${db}/_changes?include_docs=true`)).json();
  assert.deepEqual(ch.results.map((r) => [r.id, r.doc._id]), [['a\u0000b', 'a\u0000b']]);
  const keys = await (await fetch(`${db}/_all_docs`, { method: 'POST', headers: json, body: '{"keys":["a\\u0000b"]}' })).json();
  assert.equal(keys.rows[0].id, 'a\u0000b');
});

test('POST /db with an _id containing NUL answers the whole id, in the body and Location', async () => {
  const db = await newDb('nulpost');
  const res = await fetch(db, { method: 'POST', headers: json, body: '{"_id":"n\\u0000l","v":1}' });
  assert.equal(res.status, 201);
  const out = await res.json();
  assert.equal(out.id, 'n\u0000l');
  assert.match(res.headers.get('location'), /\/n%00l$/);
  const doc = await (await fetch(`${db}/n%00l`)).json();
  assert.equal(doc._id, 'n\u0000l');
  assert.equal(doc._rev, out.rev);
});

test('_bulk_get and _all_docs keys stream a large document named many times in bounded memory', async (t) => {
  if (!resetPeakRss()) t.skip('cannot reset the peak RSS mark on this kernel');
  const db = await newDb('bigreply');
  const big = 'x'.repeat(1024 * 1024);
  assert.equal((await fetch(`${db}/big`, { method: 'PUT', headers: json, body: JSON.stringify({ big }) })).status, 201);
  const TIMES = 600;  // ~600 MB of reply from a ~20 KB request
  const LIMIT = 200 * 1024 * 1024;

  async function drain(res) {
    assert.equal(res.status, 200);
    let bytes = 0;
    for await (const chunk of res.body) bytes += chunk.length;
    return bytes;
  }

  resetPeakRss();
  const base = peakRss();
  const docs = Array.from({ length: TIMES }, () => ({ id: 'big' }));
  let bytes = await drain(await fetch(`${db}/_bulk_get?revs=true`, { method: 'POST', headers: json, body: JSON.stringify({ docs }) }));
  assert.ok(bytes > TIMES * 1024 * 1024);
  let grew = peakRss() - base;
  assert.ok(grew < LIMIT, `_bulk_get raised peak RSS by ${Math.round(grew / 1048576)} MB`);

  resetPeakRss();
  const base2 = peakRss();
  const keys = Array.from({ length: TIMES }, () => 'big');
  bytes = await drain(await fetch(`${db}/_all_docs?include_docs=true`, { method: 'POST', headers: json, body: JSON.stringify({ keys }) }));
  assert.ok(bytes > TIMES * 1024 * 1024);
  grew = peakRss() - base2;
  assert.ok(grew < LIMIT, `_all_docs keys raised peak RSS by ${Math.round(grew / 1048576)} MB`);
});
