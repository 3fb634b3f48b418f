// mimeo's replicator between two mimeo nodes: a 20,000-document data set with conflicting
// branches and deletions arrives identical (leaves, winners, _conflicts, deleted leaves);
// a second run has nothing to do; a replication cut half-way by kill -9 of the target resumes
// from its checkpoint; a target that goes away and comes back is waited for; unreachable and
// missing peers fail fast with a JSON error; the CLI reports the same.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import { request } from './lib/http.mjs';
import {
  freePort, waitFor, runReplicate, postReplicate, makeDataset, loadDataset, snapshot,
  diffSnapshots, compareOpenRevs,
  SKIP_UNWIRED,
} from './lib/repl_peers.mjs';

const N = 20_000;
const revs = makeDataset(N);
let A;            // source node
let B;            // target node, on a fixed port so that it comes back at the same URL
let srcSnap;

const sampleIds = ['doc000000', 'doc000005', 'doc000007', 'doc000010', 'doc000011',
  'doc019990', 'doc019995', 'doc012345'];

before(async () => {
  if (SKIP_UNWIRED) return;
  A = await startServer();
  B = await startServer({ args: ['--port', String(await freePort())] });
  await loadDataset(A.url, 'src', revs);
  srcSnap = await snapshot(A.url, 'src');
  assert.equal(srcSnap.size, N);
});

after(async () => {
  await A?.stop();
  await B?.stop();
});

async function assertSame(urlB, dbB) {
  const snap = await snapshot(urlB, dbB);
  assert.deepEqual(diffSnapshots(srcSnap, snap), []);
  assert.equal(await compareOpenRevs(A.url, 'src', urlB, dbB, sampleIds), null);
}

async function docCount(url, db) {
  const r = await request(url, 'GET', `/${db}`);
  return r.status === 200 ? r.json.doc_count + r.json.doc_del_count : 0;
}

test('one-shot remote → local via POST /_replicate copies every revision', { skip: SKIP_UNWIRED }, async () => {
  const t0 = Date.now();
  const r = await postReplicate(B.url, { source: `${A.url}/src`, target: 't1', create_target: true });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.ok, true);
  assert.equal(r.json.replication_id_version, 4);
  assert.match(r.json.session_id, /^[0-9a-f]{32}$/);
  const h = r.json.history[0];
  assert.equal(h.docs_written, revs.length);
  assert.equal(h.docs_read, revs.length);
  assert.equal(h.doc_write_failures, 0);
  assert.equal(h.missing_found, revs.length);
  assert.match(h.start_time, /^[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT$/);
  process.stdout.write(`# mimeo→mimeo ${revs.length} revisions in ${Date.now() - t0} ms (ASan)\n`);
  await assertSame(B.url, 't1');

  // Both ends hold the same checkpoint, in CouchDB's format.
  const id = (await request(B.url, 'GET', '/t1/_local_docs')).json?.rows?.[0]?.id;
  if (id) {
    const tc = await request(B.url, 'GET', `/t1/${id}`);
    assert.equal(tc.json.session_id, r.json.session_id);
  }

  const again = await postReplicate(B.url, { source: `${A.url}/src`, target: 't1' });
  assert.equal(again.status, 200);
  assert.deepEqual(again.json, { ok: true, no_changes: true });
});

test('the CLI replicates remote → remote, with a doc_ids filter', { skip: SKIP_UNWIRED }, async () => {
  const r = await runReplicate([`${A.url}/src`, `${B.url}/t2`, '--create-target',
    '--doc-ids', 'doc000010,doc000005,doc000123']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.json.ok, true);
  const all = await request(B.url, 'GET', '/t2/_changes?style=all_docs');
  assert.deepEqual(all.json.results.map((x) => x.id).sort(),
    ['doc000005', 'doc000010', 'doc000123']);
  assert.equal(await compareOpenRevs(A.url, 'src', B.url, 't2', ['doc000010', 'doc000005']), null);
});

test('a replication cut by kill -9 of the target resumes from its checkpoint', { skip: SKIP_UNWIRED }, async () => {
  // Checkpoint often and give up fast, so the first run dies soon after the target.
  const first = postReplicate(A.url, {
    source: 'src', target: `${B.url}/t3`, create_target: true,
    checkpoint_interval: 100, retries_per_request: 1,
  });
  await waitFor(async () => (await docCount(B.url, 't3')) >= N * 0.5,
    { timeout: 60_000, interval: 10, what: 'half of the documents on the target' });
  await B.kill9();
  const r1 = await first;
  assert.equal(r1.status, 500, r1.text);
  assert.ok(r1.json.error, r1.text);
  await B.restart();
  const had = await docCount(B.url, 't3');
  assert.ok(had > 0 && had < N, `target holds ${had} docs after the cut`);

  const r2 = await postReplicate(A.url, { source: 'src', target: `${B.url}/t3` });
  assert.equal(r2.status, 200, r2.text);
  const h = r2.json.history[0];
  process.stdout.write(`# resumed from seq ${h.start_last_seq}: second run read ${h.docs_read} docs, ` +
    `checked ${h.missing_checked} revisions (of ${revs.length})\n`);
  assert.ok(h.start_last_seq > 0, `resumed from ${h.start_last_seq}`);
  assert.ok(h.missing_checked < revs.length * 0.7,
    `second run checked ${h.missing_checked} revisions`);
  assert.ok(h.docs_read < N * 0.7, `second run read ${h.docs_read} docs`);
  await assertSame(B.url, 't3');
});

test('the target going away mid-replication is retried until it is back', { skip: SKIP_UNWIRED }, async () => {
  const run = postReplicate(A.url, { source: 'src', target: `${B.url}/t4`, create_target: true });
  await waitFor(async () => (await docCount(B.url, 't4')) >= N * 0.3,
    { timeout: 60_000, interval: 10, what: 'a third of the documents on the target' });
  await B.kill9();
  await new Promise((r) => setTimeout(r, 300));
  await B.restart();
  const r = await run;
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.ok, true);
  await assertSame(B.url, 't4');
});

test('an unreachable peer or a missing database fails fast with a JSON error', { skip: SKIP_UNWIRED }, async () => {
  const dead = await freePort();
  let t0 = Date.now();
  const r = await postReplicate(B.url, { source: `http://127.0.0.1:${dead}/x`, target: 't5' });
  assert.equal(r.status, 500);
  assert.equal(r.json.error, 'db_not_found');
  assert.match(r.json.reason, /127\.0\.0\.1/);
  assert.ok(Date.now() - t0 < 15_000, `took ${Date.now() - t0} ms`);

  t0 = Date.now();
  const m = await postReplicate(B.url, { source: `${A.url}/nosuch`, target: 't5' });
  assert.equal(m.json.error, 'db_not_found');
  assert.ok(Date.now() - t0 < 5_000);

  const nt = await postReplicate(B.url, { source: `${A.url}/src`, target: 'no_such_target' });
  assert.equal(nt.json.error, 'db_not_found');

  const bad = await postReplicate(B.url, { source: `${A.url}/src` });
  assert.equal(bad.status, 400);
  assert.equal(bad.json.error, 'bad_request');

  const c = await runReplicate([`http://127.0.0.1:${dead}/x`, `${B.url}/t5`]);
  assert.notEqual(c.code, 0);
  assert.equal(c.stderr.trim().split('\n').length, 1, c.stderr);
  assert.match(c.stderr, /db_not_found/);
});

test('a target that answers 413 gets smaller batches', { skip: SKIP_UNWIRED }, async () => {
  // 64 KiB request cap: a 500-change batch of these documents is about 100 KiB.
  const small = await startServer({ args: ['--set', 'httpd.max_request_size=64K'] });
  try {
    const r = await postReplicate(A.url, { source: 'src', target: `${small.url}/s413`, create_target: true, doc_ids: Array.from({ length: 600 }, (_, i) => `doc${String(i).padStart(6, '0')}`) });
    assert.equal(r.status, 200, r.text);
    const h = r.json.history[0];
    assert.equal(h.doc_write_failures, 0);
    assert.equal(h.docs_written, h.missing_found);
    assert.ok(h.docs_written >= 600);
  } finally {
    await small.stop();
  }
});
