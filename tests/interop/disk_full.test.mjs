// A full disk: writes that cannot be stored get a JSON error (507), the server keeps serving,
// and after a restart with room again every write that got a 2xx is there.
//
// The full disk is simulated with a file-size limit (ulimit -f) on the server process, with
// SIGXFSZ ignored so that writes past the limit fail with EFBIG like they would with ENOSPC.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startServer, serverBinary } from './lib/server.mjs';

const LIMIT_KB = 24 * 1024; // the data file may not grow past 24 MiB

const cleanups = [];
after(async () => { for (const fn of cleanups.reverse()) await fn(); });

async function limitedBinary() {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-diskfull-bin-'));
  cleanups.push(() => fs.rm(dir, { recursive: true, force: true }));
  const wrapper = path.join(dir, 'mimeo-limited');
  await fs.writeFile(wrapper,
    `#!/usr/bin/env bash\nulimit -f ${LIMIT_KB}\ntrap '' XFSZ\nexec ${JSON.stringify(serverBinary())} "$@"\n`,
    { mode: 0o755 });
  return wrapper;
}

async function request(url, method, body) {
  const res = await fetch(url, {
    method,
    headers: { 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, json: JSON.parse(text) };
}

test('a full disk answers 507 with a JSON error, keeps serving, and loses no acknowledged write',
  { timeout: 240_000 }, async () => {
    const realBinary = serverBinary();
    process.env.MIMEO_BIN = await limitedBinary();
    const server = await startServer();
    cleanups.push(() => server.stop());
    process.env.MIMEO_BIN = realBinary;

    assert.equal((await request(`${server.url}/full`, 'PUT')).status, 201);
    const filler = 'x'.repeat(10 * 1024);
    const acked = new Map();
    let refusal = null;
    for (let batch = 0; batch < 400 && !refusal; batch++) {
      const docs = [];
      for (let i = 0; i < 50; i++) docs.push({ _id: `b${batch}-${i}`, filler });
      const res = await request(`${server.url}/full/_bulk_docs`, 'POST', { docs });
      if (res.status === 201) {
        for (const row of res.json) {
          assert.ok(row.ok, JSON.stringify(row));
          acked.set(row.id, row.rev);
        }
      } else {
        refusal = res;
      }
    }
    assert.ok(refusal, 'the size limit was never reached');
    assert.equal(refusal.status, 507, JSON.stringify(refusal.json));
    assert.equal(refusal.json.error, 'insufficient_storage');
    assert.equal(typeof refusal.json.reason, 'string');
    assert.ok(acked.size > 0);

    // Still serving: reads work, and a single-document write is refused cleanly too.
    assert.equal((await request(`${server.url}/_up`, 'GET')).status, 200);
    const one = await request(`${server.url}/full/late`, 'PUT', { filler: filler.repeat(20) });
    assert.ok(one.status === 507 || one.status === 201, JSON.stringify(one));
    if (one.status === 201) acked.set('late', one.json.rev);

    // Room again: restart without the limit; everything acknowledged is there.
    await server.restart();
    for (const [id, rev] of acked) {
      const res = await request(`${server.url}/full/${encodeURIComponent(id)}`, 'GET');
      assert.equal(res.status, 200, `${id}: ${JSON.stringify(res.json)}`);
      assert.equal(res.json._rev, rev);
    }
    const info = await request(`${server.url}/full`, 'GET');
    assert.equal(info.json.doc_count, acked.size);
    assert.equal((await request(`${server.url}/full/after`, 'PUT', { ok: 1 })).status, 201);
  });
