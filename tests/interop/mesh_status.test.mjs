// The operator's view of a mesh: GET /_mesh is for server admins only (a peer's POST /_mesh
// is not: its MAC authenticates it), and `mimeo mesh status [URL]` prints the members and the
// database registry as tables, with clear errors and exit codes when the node is unreachable,
// the caller is not an admin, or the node is not part of a mesh.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { startServer, serverBinary, repoRoot } from './lib/server.mjs';
import { request } from './lib/http.mjs';
import { waitFor } from './lib/util.mjs';

const FAST = [
  '--set', 'mesh.probe_interval_ms=300',
  '--set', 'mesh.probe_timeout_ms=150',
  '--set', 'mesh.gossip_interval_ms=100',
  '--set', 'mesh.pushpull_interval_ms=3000',
];

let dir;
let a;
let b;
let plain;
let auth;          // "admin:password" of a and b
let adminFile;

function basic(userpass) {
  return { authorization: `Basic ${Buffer.from(userpass).toString('base64')}` };
}

/** Runs `mimeo ...args`; resolves {code, stdout, stderr}. */
function cli(args) {
  return new Promise((resolve, reject) => {
    const proc = spawn(serverBinary(), args, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (c) => { stdout += c; });
    proc.stderr.on('data', (c) => { stderr += c; });
    proc.on('error', reject);
    proc.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

function withUser(url, userpass) {
  const u = new URL(url);
  const [user, pass] = userpass.split(':');
  u.username = user;
  u.password = pass;
  return u.toString().replace(/\/$/, '');
}

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-meshstatus-'));
  const secret = path.join(dir, 'secret');
  await fs.writeFile(secret, 'the-mesh-status-secret-0123456789\n');
  adminFile = path.join(dir, 'admin.password');
  await fs.writeFile(adminFile, 'admin:s3cret-admin-pw\n', { mode: 0o600 });
  auth = 'admin:s3cret-admin-pw';
  const common = ['--mesh-secret-file', secret, '--admin-file', adminFile, ...FAST];
  a = await startServer({ args: ['--node-name', 'alpha', ...common] });
  b = await startServer({ args: ['--node-name', 'beta', '--join', a.url, ...common] });
  plain = await startServer();
  await waitFor(async () => {
    const r = await request(a.url, 'GET', '/_mesh', { headers: basic(auth) });
    return r.status === 200 && r.json.members.filter((m) => m.state === 'alive').length === 2;
  }, { timeout: 30_000, message: 'alpha sees beta alive' });
});

after(async () => {
  for (const s of [a, b, plain]) if (s) await s.stop();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});

test('GET /_mesh is for server admins; a peer POST is judged by its MAC, not by HTTP', async () => {
  const anon = await request(a.url, 'GET', '/_mesh');
  assert.equal(anon.status, 401, anon.text);
  assert.equal(anon.json.error, 'unauthorized');
  const wrong = await request(a.url, 'GET', '/_mesh', { headers: basic('admin:nope') });
  assert.equal(wrong.status, 401, wrong.text);
  const ok = await request(a.url, 'GET', '/_mesh', { headers: basic(auth) });
  assert.equal(ok.status, 200, ok.text);
  assert.equal(ok.json.name, 'alpha');
  // Anonymous POST reaches the mesh, which rejects bytes without a valid MAC (400), never
  // the HTTP layer's 401: peers carry no HTTP credentials.
  const post = await request(a.url, 'POST', '/_mesh', {
    body: Buffer.from('not a mesh message'), headers: { 'content-type': 'application/octet-stream' },
  });
  assert.equal(post.status, 400, post.text);
  // The mesh keeps working across the auth requirement: beta is alive on both sides.
  const vb = await request(b.url, 'GET', '/_mesh', { headers: basic(auth) });
  assert.equal(vb.json.members.find((m) => m.name === 'alpha').state, 'alive');
});

test('mimeo mesh status prints members and databases as tables', async () => {
  assert.equal((await request(a.url, 'PUT', '/status_db', { headers: basic(auth) })).status, 201);
  await waitFor(async () => (await request(b.url, 'GET', '/status_db', { headers: basic(auth) })).status === 200,
    { timeout: 20_000, message: 'status_db reached beta' });
  const r = await cli(['mesh', 'status', b.url, '--admin-file', adminFile]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.split('\n');
  assert.equal(lines[0], 'node: beta');
  assert.match(r.stdout, /^members: 2 alive, 0 suspect, 0 dead, 0 left$/m);
  const head = lines.find((l) => l.startsWith('NAME '));
  assert.match(head, /^NAME\s+URL\s+STATE\s+INCARNATION\s+LAST HEARD$/);
  // Aligned: every column starts where its header does.
  const col = (h) => head.indexOf(h);
  const alpha = lines.find((l) => l.startsWith('alpha '));
  assert.ok(alpha, r.stdout);
  assert.equal(alpha.slice(col('URL')).split(/\s+/)[0], a.url);
  assert.equal(alpha.slice(col('STATE')).split(/\s+/)[0], 'alive');
  assert.match(alpha.slice(col('LAST HEARD')), /^\d+\.\ds ago$/);
  const beta = lines.find((l) => l.startsWith('beta '));
  assert.match(beta, /\(self\)$/);
  assert.match(r.stdout, /^databases$/m);
  assert.match(r.stdout, /^status_db\s+no\s+1$/m);
  assert.match(r.stdout, /^gossip: sent \d+ messages/m);
  assert.doesNotMatch(r.stdout + r.stderr, /s3cret/);
});

test('credentials from the URL; --json prints the reply as is', async () => {
  const r = await cli(['mesh', 'status', withUser(a.url, auth), '--json']);
  assert.equal(r.code, 0, r.stderr);
  const v = JSON.parse(r.stdout);
  assert.equal(v.name, 'alpha');
  assert.deepEqual(v.members.map((m) => m.name).sort(), ['alpha', 'beta']);
});

test('the default URL and admin file come from --config', async () => {
  const conf = path.join(dir, 'ops.ini');
  await fs.writeFile(conf, `[httpd]\nbind_address = 127.0.0.1\nport = ${a.port}\n` +
    `[chttpd_auth]\nadmin_password_file = ${adminFile}\n`);
  const r = await cli(['mesh', 'status', '--config', conf]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^node: alpha$/m);
});

test('not authorised: exit 3 and a clear message', async () => {
  const r = await cli(['mesh', 'status', a.url]);
  assert.equal(r.code, 3, r.stdout + r.stderr);
  assert.match(r.stderr, /not authorised/);
  assert.match(r.stderr, /admin/);
  const w = await cli(['mesh', 'status', withUser(a.url, 'admin:wrong')]);
  assert.equal(w.code, 3);
  assert.doesNotMatch(w.stderr, /wrong/, 'the password is not echoed');
});

test('unreachable: exit 1; not a mesh node: exit 4; usage: exit 2', async () => {
  const port = await new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
  const r = await cli(['mesh', 'status', `http://127.0.0.1:${port}`]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /cannot reach http:\/\/127\.0\.0\.1:\d+\/_mesh/);
  const n = await cli(['mesh', 'status', plain.url]);
  assert.equal(n.code, 4, n.stderr);
  assert.match(n.stderr, /not part of a mesh/);
  assert.equal((await cli(['mesh'])).code, 2);
  assert.equal((await cli(['mesh', 'frobnicate'])).code, 2);
  assert.equal((await cli(['mesh', 'status', 'a', 'b'])).code, 2);
});

test('per-database and per-peer figures, when a node reports them, print as tables', async () => {
  // A stand-in node answering GET /_mesh with nested sync figures: the printer shows any list
  // of objects as a table and a nested list as a child table led by its parent's name.
  const http = await import('node:http');
  const body = {
    name: 'n1',
    members: [{ name: 'n1', url: 'http://x:1', state: 'alive', incarnation: 0, last_heard_ms: 0, self: true },
      { name: 'n2', url: 'http://x:2', state: 'suspect', incarnation: 3, last_heard_ms: 125_000 },
      { name: 'n3', url: 'http://x:3', state: 'dead', incarnation: 1, last_heard_ms: null }],
    databases: [
      { name: 'db1', deleted: false, version: 1,
        peers: [{ peer: 'n2', seen_ms: 1200, checkpoint_seq: 41, behind: 2 },
          { peer: 'n3', seen_ms: null, checkpoint_seq: 0, behind: 43 }] },
      { name: 'db2', deleted: true, version: 2 },
    ],
    stats: { msgs_sent: 1, bytes_sent: 2, msgs_recv: 3, bytes_recv: 4, probes: 5, probes_failed: 6 },
    // The shape the data mover reports: last_sync_ms is a wall-clock time, shown as an age.
    sync: [{ db: 'db1', peer: 'n2', last_sync_ms: Date.now() - 3000, behind: 2 },
      { db: 'db1', peer: 'n3', last_sync_ms: null, behind: 43 }],
    replication: { completed: 3, failed: 0 },
  };
  const srv = http.createServer((req, res) => {
    res.writeHead(req.url === '/_mesh' ? 200 : 404, { 'content-type': 'application/json' });
    res.end(JSON.stringify(req.url === '/_mesh' ? body : { error: 'not_found' }));
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  try {
    const r = await cli(['mesh', 'status', `http://127.0.0.1:${srv.address().port}/`]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^members: 1 alive, 1 suspect, 1 dead, 0 left$/m);
    assert.match(r.stdout, /^n2\s+http:\/\/x:2\s+suspect\s+3\s+2m05s ago$/m);
    assert.match(r.stdout, /^n3\s+http:\/\/x:3\s+dead\s+1\s+never$/m);
    assert.match(r.stdout, /^db2\s+yes\s+2$/m);
    assert.match(r.stdout, /^databases: peers$/m);
    assert.match(r.stdout, /^NAME\s+PEER\s+SEEN MS\s+CHECKPOINT SEQ\s+BEHIND$/m);
    assert.match(r.stdout, /^db1\s+n2\s+1200\s+41\s+2$/m);
    assert.match(r.stdout, /^db1\s+n3\s+-\s+0\s+43$/m);
    assert.match(r.stdout, /^sync$/m);
    assert.match(r.stdout, /^DB\s+PEER\s+LAST SYNC\s+BEHIND$/m);
    assert.match(r.stdout, /^db1\s+n2\s+[34]\.\ds ago\s+2$/m);
    assert.match(r.stdout, /^db1\s+n3\s+-\s+43$/m);
    assert.match(r.stdout, /^replication: completed 3, failed 0$/m);
    assert.match(r.stdout, /^gossip: sent 1 messages \(2 bytes\), received 3 \(4 bytes\); probes 5, failed 6$/m);
  } finally {
    srv.close();
  }
});
