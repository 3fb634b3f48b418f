// Attachments carried by mimeo's replicator (src/repl/repl_att.c) between pouchdb-server
// peers: sizes 0 B, 1 B, 1 MiB and 50 MiB, binary and text, conflicting branches that each
// carry their own attachment, and a second run after a small change in which the unchanged
// attachments travel as stubs (counted by a proxy in front of the source). The replicator's
// peak memory stays far below the size of the attachments it moves.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { spawn } from 'node:child_process';
import { serverBinary, repoRoot } from './lib/server.mjs';
import { request } from './lib/http.mjs';
import { startPouchServer, SKIP_UNWIRED } from './lib/repl_peers.mjs';

/** A proxy in front of url that counts requests (method and path) and reply bytes. */
function countingProxy(url) {
  const up = new URL(url);
  const stats = { requests: [], bytesDown: 0 };
  const srv = http.createServer((req, res) => {
    stats.requests.push(`${req.method} ${req.url}`);
    const p = http.request({ host: up.hostname, port: up.port, method: req.method, path: req.url,
      headers: req.headers }, (pr) => {
      res.writeHead(pr.statusCode, pr.headers);
      pr.on('data', (c) => { stats.bytesDown += c.length; });
      pr.pipe(res);
    });
    p.on('error', () => res.destroy());
    req.pipe(p);
  });
  return new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${srv.address().port}`,
    stats,
    reset() { stats.requests = []; stats.bytesDown = 0; },
    close: () => new Promise((r) => { srv.closeAllConnections?.(); srv.close(r); }),
  })));
}

/** Runs `mimeo replicate`, sampling its peak RSS (VmHWM) just before it exits. */
function replicate(source, target, extra = []) {
  return new Promise((resolve, reject) => {
    const proc = spawn(serverBinary(), ['replicate', '--quiet', source, target, ...extra],
      { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '', hwm = 0;
    proc.stdout.on('data', (c) => { stdout += c; });
    proc.stderr.on('data', (c) => { stderr += c; });
    const poll = setInterval(() => {
      try {
        const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${proc.pid}/status`, 'utf8'));
        if (m) hwm = Math.max(hwm, Number(m[1]) * 1024);
      } catch { /* exited */ }
    }, 20);
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error('replicate hung')); }, 300_000);
    proc.on('exit', (code) => {
      clearInterval(poll);
      clearTimeout(timer);
      let json;
      try { json = JSON.parse(stdout); } catch { json = undefined; }
      resolve({ code, stdout, stderr, json, hwm });
    });
  });
}

function bytes(n, seed) {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    b[i] = x & 255;
  }
  return b;
}

const MiB = 1 << 20;
const small = {
  'empty.bin': { type: 'application/octet-stream', data: Buffer.alloc(0) },
  'one.bin': { type: 'application/octet-stream', data: Buffer.from([0xff]) },
  'note.txt': { type: 'text/plain', data: Buffer.from('hello, attachments\n'.repeat(50)) },
  'dir/page.json': { type: 'application/json', data: Buffer.from(JSON.stringify({ a: [1, 2, 3] })) },
  'mega.bin': { type: 'application/octet-stream', data: bytes(MiB, 7) },
};
const big = { type: 'application/octet-stream', data: bytes(50 * MiB, 11) };

function inline(atts) {
  const out = {};
  for (const [name, a] of Object.entries(atts)) {
    out[name] = { content_type: a.type, data: a.data.toString('base64') };
  }
  return out;
}

function encName(name) {
  return name.split('/').map(encodeURIComponent).join('/');
}

async function attBytes(url, db, id, name, rev) {
  const r = await request(url, 'GET', `/${db}/${encodeURIComponent(id)}/${encName(name)}${rev ? `?rev=${rev}` : ''}`,
    { headers: { accept: '*/*' }, timeout: 120_000 });
  assert.equal(r.status, 200, `GET ${id}/${name}: ${r.status} ${r.text.slice(0, 200)}`);
  return r.body;
}

function sameBytes(a, b, what) {
  assert.equal(a.length, b.length, `${what}: length`);
  assert.ok(crypto.createHash('sha256').update(a).digest('hex') ===
            crypto.createHash('sha256').update(b).digest('hex'), `${what}: content`);
}

let src, dst;
before(async () => {
  if (SKIP_UNWIRED) return;
  [src, dst] = await Promise.all([startPouchServer(), startPouchServer()]);
});
after(async () => {
  await src?.stop();
  await dst?.stop();
});

test('pouchdb-server to pouchdb-server: every size, conflicts, stubs on the second run, bounded memory',
  { skip: SKIP_UNWIRED, timeout: 600_000 }, async () => {
    assert.equal((await request(src.url, 'PUT', '/src')).status, 201);
    let r = await request(src.url, 'PUT', '/src/small', { body: { kind: 'small', _attachments: inline(small) } });
    assert.equal(r.status, 201, r.text);
    // the 50 MiB one inline too (pouchdb-server's raw attachment PUT is far slower)
    r = await request(src.url, 'PUT', '/src/big', { body: { kind: 'big', _attachments: inline({ 'big.bin': big }) },
      timeout: 240_000 });
    assert.equal(r.status, 201, r.text);
    // a conflict: two branches of one document, each with its own version of a.bin
    const root = '1-' + 'a'.repeat(32), left = '2-' + 'b'.repeat(32), right = '2-' + 'c'.repeat(32);
    r = await request(src.url, 'POST', '/src/_bulk_docs', { body: { new_edits: false, docs: [
      { _id: 'conf', _rev: left, _revisions: { start: 2, ids: ['b'.repeat(32), 'a'.repeat(32)] }, side: 'left',
        _attachments: inline({ 'a.bin': { type: 'application/octet-stream', data: bytes(300 * 1024, 1) } }) },
      { _id: 'conf', _rev: right, _revisions: { start: 2, ids: ['c'.repeat(32), 'a'.repeat(32)] }, side: 'right',
        _attachments: inline({ 'a.bin': { type: 'text/plain', data: Buffer.from('the right side') } }) },
    ] } });
    assert.equal(r.status, 201, r.text);
    assert.deepEqual(r.json, []);

    const proxy = await countingProxy(src.url);
    try {
      const run1 = await replicate(`${proxy.url}/src`, `${dst.url}/dst`, ['--create-target']);
      assert.equal(run1.code, 0, run1.stderr + run1.stdout);
      assert.equal(run1.json.history[0].doc_write_failures, 0, run1.stdout);
      for (const [name, a] of Object.entries(small)) {
        sameBytes(await attBytes(dst.url, 'dst', 'small', name), a.data, name);
      }
      sameBytes(await attBytes(dst.url, 'dst', 'big', 'big.bin'), big.data, 'big.bin');
      sameBytes(await attBytes(dst.url, 'dst', 'conf', 'a.bin', left), bytes(300 * 1024, 1), 'left a.bin');
      sameBytes(await attBytes(dst.url, 'dst', 'conf', 'a.bin', right), Buffer.from('the right side'), 'right a.bin');
      const leaves = await request(dst.url, 'GET', '/dst/conf?open_revs=all');
      assert.equal(leaves.json.length, 2);
      // 50 MiB moved (plus 1 MiB and the rest) with a peak far below it: the bytes stream
      // through a spool file. (ASan's own overhead is in the baseline.)
      assert.ok(run1.hwm > 0 && run1.hwm < 48 * MiB, `peak RSS ${run1.hwm}`);
      assert.ok(proxy.stats.bytesDown > 50 * MiB, 'the big attachment came through the proxy');

      // A new revision of "small" changing only note.txt, and one of "big" changing its body:
      // the second run moves note.txt and nothing else of size.
      const cur = (await request(src.url, 'GET', '/src/small')).json;
      cur._attachments['note.txt'] = { content_type: 'text/plain', data: Buffer.from('changed').toString('base64') };
      r = await request(src.url, 'PUT', '/src/small', { body: cur });
      assert.equal(r.status, 201, r.text);
      const curBig = (await request(src.url, 'GET', '/src/big')).json;
      curBig.kind = 'big, renamed';
      r = await request(src.url, 'PUT', '/src/big', { body: curBig });
      assert.equal(r.status, 201, r.text);
      proxy.reset();
      const run2 = await replicate(`${proxy.url}/src`, `${dst.url}/dst`);
      assert.equal(run2.code, 0, run2.stderr + run2.stdout);
      assert.equal(run2.json.history[0].docs_written, 2, run2.stdout);
      const attGets = proxy.stats.requests.filter((q) => /^GET \/src\/(small|big)\/[^?]/.test(q));
      assert.deepEqual(attGets.map((q) => q.split('?')[0]), ['GET /src/small/note.txt']);
      assert.ok(proxy.stats.bytesDown < 256 * 1024, `second run read ${proxy.stats.bytesDown} bytes`);
      assert.equal((await attBytes(dst.url, 'dst', 'small', 'note.txt')).toString(), 'changed');
      sameBytes(await attBytes(dst.url, 'dst', 'small', 'mega.bin'), small['mega.bin'].data, 'mega.bin kept');
      sameBytes(await attBytes(dst.url, 'dst', 'big', 'big.bin'), big.data, 'big.bin kept');
      assert.equal((await request(dst.url, 'GET', '/dst/big')).json.kind, 'big, renamed');
    } finally {
      await proxy.close();
    }
  });
