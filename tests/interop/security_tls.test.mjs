// HTTPS: a throwaway CA and server certificate made with GnuTLS's certtool at test time (no
// keys in the tree); mimeo serves HTTPS on [ssl] port beside HTTP, or HTTPS only; clients that
// trust the CA get in, others fail the handshake; the session cookie is Secure; a _security
// change made over one listener is seen by the other.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { serverBinary, repoRoot } from './lib/server.mjs';
import { makeCerts, startServer as start, stopServer as stop } from './lib/tls.mjs';

function get(url, { ca, method = 'GET', body, auth } = {}) {
  return new Promise((resolve, reject) => {
    const headers = { 'content-type': 'application/json' };
    if (auth) headers.authorization = 'Basic ' + Buffer.from(auth).toString('base64');
    const r = https.request(url, { method, ca, headers, agent: false }, (res) => {
      let text = '';
      res.on('data', (c) => { text += c; });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text }));
    });
    r.on('error', reject);
    r.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

describe('TLS', () => {
  let dir, certs, s;
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-tls-'));
    certs = await makeCerts(dir);
    s = await start(['--data', path.join(dir, 'data'), '--bind', '127.0.0.1', '--port', '0',
      '--tls-cert', certs.cert, '--tls-key', certs.key, '--tls-port', '0',
      '--set', 'admins.root=pw', '--set', 'chttpd_auth.iterations=1000'], ['http', 'https']);
  });
  after(async () => {
    await stop(s);
    await fs.rm(dir, { recursive: true, force: true });
  });

  test('HTTPS beside HTTP: the CA is trusted, anything else fails the handshake', async () => {
    const r = await get(`${s.https}/`, { ca: certs.ca });
    assert.equal(r.status, 200);
    assert.equal(JSON.parse(r.text).couchdb, 'Welcome');
    await assert.rejects(get(`${s.https}/`), /self[- ]signed|unable to verify|certificate/i);
    const plain = await fetch(`${s.http}/`);
    assert.equal(plain.status, 200);
  });

  test('the session cookie is Secure over HTTPS; both listeners see one _security', async () => {
    const login = await get(`${s.https}/_session`, { ca: certs.ca, method: 'POST', body: { name: 'root', password: 'pw' } });
    assert.equal(login.status, 200);
    assert.match([].concat(login.headers['set-cookie'])[0], /; Secure/);
    assert.equal((await get(`${s.https}/tlsdb`, { ca: certs.ca, method: 'PUT', auth: 'root:pw' })).status, 201);
    const auth = { authorization: 'Basic ' + Buffer.from('root:pw').toString('base64') };
    // Read the default over HTTP (cached there), change it over HTTPS, read over HTTP again.
    assert.equal((await fetch(`${s.http}/tlsdb`)).status, 401);
    assert.equal((await get(`${s.https}/tlsdb/_security`, { ca: certs.ca, method: 'PUT', auth: 'root:pw',
      body: { members: { names: [] }, admins: { names: [] } } })).status, 200);
    assert.equal((await fetch(`${s.http}/tlsdb`)).status, 200);
    assert.equal((await fetch(`${s.http}/tlsdb`, { headers: auth })).status, 200);
  });

  // Both servers wait on the same data directory's commits. Each used to install the one
  // commit watcher there was, so the second replaced the first's and feeds over HTTP were
  // never woken (they ran to their timeout).
  test('a commit wakes feeds waiting on both listeners', async () => {
    assert.equal((await get(`${s.https}/wake`, { ca: certs.ca, method: 'PUT', auth: 'root:pw' })).status, 201);
    const auth = { authorization: 'Basic ' + Buffer.from('root:pw').toString('base64') };
    const feed = '/wake/_changes?feed=longpoll&since=now&timeout=30000';
    const t0 = Date.now();
    const overHttp = fetch(`${s.http}${feed}`, { headers: auth }).then(async (r) =>
      ({ status: r.status, body: await r.json(), ms: Date.now() - t0 }));
    const overHttps = get(`${s.https}${feed}`, { ca: certs.ca, auth: 'root:pw' }).then((r) =>
      ({ status: r.status, body: JSON.parse(r.text), ms: Date.now() - t0 }));
    await new Promise((r) => setTimeout(r, 500));   /* both feeds armed */
    const w = await fetch(`${s.http}/wake/woken`, { method: 'PUT', headers: { ...auth,
      'content-type': 'application/json' }, body: '{}' });
    assert.equal(w.status, 201);
    for (const r of await Promise.all([overHttp, overHttps])) {
      assert.equal(r.status, 200);
      assert.deepEqual(r.body.results.map((c) => c.id), ['woken']);
      assert.ok(r.ms < 10000, `woken by the commit, not the 30 s timeout (${r.ms} ms)`);
    }
  });

  test('HTTPS only: [httpd] enable = false', async () => {
    const s2 = await start(['--data', path.join(dir, 'data2'), '--bind', '127.0.0.1', '--port', '0',
      '--tls-cert', certs.cert, '--tls-key', certs.key, '--tls-port', '0', '--set', 'httpd.enable=false'], ['https']);
    try {
      assert.equal((await get(`${s2.https}/_up`, { ca: certs.ca })).status, 200);
    } finally { await stop(s2); }
  });

  test('a key that does not match or a missing file: a one-line reason, exit 1', async () => {
    const r = await new Promise((resolve) => {
      const p = spawn(serverBinary(), ['serve', '--data', path.join(dir, 'data3'), '--port', '0',
        '--tls-cert', certs.cert, '--tls-key', path.join(dir, 'nope.key')], { cwd: repoRoot });
      let err = '';
      p.stderr.on('data', (c) => { err += c; });
      p.on('exit', (code) => resolve({ code, err }));
    });
    assert.equal(r.code, 1);
    assert.match(r.err, /cannot read .*nope\.key/);
  });
});
