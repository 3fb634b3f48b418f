// The replication scheduler ([replicator] max_jobs, interval): jobs beyond max_jobs wait as
// "pending" in /_scheduler/docs and /_scheduler/jobs instead of being refused, start when a
// slot frees, and take turns with running continuous jobs every interval (the longest
// running one makes way, shown as a "stopped" event in its history).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import { request } from './lib/http.mjs';
import { waitFor } from './lib/repl_peers.mjs';

let S;

async function makeDb(db, docs = 0) {
  assert.equal((await request(S.url, 'PUT', `/${db}`)).status, 201);
  if (docs > 0) {
    const r = await request(S.url, 'POST', `/${db}/_bulk_docs`,
      { body: { docs: Array.from({ length: docs }, (_, i) => ({ _id: `d${i}`, v: i })) } });
    assert.equal(r.status, 201);
  }
}

async function putRepl(id, source, target) {
  const r = await request(S.url, 'PUT', `/_replicator/${id}`,
    { body: { source, target, continuous: true, create_target: true } });
  assert.equal(r.status, 201, r.text);
}

async function docs() {
  const r = await request(S.url, 'GET', '/_scheduler/docs');
  assert.equal(r.status, 200, r.text);
  return Object.fromEntries(r.json.docs.map((d) => [d.doc_id, d]));
}

async function count(db) {
  const r = await request(S.url, 'GET', `/${db}`);
  return r.status === 200 ? r.json.doc_count : -1;
}

before(async () => {
  S = await startServer({ args: ['--set', 'replicator.max_jobs=2', '--set', 'replicator.interval=1500'] });
});
after(async () => { await S?.stop(); });

test('beyond max_jobs a job is pending, listed as such, and starts when a slot frees', async () => {
  await makeDb('s1', 3);
  await makeDb('s2', 3);
  await makeDb('s3', 3);
  await putRepl('r1', 's1', 't1');
  await putRepl('r2', 's2', 't2');
  await waitFor(async () => (await count('t1')) === 3 && (await count('t2')) === 3,
    { timeout: 20_000, interval: 200, what: 'the first two jobs to run' });
  await putRepl('r3', 's3', 't3');
  const d = await waitFor(async () => {
    const all = await docs();
    return all.r3 && all.r3.state === 'pending' ? all : null;
  }, { timeout: 10_000, interval: 100, what: 'r3 to be pending' });
  assert.equal(d.r1.state, 'running', JSON.stringify(d.r1));
  assert.equal(d.r2.state, 'running', JSON.stringify(d.r2));
  const jobs = (await request(S.url, 'GET', '/_scheduler/jobs')).json.jobs;
  const j3 = jobs.find((j) => j.doc_id === 'r3');
  assert.ok(j3, JSON.stringify(jobs));
  assert.equal(j3.state, 'pending');
  assert.equal(j3.pid, null);
  assert.equal(j3.history[0].type, 'added');
  assert.equal(jobs.filter((j) => j.state === 'running').length, 2, JSON.stringify(jobs));
  // not in _active_tasks while it waits
  const tasks = (await request(S.url, 'GET', '/_active_tasks')).json;
  assert.ok(!tasks.some((t) => t.doc_id === 'r3'), JSON.stringify(tasks));

  // a slot frees: r3 runs (at once, not at the next interval)
  const cur = await request(S.url, 'GET', '/_replicator/r1');
  assert.equal((await request(S.url, 'DELETE', `/_replicator/r1?rev=${cur.json._rev}`)).status, 200);
  await waitFor(async () => (await count('t3')) === 3,
    { timeout: 10_000, interval: 100, what: 'r3 to run once r1 is gone' });
  const after3 = await docs();
  assert.equal(after3.r3.state, 'running', JSON.stringify(after3.r3));
  for (const id of ['r2', 'r3']) {
    const c = await request(S.url, 'GET', `/_replicator/${id}`);
    await request(S.url, 'DELETE', `/_replicator/${id}?rev=${c.json._rev}`);
  }
});

test('pending and running jobs take turns every interval', async () => {
  for (const n of [4, 5, 6]) await makeDb(`s${n}`, 2);
  await putRepl('q4', 's4', 't4');
  await putRepl('q5', 's5', 't5');
  await waitFor(async () => (await count('t4')) === 2 && (await count('t5')) === 2,
    { timeout: 20_000, interval: 200, what: 'q4 and q5 to run' });
  await putRepl('q6', 's6', 't6');
  // no slot frees; the turn after an interval lets q6 run and makes the longest runner wait
  await waitFor(async () => (await count('t6')) === 2,
    { timeout: 20_000, interval: 200, what: 'q6 to get a turn' });
  const jobs = await waitFor(async () => {
    const j = (await request(S.url, 'GET', '/_scheduler/jobs')).json.jobs;
    return j.some((x) => x.history.some((h) => h.type === 'stopped')) ? j : null;
  }, { timeout: 10_000, interval: 200, what: 'a job to show it made way' });
  assert.ok(jobs.filter((j) => j.state === 'running').length <= 2, JSON.stringify(jobs));
  // a job that made way comes back: a write to its source still arrives
  const stopped = jobs.find((j) => j.history.some((h) => h.type === 'stopped'));
  const src = stopped.doc_id.replace('q', 's');
  const tgt = stopped.doc_id.replace('q', 't');
  assert.equal((await request(S.url, 'PUT', `/${src}/later`, { body: { v: 1 } })).status, 201);
  await waitFor(async () => (await request(S.url, 'GET', `/${tgt}/later`)).status === 200,
    { timeout: 20_000, interval: 200, what: 'the job that made way to run again' });
  for (const id of ['q4', 'q5', 'q6']) {
    const c = await request(S.url, 'GET', `/_replicator/${id}`);
    await request(S.url, 'DELETE', `/_replicator/${id}?rev=${c.json._rev}`);
  }
});

test('[replicator] max_jobs below 1 is refused at start-up', async () => {
  await assert.rejects(startServer({ args: ['--set', 'replicator.max_jobs=0'] }),
    /exited during start-up/);
});
