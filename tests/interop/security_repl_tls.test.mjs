// The replicator checks peers' TLS certificates: a throwaway CA and server certificate made
// with certtool at test time (no keys in the tree); a mimeo serving HTTPS with them is the
// target. Without [replicator] cafile the job fails at once with a certificate error; with
// it, or with "verify": false (reported as "tls_verify":false in the job's status), it works.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { makeCerts, startServer as start, stopServer as stop } from './lib/tls.mjs';
import { waitFor } from './lib/repl_peers.mjs';

async function call(base, method, p, body) {
  const r = await fetch(base + p, {
    method, headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

function getTls(url, ca) {
  return new Promise((resolve, reject) => {
    https.get(url, { ca, agent: false }, (res) => {
      let text = '';
      res.on('data', (c) => { text += c; });
      res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(text) }));
    }).on('error', reject);
  });
}

describe('replication to an HTTPS peer', () => {
  let dir, certs, peer, plain, trusting;
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-repl-tls-'));
    certs = await makeCerts(dir);
    peer = await start(['--data', path.join(dir, 'peer'), '--bind', '127.0.0.1', '--port', '0',
      '--tls-cert', certs.cert, '--tls-key', certs.key, '--tls-port', '0', '--set', 'httpd.enable=false'], ['https']);
    plain = await start(['--data', path.join(dir, 'plain'), '--bind', '127.0.0.1', '--port', '0'], ['http']);
    trusting = await start(['--data', path.join(dir, 'trusting'), '--bind', '127.0.0.1', '--port', '0',
      '--set', `replicator.cafile=${certs.caFile}`], ['http']);
    for (const s of [plain, trusting]) {
      assert.equal((await call(s.http, 'PUT', '/src')).status, 201);
      assert.equal((await call(s.http, 'PUT', '/src/d1', { a: 1 })).status, 201);
    }
  });
  after(async () => {
    for (const s of [peer, plain, trusting]) await stop(s);
    await fs.rm(dir, { recursive: true, force: true });
  });

  test('an unknown CA: a certificate error at once, nothing written', async () => {
    const t0 = Date.now();
    const r = await call(plain.http, 'POST', '/_replicate',
      { source: 'src', target: `${peer.https}/t1`, create_target: true });
    assert.equal(r.status, 500);
    assert.equal(r.body.error, 'certificate_error');
    assert.match(r.body.reason, /could not verify the TLS certificate of https:\/\/127\.0\.0\.1:\d+\/t1\/.*cafile/);
    // Fails fast (not retried with backoff; the bound is loose for loaded test machines).
    assert.ok(Date.now() - t0 < 15000, `took ${Date.now() - t0} ms`);
    assert.equal((await getTls(`${peer.https}/t1`, certs.ca)).status, 404);
  });

  test('[replicator] cafile trusts the CA', async () => {
    const r = await call(trusting.http, 'POST', '/_replicate',
      { source: 'src', target: `${peer.https}/t2`, create_target: true });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.ok, true);
    assert.equal((await getTls(`${peer.https}/t2/d1`, certs.ca)).body.a, 1);
  });

  test('"verify": false in the target object or at the top level; the status says so', async () => {
    const r = await call(plain.http, 'POST', '/_replicate',
      { source: 'src', target: { url: `${peer.https}/t3`, verify: false }, create_target: true });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal((await getTls(`${peer.https}/t3/d1`, certs.ca)).body.a, 1);

    const c = await call(plain.http, 'POST', '/_replicate',
      { source: 'src', target: `${peer.https}/t4`, verify: false, create_target: true, continuous: true });
    assert.equal(c.status, 202, JSON.stringify(c.body));
    try {
      const task = await waitFor(async () => (await call(plain.http, 'GET', '/_active_tasks')).body
        .find((t) => t.target.includes('/t4')), { what: 'the t4 task' });
      assert.equal(task.tls_verify, false);
      const jobs = (await call(plain.http, 'GET', '/_scheduler/jobs')).body.jobs;
      assert.equal(jobs.find((j) => j.target.includes('/t4')).info.tls_verify, false);
      // A checked job says nothing of the kind.
      const c2 = await call(trusting.http, 'POST', '/_replicate',
        { source: 'src', target: `${peer.https}/t5`, create_target: true, continuous: true });
      assert.equal(c2.status, 202);
      const t5 = await waitFor(async () => (await call(trusting.http, 'GET', '/_active_tasks')).body
        .find((t) => t.target.includes('/t5')), { what: 'the t5 task' });
      assert.equal(t5.tls_verify, undefined);
      await call(trusting.http, 'POST', '/_replicate', { replication_id: c2.body._local_id, cancel: true });
    } finally {
      await call(plain.http, 'POST', '/_replicate', { replication_id: c.body._local_id, cancel: true });
    }
  });
});
