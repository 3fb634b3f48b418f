// mimeo's replicator against pouchdb-server 4.2.0 (--in-memory): mimeo → pouchdb-server,
// pouchdb-server → pouchdb-server driven by mimeo (both ends remote), and pouchdb-server →
// mimeo, with 20,000 documents including conflicting branches and deletions. After each leg
// both ends hold the same leaves, winners, _conflicts, deleted leaves and bodies.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import {
  startPouchServer, runReplicate, postReplicate, makeDataset, loadDataset, snapshot,
  diffSnapshots, compareOpenRevs,
  SKIP_UNWIRED,
} from './lib/repl_peers.mjs';

const N = 20_000;
const revs = makeDataset(N, 7);
let M;   // mimeo
let P;   // pouchdb-server
let srcSnap;

const sampleIds = ['doc000000', 'doc000005', 'doc000007', 'doc000010', 'doc000013',
  'doc019990', 'doc019957'];

before(async () => {
  if (SKIP_UNWIRED) return;
  [M, P] = await Promise.all([startServer(), startPouchServer()]);
  await loadDataset(M.url, 'src', revs);
  srcSnap = await snapshot(M.url, 'src');
  assert.equal(srcSnap.size, N);
});

after(async () => {
  await M?.stop();
  await P?.stop();
});

async function assertSameAsSource(url, db) {
  const snap = await snapshot(url, db);
  assert.deepEqual(diffSnapshots(srcSnap, snap), []);
  assert.equal(await compareOpenRevs(M.url, 'src', url, db, sampleIds), null);
}

test('mimeo → pouchdb-server (CLI)', { skip: SKIP_UNWIRED }, async () => {
  const t0 = Date.now();
  const r = await runReplicate([`${M.url}/src`, `${P.url}/p1`, '--create-target']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.json.history[0].docs_written, revs.length);
  assert.equal(r.json.history[0].doc_write_failures, 0);
  process.stdout.write(`# mimeo→pouchdb-server: ${Date.now() - t0} ms\n`);
  await assertSameAsSource(P.url, 'p1');
});

test('pouchdb-server → pouchdb-server driven by mimeo (remote to remote)', { skip: SKIP_UNWIRED }, async () => {
  const t0 = Date.now();
  const r = await postReplicate(M.url, { source: `${P.url}/p1`, target: `${P.url}/p2`, create_target: true });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.history[0].docs_written, revs.length);
  process.stdout.write(`# pouchdb-server→pouchdb-server: ${Date.now() - t0} ms\n`);
  await assertSameAsSource(P.url, 'p2');
  const again = await postReplicate(M.url, { source: `${P.url}/p1`, target: `${P.url}/p2` });
  assert.deepEqual(again.json, { ok: true, no_changes: true });
});

test('pouchdb-server → mimeo (local target)', { skip: SKIP_UNWIRED }, async () => {
  const t0 = Date.now();
  const r = await postReplicate(M.url, { source: `${P.url}/p2`, target: 'back', create_target: true });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.history[0].docs_written, revs.length);
  process.stdout.write(`# pouchdb-server→mimeo: ${Date.now() - t0} ms\n`);
  await assertSameAsSource(M.url, 'back');
});
