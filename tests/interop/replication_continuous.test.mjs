// Continuous replication and the persistent surfaces: a continuous POST /_replicate job
// delivers new source writes to the target within a second and shows in /_active_tasks and
// /_scheduler/jobs; cancelling stops it; a _replicator document starts a job that survives a
// restart of the node and stops when the document is deleted; a one-shot _replicator job
// writes "_replication_state":"completed" back.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import { request } from './lib/http.mjs';
import { waitFor, postReplicate, SKIP_UNWIRED,
} from './lib/repl_peers.mjs';

let S;   // source node
let T;   // target node (runs the jobs)

before(async () => {
  if (SKIP_UNWIRED) return;
  [S, T] = await Promise.all([startServer(), startServer()]);
  for (const db of ['c', 'r', 'o']) {
    assert.equal((await request(S.url, 'PUT', `/${db}`)).status, 201);
  }
});

after(async () => {
  await S?.stop();
  await T?.stop();
});

async function present(url, db, id) {
  return (await request(url, 'GET', `/${db}/${id}`)).status === 200;
}

test('continuous: writes reach the target within a second; cancel stops the job', { skip: SKIP_UNWIRED }, async () => {
  await request(S.url, 'PUT', '/c/before', { body: { v: 0 } });
  const body = { source: `${S.url}/c`, target: 'c', continuous: true, create_target: true };
  const r = await postReplicate(T.url, body);
  assert.equal(r.status, 202, r.text);
  assert.equal(r.json.ok, true);
  assert.match(r.json._local_id, /^[0-9a-f]{32}\+continuous$/);
  await waitFor(() => present(T.url, 'c', 'before'), { what: 'the first document' });

  const lat = [];
  for (let i = 0; i < 15; i++) {
    const t0 = Date.now();
    const w = await request(S.url, 'PUT', `/c/live${i}`, { body: { i } });
    assert.equal(w.status, 201);
    await waitFor(() => present(T.url, 'c', `live${i}`), { timeout: 1000, interval: 5, what: `live${i} on the target` });
    lat.push(Date.now() - t0);
  }
  lat.sort((a, b) => a - b);
  process.stdout.write(`# continuous delivery latency: median ${lat[7]} ms, max ${lat[14]} ms\n`);

  const tasks = await request(T.url, 'GET', '/_active_tasks');
  assert.equal(tasks.status, 200);
  const task = tasks.json.find((t) => t.replication_id === r.json._local_id);
  assert.ok(task, tasks.text);
  assert.equal(task.type, 'replication');
  assert.equal(task.continuous, true);
  assert.ok(task.docs_written >= 16, tasks.text);
  for (const k of ['docs_read', 'changes_pending', 'checkpointed_source_seq', 'doc_write_failures']) {
    assert.ok(k in task, k);
  }
  const jobs = await request(T.url, 'GET', '/_scheduler/jobs');
  assert.equal(jobs.status, 200);
  assert.ok(jobs.json.jobs.some((j) => j.id === r.json._local_id), jobs.text);

  const c = await postReplicate(T.url, { ...body, cancel: true });
  assert.equal(c.status, 200, c.text);
  assert.equal(c.json._local_id, r.json._local_id);
  await request(S.url, 'PUT', '/c/after', { body: {} });
  await new Promise((res) => setTimeout(res, 1000));
  assert.equal(await present(T.url, 'c', 'after'), false);
  const gone = await postReplicate(T.url, { ...body, cancel: true });
  assert.equal(gone.status, 404);
});

test('continuous push from a local source follows its writes', { skip: SKIP_UNWIRED }, async () => {
  assert.equal((await request(S.url, 'PUT', '/push')).status, 201);
  const body = { source: 'push', target: `${T.url}/push`, continuous: true, create_target: true };
  const r = await postReplicate(S.url, body);
  assert.equal(r.status, 202, r.text);
  const lat = [];
  for (let i = 0; i < 10; i++) {
    const t0 = Date.now();
    await request(S.url, 'PUT', `/push/p${i}`, { body: { i } });
    await waitFor(() => present(T.url, 'push', `p${i}`), { timeout: 1000, interval: 5, what: `p${i} on the target` });
    lat.push(Date.now() - t0);
  }
  lat.sort((a, b) => a - b);
  process.stdout.write(`# continuous push latency: median ${lat[5]} ms, max ${lat[9]} ms\n`);
  const c = await postReplicate(S.url, { ...body, cancel: true });
  assert.equal(c.status, 200, c.text);
});

test('a _replicator job survives a node restart and stops when its document is deleted', { skip: SKIP_UNWIRED }, async () => {
  await request(S.url, 'PUT', '/r/one', { body: { v: 1 } });
  const put = await request(T.url, 'PUT', '/_replicator/job1', {
    body: { source: `${S.url}/r`, target: 'r', continuous: true, create_target: true },
  });
  assert.equal(put.status, 201, put.text);
  await waitFor(() => present(T.url, 'r', 'one'), { what: 'the job to copy "one"' });
  const docs = await request(T.url, 'GET', '/_scheduler/docs');
  const d = docs.json.docs.find((x) => x.doc_id === 'job1');
  assert.ok(d, docs.text);
  assert.equal(d.database, '_replicator');
  assert.equal(d.state, 'running');
  const one = await request(T.url, 'GET', '/_scheduler/docs/_replicator/job1');
  assert.equal(one.status, 200);
  assert.equal(one.json.doc_id, 'job1');

  // A second document for the same replication fails instead of running it twice.
  const dup = await request(T.url, 'PUT', '/_replicator/job1dup', {
    body: { source: `${S.url}/r`, target: 'r', continuous: true, create_target: true },
  });
  assert.equal(dup.status, 201);
  const dupDoc = await waitFor(async () => {
    const g = await request(T.url, 'GET', '/_replicator/job1dup');
    return g.json._replication_state === 'failed' ? g.json : null;
  }, { what: 'the duplicate to fail' });
  assert.match(dupDoc._replication_state_reason, /duplicate/);

  await T.restart();
  await request(S.url, 'PUT', '/r/two', { body: { v: 2 } });
  await waitFor(() => present(T.url, 'r', 'two'), { what: 'the restarted job to copy "two"' });

  const cur = await request(T.url, 'GET', '/_replicator/job1');
  const del = await request(T.url, 'DELETE', `/_replicator/job1?rev=${cur.json._rev}`);
  assert.equal(del.status, 200, del.text);
  await waitFor(async () => {
    const t = await request(T.url, 'GET', '/_active_tasks');
    return !t.json.some((x) => x.doc_id === 'job1');
  }, { what: 'the job to stop' });
  await request(S.url, 'PUT', '/r/three', { body: { v: 3 } });
  await new Promise((res) => setTimeout(res, 1000));
  assert.equal(await present(T.url, 'r', 'three'), false);
});

test('a one-shot _replicator job completes and says so in its document', { skip: SKIP_UNWIRED }, async () => {
  for (let i = 0; i < 50; i++) await request(S.url, 'PUT', `/o/d${i}`, { body: { i } });
  const put = await request(T.url, 'PUT', '/_replicator/once', {
    body: { source: `${S.url}/o`, target: 'o', create_target: true },
  });
  assert.equal(put.status, 201, put.text);
  const doc = await waitFor(async () => {
    const g = await request(T.url, 'GET', '/_replicator/once');
    return g.json._replication_state === 'completed' ? g.json : null;
  }, { what: '_replication_state completed' });
  assert.equal(doc._replication_stats.docs_written, 50);
  assert.match(doc._replication_state_time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  assert.equal((await request(T.url, 'GET', '/o')).json.doc_count, 50);
  const s = await request(T.url, 'GET', '/_scheduler/docs/_replicator/once');
  assert.equal(s.json.state, 'completed');

  const bad = await request(T.url, 'PUT', '/_replicator/broken', { body: { source: 'o' } });
  assert.equal(bad.status, 201);
  const failed = await waitFor(async () => {
    const g = await request(T.url, 'GET', '/_replicator/broken');
    return g.json._replication_state === 'failed' ? g.json : null;
  }, { what: '_replication_state failed' });
  assert.ok(failed._replication_state_reason);
});
