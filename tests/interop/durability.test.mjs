// Crash durability: a client streams single-document writes with several in flight, the server
// is killed with SIGKILL mid-stream and restarted on the same data folder. Every write that got a
// 2xx must be there, and the server must open and keep working without any repair step.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startServer } from './lib/server.mjs';
import { request, docPath } from './lib/http.mjs';
import { waitFor, parseRev } from './lib/util.mjs';

const ROUNDS = 3;
const IN_FLIGHT = 8;
const DB = 'durable';

let server;
// id → the last rev acknowledged with a 2xx (across all rounds)
const acked = new Map();

before(async () => {
  server = await startServer();
});

after(async () => {
  await server?.stop();
});

/**
 * Writes until stopped: new docs and updates of acknowledged ones, IN_FLIGHT at a time, on a
 * private keep-alive agent. Resolves with the number of requests that failed (the kill).
 */
function writer(round, shouldStop) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: IN_FLIGHT });
  let seq = 0;
  let failures = 0;
  const one = async () => {
    while (!shouldStop()) {
      const n = seq++;
      let id;
      let body;
      if (n % 4 === 3 && acked.size > 0) {
        // Update a doc acknowledged earlier (not one with a write still in flight).
        id = `r${round}-${String(n - 3).padStart(6, '0')}`;
        const rev = acked.get(id);
        if (!rev) continue;
        body = { _rev: rev, round, n, updated: true };
      } else {
        id = `r${round}-${String(n).padStart(6, '0')}`;
        body = { round, n, payload: 'p'.repeat(200 + (n % 300)) };
      }
      try {
        const res = await request(server.url, 'PUT', docPath(DB, id), { body, agent, timeout: 10_000 });
        if (res.status === 201 || res.status === 202) acked.set(id, res.json.rev);
        else if (res.status !== 409) throw new Error(`PUT ${id}: ${res.status} ${res.text}`);
      } catch (err) {
        if (err.message.startsWith('PUT ')) throw err;
        failures++;
        return;
      }
    }
  };
  const done = Promise.all(Array.from({ length: IN_FLIGHT }, one));
  return { done: done.then(() => { agent.destroy(); return failures; }), count: () => seq };
}

async function checkAllAcknowledged() {
  const ids = [...acked.keys()];
  for (let i = 0; i < ids.length; i += 500) {
    const keys = ids.slice(i, i + 500);
    const res = await request(server.url, 'POST', `/${DB}/_all_docs`, { body: { keys } });
    assert.equal(res.status, 200, res.text);
    for (const row of res.json.rows) {
      const want = acked.get(row.key);
      assert.ok(!row.error, `acknowledged doc ${row.key} (${want}) is missing after restart`);
      const got = row.value.rev;
      if (got !== want) {
        // A write that was in flight at the kill may have committed without its reply: the
        // stored rev must then descend from the acknowledged one.
        assert.ok(parseRev(got).gen > parseRev(want).gen, `${row.key}: stored ${got}, acknowledged ${want}`);
        const doc = await request(server.url, 'GET', `${docPath(DB, row.key)}?revs=true`);
        assert.ok(doc.json._revisions.ids.includes(parseRev(want).hash),
          `${row.key}: stored ${got} does not descend from acknowledged ${want}`);
      }
    }
  }
}

for (let round = 1; round <= ROUNDS; round++) {
  test(`round ${round}: every acknowledged write survives kill -9 mid-stream`, async (t) => {
    if (server.external) return t.skip('needs a spawned server');
    if (round === 1) {
      const created = await request(server.url, 'PUT', `/${DB}`);
      assert.equal(created.status, 201, created.text);
    }
    const before = acked.size;
    let stop = false;
    const w = writer(round, () => stop);
    // Kill once a few hundred writes of this round are acknowledged, while writes are in flight.
    const target = before + 150 + Math.floor(Math.random() * 150);
    await waitFor(() => acked.size >= target, { timeout: 60_000, interval: 5, message: `${target - before} writes acknowledged` });
    await server.kill9();
    stop = true;
    const failed = await w.done;
    t.diagnostic(`round ${round}: ${acked.size - before} acknowledged, ${failed} cut off by the kill`);

    await server.restart();
    const root = await request(server.url, 'GET', '/');
    assert.equal(root.status, 200, root.text);
    const info = await request(server.url, 'GET', `/${DB}`);
    assert.equal(info.status, 200, info.text);
    assert.ok(info.json.doc_count >= acked.size, `doc_count ${info.json.doc_count} ≥ ${acked.size} acknowledged`);
    await checkAllAcknowledged();

    const all = await request(server.url, 'GET', `/${DB}/_all_docs?limit=0`);
    assert.equal(all.json.total_rows, info.json.doc_count, '_all_docs total_rows agrees with doc_count');

    // The store keeps working: new writes, updates and a changes read succeed.
    for (let i = 0; i < 20; i++) {
      const id = `after-${round}-${i}`;
      const res = await request(server.url, 'PUT', docPath(DB, id), { body: { i } });
      assert.equal(res.status, 201, res.text);
      acked.set(id, res.json.rev);
    }
    const someId = [...acked.keys()][0];
    const upd = await request(server.url, 'PUT', docPath(DB, someId), { body: { _rev: acked.get(someId), touched: round } });
    assert.equal(upd.status, 201, upd.text);
    acked.set(someId, upd.json.rev);
    const changes = await request(server.url, 'GET', `/${DB}/_changes?since=0&limit=1`);
    assert.equal(changes.status, 200, changes.text);
  });
}

test('after the crashes the server still shuts down cleanly', async (t) => {
  if (server.external) return t.skip('needs a spawned server');
  const result = await server.stop({ keepData: true });
  assert.equal(result.code, 0, `exit code; stderr:\n${result.stderr.slice(-4000)}`);
  assert.doesNotMatch(result.stderr, /Sanitizer|runtime error:/);
  await server.restart();
  await checkAllAcknowledged();
});
