// `mimeo compact DIR` gives the space of deleted databases back: fill a database, delete it,
// compact the stopped server's folder, and the data file shrinks while what was kept is
// intact. While the server runs, compact refuses (the directory is locked).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs/promises';
import path from 'node:path';
import { startServer, serverBinary, repoRoot } from './lib/server.mjs';
import { request } from './lib/http.mjs';

const run = promisify(execFile);
let server;
let dir;

after(async () => {
  await server?.stop();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});

async function compact(folder) {
  try {
    const r = await run(serverBinary(), ['compact', folder], { cwd: repoRoot });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

test('compact shrinks the data file after a big database is deleted', async () => {
  server = await startServer();
  dir = server.dataDir;
  assert.equal((await request(server.url, 'PUT', '/big')).status, 201);
  assert.equal((await request(server.url, 'PUT', '/keep')).status, 201);
  const pad = 'x'.repeat(100_000);
  for (let round = 0; round < 4; round++) {
    const docs = Array.from({ length: 50 }, (_, i) => ({ _id: `r${round}-${i}`, pad }));
    const res = await request(server.url, 'POST', '/big/_bulk_docs', { body: { docs } });
    assert.equal(res.status, 201);
  }
  for (let i = 0; i < 20; i++) {
    const res = await request(server.url, 'PUT', `/keep/k${i}`, { body: { n: i } });
    assert.equal(res.status, 201);
  }
  assert.equal((await request(server.url, 'DELETE', '/big')).status, 200);

  const busy = await compact(dir);
  assert.notEqual(busy.code, 0, 'compact must refuse a folder a server has open');
  assert.match(busy.stderr, /in use by another mimeo/);

  await server.stop({ keepData: true });
  server = null;
  const before = (await fs.stat(path.join(dir, 'data.mdb'))).size;
  const r = await compact(dir);
  assert.equal(r.code, 0, r.stderr);
  const afterSize = (await fs.stat(path.join(dir, 'data.mdb'))).size;
  assert.ok(before > 15_000_000, `filled file: ${before}`);
  assert.ok(afterSize < before / 10, `${before} -> ${afterSize}`);

  server = await startServer({ dataDir: dir });
  assert.equal((await request(server.url, 'GET', '/big')).status, 404);
  const info = await request(server.url, 'GET', '/keep');
  assert.equal(info.json.doc_count, 20);
  for (let i = 0; i < 20; i++) {
    const doc = await request(server.url, 'GET', `/keep/k${i}`);
    assert.equal(doc.status, 200);
    assert.equal(doc.json.n, i);
  }
  assert.equal((await request(server.url, 'PUT', '/keep/after', { body: {} })).status, 201);
});

test('POST /_node/_local/_compact shrinks the file while the server serves', async () => {
  const live = await startServer();
  try {
    const url = live.url;
    assert.equal((await request(url, 'PUT', '/big')).status, 201);
    assert.equal((await request(url, 'PUT', '/keep')).status, 201);
    const pad = 'y'.repeat(100_000);
    for (let round = 0; round < 4; round++) {
      const docs = Array.from({ length: 50 }, (_, i) => ({ _id: `r${round}-${i}`, pad }));
      assert.equal((await request(url, 'POST', '/big/_bulk_docs', { body: { docs } })).status, 201);
    }
    assert.equal((await request(url, 'DELETE', '/big')).status, 200);

    // Writers keep going while the file is swapped.
    let stop = false;
    const written = [];
    const writer = (async () => {
      for (let i = 0; !stop; i++) {
        const res = await request(url, 'PUT', `/keep/w${i}`, { body: { i } });
        assert.equal(res.status, 201);
        written.push(`w${i}`);
      }
    })();
    assert.equal((await request(url, 'GET', '/_node/_local/_compact')).status, 405);
    assert.equal((await request(url, 'GET', '/_node/_local/_config')).status, 404);
    const res = await request(url, 'POST', '/_node/_local/_compact');
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.ok, true);
    assert.ok(res.json.size_after < res.json.size_before / 4, res.text);
    await new Promise((r) => setTimeout(r, 100));
    stop = true;
    await writer;
    assert.ok(written.length > 0);

    const info = await request(url, 'GET', '/keep');
    assert.equal(info.json.doc_count, written.length);
    assert.ok(info.json.sizes.file < res.json.size_before / 4);
    for (const id of written) assert.equal((await request(url, 'GET', `/keep/${id}`)).status, 200);
  } finally {
    await live.stop();
  }
});
