// Security: protected mode and admins at start-up, Basic and cookie authentication, /_session,
// _users accounts (hashed, private, roles only by admins), _security, require_valid_user,
// WWW-Authenticate only when configured, CORS off by default, the failed-login slowdown, and
// the CouchDB advisories' lessons (CVE-2017-12635 duplicate roles, CVE-2017-12636 class:
// no request reaches configuration or files outside the data folder).

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import nano from 'nano';
import { startServer, serverBinary, repoRoot } from './lib/server.mjs';
import { PouchDB, memoryDb } from './lib/pouch.mjs';
import { uniqueDbName, waitFor } from './lib/util.mjs';

// Cheap hashes for the tests' own accounts; the default (600,000) is CouchDB's.
const FAST = ['--set', 'chttpd_auth.iterations=1000'];
const ADMIN = { name: 'root', password: 'r00t-pw' };

/** One request; opts: body, headers, auth {name,password}, cookie, localAddress. */
function req(base, method, p, opts = {}) {
  const u = new URL(base);
  const headers = { accept: 'application/json', ...(opts.headers ?? {}) };
  let payload = null;
  if (opts.body !== undefined) {
    payload = Buffer.from(typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body));
    if (!Object.keys(headers).some((h) => h.toLowerCase() === 'content-type')) headers['content-type'] = 'application/json';
    headers['content-length'] = String(payload.length);
  } else if (['POST', 'PUT'].includes(method)) headers['content-length'] = '0';
  if (opts.auth) headers.authorization = 'Basic ' + Buffer.from(`${opts.auth.name}:${opts.auth.password}`).toString('base64');
  if (opts.cookie) headers.cookie = opts.cookie;
  return new Promise((resolve, reject) => {
    const r = http.request({ host: u.hostname, port: u.port, method, path: p, headers, agent: false,
      localAddress: opts.localAddress }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = text ? JSON.parse(text) : undefined; } catch { json = undefined; }
        resolve({ status: res.statusCode, headers: res.headers, text, json });
      });
    });
    r.on('error', reject);
    if (payload) r.write(payload);
    r.end();
  });
}

function authSession(res) {
  const sc = [].concat(res.headers['set-cookie'] ?? []).find((c) => c.startsWith('AuthSession='));
  return sc;
}

async function login(base, name, password) {
  const res = await req(base, 'POST', '/_session', { body: { name, password } });
  assert.equal(res.status, 200, res.text);
  return authSession(res).split(';')[0];
}

async function putUser(base, name, password, roles = [], auth = ADMIN) {
  const res = await req(base, 'PUT', `/_users/org.couchdb.user:${name}`,
    { auth, body: { name, password, roles, type: 'user' } });
  assert.equal(res.status, 201, res.text);
  return res.json;
}

/** Runs `mimeo serve` expecting it to exit; returns {code, stdout, stderr}. */
function runToExit(args, ms = 20000) {
  return new Promise((resolve, reject) => {
    const p = spawn(serverBinary(), ['serve', ...args], { cwd: repoRoot });
    let stdout = '', stderr = '';
    p.stdout.on('data', (c) => { stdout += c; });
    p.stderr.on('data', (c) => { stderr += c; });
    const t = setTimeout(() => { p.kill('SIGKILL'); reject(new Error(`still running: ${stderr}`)); }, ms);
    p.on('exit', (code) => { clearTimeout(t); resolve({ code, stdout, stderr }); });
  });
}

describe('start-up: admins and protected mode', () => {
  test('a non-loopback bind with no admin refuses to start, with a one-line reason', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-sec-'));
    try {
      const r = await runToExit(['--data', dir, '--bind', '0.0.0.0', '--port', '0']);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /refusing to listen on 0\.0\.0\.0 with no admin/);
      assert.equal(r.stderr.trim().split('\n').length, 1);
    } finally { await fs.rm(dir, { recursive: true, force: true }); }
  });

  test('loopback with no admin: everyone is admin, and the server says so', async () => {
    const s = await startServer({ args: FAST });
    try {
      assert.match(s.stderr(), /WARNING: no admin configured/);
      const res = await req(s.url, 'GET', '/_session');
      assert.deepEqual(res.json.userCtx, { name: null, roles: ['_admin'] });
      assert.equal((await req(s.url, 'PUT', '/open-db')).status, 201);
    } finally { await s.stop(); }
  });

  test('[admins] plain passwords are rewritten as PBKDF2 hashes in the config file', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-sec-'));
    const ini = path.join(dir, 'local.ini');
    await fs.writeFile(ini, '[couchdb]\nmax_json_depth = 100\n\n[admins]\nroot = r00t-pw\n; a comment\n', { mode: 0o600 });
    const s = await startServer({ args: ['--config', ini, ...FAST] });
    try {
      const text = await fs.readFile(ini, 'utf8');
      assert.doesNotMatch(text, /r00t-pw/);
      assert.match(text, /^root = -pbkdf2:sha256-[0-9a-f]{64},[0-9a-f]{32},1000$/m);
      assert.match(text, /max_json_depth = 100/);
      assert.match(text, /; a comment/);
      assert.equal((await fs.stat(ini)).mode & 0o777, 0o600);
      assert.equal((await req(s.url, 'GET', '/_session', { auth: ADMIN })).json.userCtx.name, 'root');
      // The hash in the file keeps working after a restart (no re-hashing of a hash).
      await s.restart();
      assert.equal(await fs.readFile(ini, 'utf8'), text);
      assert.deepEqual((await req(s.url, 'GET', '/_session', { auth: ADMIN })).json.userCtx,
        { name: 'root', roles: ['_admin'] });
      assert.equal((await req(s.url, 'GET', '/_all_dbs')).status, 401);
    } finally { await s.stop(); await fs.rm(dir, { recursive: true, force: true }); }
  });

  test('--admin-file creates an admin with a random password in a 0600 file', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-sec-'));
    const file = path.join(dir, 'admin.password');
    const s = await startServer({ args: ['--admin-file', file, ...FAST] });
    try {
      const line = (await fs.readFile(file, 'utf8')).trim();
      const [name, password] = line.split(':');
      assert.equal(name, 'admin');
      assert.match(password, /^[0-9a-f]{36}$/);
      assert.equal((await fs.stat(file)).mode & 0o777, 0o600);
      assert.doesNotMatch(s.stderr(), /WARNING/);
      assert.equal((await req(s.url, 'GET', '/_all_dbs', { auth: { name, password } })).status, 200);
      assert.equal((await req(s.url, 'GET', '/_all_dbs')).status, 401);
      await s.restart();   // the same file, the same password
      assert.equal((await req(s.url, 'GET', '/_all_dbs', { auth: { name, password } })).status, 200);
    } finally { await s.stop(); await fs.rm(dir, { recursive: true, force: true }); }
  });
});

describe('authentication and accounts', () => {
  let s;
  before(async () => {
    s = await startServer({ args: ['--set', `admins.${ADMIN.name}=${ADMIN.password}`, ...FAST] });
  });
  after(async () => { await s?.stop(); });

  test('Basic: right password in, wrong one 401 without a browser pop-up header', async () => {
    const ok = await req(s.url, 'GET', '/_session', { auth: ADMIN });
    assert.equal(ok.status, 200);
    assert.deepEqual(ok.json.userCtx, { name: 'root', roles: ['_admin'] });
    assert.equal(ok.json.info.authenticated, 'default');
    const bad = await req(s.url, 'GET', '/', { auth: { name: 'root', password: 'nope' } });
    assert.equal(bad.status, 401);
    assert.deepEqual(bad.json, { error: 'unauthorized', reason: 'Name or password is incorrect.' });
    assert.equal(bad.headers['www-authenticate'], undefined);
    const anon = await req(s.url, 'GET', '/_session');
    assert.deepEqual(anon.json.userCtx, { name: null, roles: [] });
    assert.equal(anon.json.info.authenticated, undefined);
    assert.equal((await req(s.url, 'GET', '/_session?basic=true')).status, 401);
  });

  test('sign-up, password hashed on write, login by JSON and by form, cookie shape', async () => {
    const res = await req(s.url, 'PUT', '/_users/org.couchdb.user:alice',
      { body: { name: 'alice', password: 'wonder', roles: [], type: 'user' } });
    assert.equal(res.status, 201, res.text);
    const stored = await req(s.url, 'GET', '/_users/org.couchdb.user:alice', { auth: ADMIN });
    assert.equal(stored.json.password, undefined);
    assert.equal(stored.json.password_scheme, 'pbkdf2');
    assert.equal(stored.json.pbkdf2_prf, 'sha256');
    assert.equal(stored.json.iterations, 1000);
    assert.match(stored.json.derived_key, /^[0-9a-f]{64}$/);
    assert.doesNotMatch(stored.text, /wonder/);

    const j = await req(s.url, 'POST', '/_session', { body: { name: 'alice', password: 'wonder' } });
    assert.equal(j.status, 200);
    assert.deepEqual(j.json, { ok: true, name: 'alice', roles: [] });
    const sc = authSession(j);
    assert.match(sc, /^AuthSession=[A-Za-z0-9_-]+; Version=1; Expires=\w{3}, \d\d-\w{3}-\d{4} [\d:]{8} GMT; Max-Age=600; Path=\/; HttpOnly$/);
    const f = await req(s.url, 'POST', '/_session', { body: 'name=alice&password=wonder',
      headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    assert.equal(f.status, 200);
    const cookie = sc.split(';')[0];
    const who = await req(s.url, 'GET', '/_session', { cookie });
    assert.deepEqual(who.json.userCtx, { name: 'alice', roles: [] });
    assert.equal(who.json.info.authenticated, 'cookie');
    // Wrong password: 401 and a clearing cookie.
    const w = await req(s.url, 'POST', '/_session', { body: { name: 'alice', password: 'x' } });
    assert.equal(w.status, 401);
    assert.match(authSession(w), /^AuthSession=; .*Max-Age=0/);
    assert.equal((await req(s.url, 'POST', '/_session', { body: 'x',
      headers: { 'content-type': 'text/plain' } })).status, 415);
    // Logout clears; a forged cookie is anonymous.
    const out = await req(s.url, 'DELETE', '/_session', { cookie });
    assert.deepEqual(out.json, { ok: true });
    assert.match(authSession(out), /Max-Age=0/);
    const forged = Buffer.from('root:FFFFFFFF:' + 'x'.repeat(32)).toString('base64url');
    assert.deepEqual((await req(s.url, 'GET', '/_session', { cookie: `AuthSession=${forged}` })).json.userCtx,
      { name: null, roles: [] });
  });

  test('users read only their own document; roles only by admins; CVE-2017-12635', async () => {
    await putUser(s.url, 'bob', 'builder');
    const alice = { name: 'alice', password: 'wonder' };
    const bob = { name: 'bob', password: 'builder' };
    assert.equal((await req(s.url, 'GET', '/_users/org.couchdb.user:alice', { auth: alice })).status, 200);
    assert.equal((await req(s.url, 'GET', '/_users/org.couchdb.user:alice', { auth: bob })).status, 404);
    assert.equal((await req(s.url, 'GET', '/_users/org.couchdb.user:alice')).status, 404);
    assert.equal((await req(s.url, 'GET', '/_users/_all_docs', { auth: bob })).status, 403);
    assert.equal((await req(s.url, 'GET', '/_users/_changes', { auth: bob })).status, 403);
    assert.equal((await req(s.url, 'POST', '/_users/_bulk_get', { auth: bob,
      body: { docs: [{ id: 'org.couchdb.user:alice' }] } })).status, 403);
    const own = (await req(s.url, 'GET', '/_users/org.couchdb.user:bob', { auth: bob })).json;
    // Raising one's own roles: refused.
    const up = await req(s.url, 'PUT', '/_users/org.couchdb.user:bob',
      { auth: bob, body: { ...own, roles: ['_admin'] } });
    assert.equal(up.status, 403);
    assert.equal(up.json.error, 'forbidden');
    // CVE-2017-12635: duplicate "roles" members — the parser refuses the whole body.
    const dup = `{"_id":"org.couchdb.user:eve","type":"user","name":"eve","roles":["_admin"],"roles":[],"password":"x"}`;
    const r1 = await req(s.url, 'PUT', '/_users/org.couchdb.user:eve', { body: dup });
    assert.equal(r1.status, 400);
    const r2 = await req(s.url, 'PUT', '/_users/org.couchdb.user:eve', { body: dup.replace('"roles":[]', '"rol\\u0065s":[]') });
    assert.equal(r2.status, 400);
    assert.equal((await req(s.url, 'GET', '/_session', { auth: { name: 'eve', password: 'x' } })).status, 401);
    // Changing one's own password works, and old cookies die with the old salt.
    const cookie = await login(s.url, 'bob', 'builder');
    const ch = await req(s.url, 'PUT', '/_users/org.couchdb.user:bob',
      { auth: bob, body: { ...own, password: 'b2' } });
    assert.equal(ch.status, 201, ch.text);
    assert.equal((await req(s.url, 'GET', '/_session', { cookie })).json.userCtx.name, null);
    assert.equal((await req(s.url, 'GET', '/_session', { auth: { name: 'bob', password: 'b2' } })).json.userCtx.name, 'bob');
    // Someone else's account: neither writable nor deletable.
    assert.equal((await req(s.url, 'PUT', '/_users/org.couchdb.user:alice', { auth: { name: 'bob', password: 'b2' },
      body: { name: 'alice', type: 'user', roles: [], password: 'mine' } })).status, 403);
    const arev = (await req(s.url, 'GET', '/_users/org.couchdb.user:alice', { auth: ADMIN })).json._rev;
    assert.equal((await req(s.url, 'DELETE', `/_users/org.couchdb.user:alice?rev=${arev}`, { auth: { name: 'bob', password: 'b2' } })).status, 403);
    // An admin's _bulk_docs into _users hashes passwords too (no path stores a plain one).
    const bulk = await req(s.url, 'POST', '/_users/_bulk_docs', { auth: ADMIN,
      body: { docs: [{ _id: 'org.couchdb.user:bulky', name: 'bulky', type: 'user', roles: ['r'], password: 'bulk-pw' },
        { _id: 'org.couchdb.user:bad', name: 'other', type: 'user', roles: [] }] } });
    assert.equal(bulk.status, 201, bulk.text);
    const bulky = await req(s.url, 'GET', '/_users/org.couchdb.user:bulky', { auth: ADMIN });
    assert.doesNotMatch(bulky.text, /bulk-pw/);
    assert.deepEqual((await req(s.url, 'GET', '/_session', { auth: { name: 'bulky', password: 'bulk-pw' } })).json.userCtx,
      { name: 'bulky', roles: ['r'] });
    // The _security objects kept in _users are out of reach of every request.
    assert.equal((await req(s.url, 'GET', '/_users/_local/security:1:x', { auth: ADMIN })).status, 403);
  });

  test('_security: members read and write, db admins change it, others 401/403', async () => {
    await putUser(s.url, 'carol', 'c', ['sales']);
    await putUser(s.url, 'dave', 'd');
    const db = uniqueDbName('sec');
    assert.equal((await req(s.url, 'PUT', `/${db}`, { auth: ADMIN })).status, 201);
    // New databases are admin-only (CouchDB 3's default).
    assert.deepEqual((await req(s.url, 'GET', `/${db}/_security`, { auth: ADMIN })).json,
      { members: { roles: ['_admin'] }, admins: { roles: ['_admin'] } });
    assert.equal((await req(s.url, 'GET', `/${db}`)).status, 401);
    assert.equal((await req(s.url, 'GET', `/${db}`, { auth: { name: 'carol', password: 'c' } })).status, 403);
    const sec = { admins: { names: ['dave'], roles: [] }, members: { names: [], roles: ['sales'] } };
    assert.equal((await req(s.url, 'PUT', `/${db}/_security`, { auth: ADMIN, body: sec })).status, 200);
    const carol = { name: 'carol', password: 'c' };
    assert.equal((await req(s.url, 'PUT', `/${db}/doc1`, { auth: carol, body: { a: 1 } })).status, 201);
    assert.equal((await req(s.url, 'GET', `/${db}/doc1`, { auth: carol })).status, 200);
    // A member cannot write design documents or _security (advisory lesson).
    for (const [m, p, body] of [
      ['PUT', `/${db}/_design/x`, { views: {} }],
      ['PUT', `/${db}/_design%2Fx`, { views: {} }],
      ['POST', `/${db}`, { _id: '_design/y' }],
      ['PUT', `/${db}/_security`, { members: { names: ['carol'] } }],
      ['POST', `/${db}/_compact`, {}],
    ]) {
      const r = await req(s.url, m, p, { auth: carol, body });
      assert.equal(r.status, 403, `${m} ${p}: ${r.text}`);
      assert.equal(r.json.error, 'forbidden');
    }
    assert.equal((await req(s.url, 'PUT', `/${db}/_design/x`, { auth: { name: 'dave', password: 'd' }, body: {} })).status, 201);
    assert.equal((await req(s.url, 'PUT', `/${db}/_security`, { auth: carol, body: {} })).status, 403);
    // Bad shapes are refused.
    assert.equal((await req(s.url, 'PUT', `/${db}/_security`, { auth: ADMIN, body: { members: { names: 'x' } } })).status, 400);
    // Re-created: back to the default, whatever the old object said.
    assert.equal((await req(s.url, 'DELETE', `/${db}`, { auth: ADMIN })).status, 200);
    assert.equal((await req(s.url, 'PUT', `/${db}`, { auth: ADMIN })).status, 201);
    assert.equal((await req(s.url, 'GET', `/${db}`, { auth: carol })).status, 403);
    // An empty members list makes a database public, as in CouchDB.
    await req(s.url, 'PUT', `/${db}/_security`, { auth: ADMIN, body: { admins: { names: [] }, members: { names: [] } } });
    assert.equal((await req(s.url, 'GET', `/${db}`)).status, 200);
  });

  test('CVE-2017-12636 class: no request reaches configuration or files outside the data folder', async () => {
    for (const p of ['/_config/query_servers/cmd', '/_node/_local/_config/query_servers/cmd',
      '/_node/nonode@nohost/_config/couchdb/database_dir']) {
      const anon = await req(s.url, 'PUT', p, { body: '"/bin/sh"' });
      assert.equal(anon.status, 401, p);
      const adm = await req(s.url, 'PUT', p, { auth: ADMIN, body: '"/bin/sh"' });
      assert.equal(adm.status, 404, p);
      assert.equal((await req(s.url, 'GET', p, { auth: ADMIN })).status, 404, p);
    }
    for (const p of ['/..%2F..%2F..%2Fetc%2Fpasswd', '/%2e%2e', '/a%2F..%2F..%2Fetc', '/_utils/../../etc/passwd',
      '/x/..%2F..%2F..%2Fetc%2Fpasswd']) {
      const r = await req(s.url, 'GET', p, { auth: ADMIN });
      assert.ok([400, 404].includes(r.status), `${p}: ${r.status}`);
      assert.doesNotMatch(r.text, /root:/);
    }
    // Replication by a plain user may not name local databases (it would bypass _security).
    const r = await req(s.url, 'POST', '/_replicate', { auth: { name: 'dave', password: 'd' },
      body: { source: '_users', target: `${s.url}/stolen` } });
    assert.equal(r.status, 403);
    assert.equal((await req(s.url, 'POST', '/_replicate', { body: { source: 'a', target: 'b' } })).status, 401);
  });

  test('Basic auth costs one PBKDF2 per password, not per request (cache)', async () => {
    const t0 = Date.now();
    for (let i = 0; i < 40; i++) {
      assert.equal((await req(s.url, 'GET', '/_session', { auth: ADMIN })).json.userCtx.name, 'root');
    }
    const per = (Date.now() - t0) / 40;
    assert.ok(per < 50, `a Basic-authenticated request took ${per} ms`);
  });
});

describe('failed-login slowdown', () => {
  let s;
  before(async () => {
    s = await startServer({ args: ['--set', `admins.${ADMIN.name}=${ADMIN.password}`, ...FAST] });
  });
  after(async () => { await s?.stop(); });

  test('a guesser is slowed measurably; the owner from another address is not', async () => {
    const guess = (pw, localAddress = '127.0.0.1') =>
      req(s.url, 'POST', '/_session', { body: { name: 'root', password: pw }, localAddress });
    const t0 = Date.now();
    for (let i = 0; i < 3; i++) assert.equal((await guess(`g${i}`)).status, 401);
    const free = Date.now() - t0;
    const t1 = Date.now();
    for (let i = 3; i < 7; i++) assert.equal((await guess(`g${i}`)).status, 401);
    const slowed = Date.now() - t1;
    // Delays 250+500+1000+2000 ms for guesses 4–7.
    assert.ok(slowed >= 3500, `4 guesses after 3 failures took only ${slowed} ms (first 3: ${free} ms)`);
    // The owner, from another address, gets in at once: no lockout.
    const t2 = Date.now();
    const ok = await guess(ADMIN.password, '127.0.0.2');
    assert.equal(ok.status, 200);
    assert.ok(Date.now() - t2 < 1500, `owner waited ${Date.now() - t2} ms`);
    // And from the guessing address, the right password still gets in: at once here, since it
    // was proven right a moment ago (the check is cached); at worst after one delay (≤ 8 s).
    const t3 = Date.now();
    assert.equal((await guess(ADMIN.password)).status, 200);
    assert.ok(Date.now() - t3 < 1500, `owner from the guessing address waited ${Date.now() - t3} ms`);
    // The guesser is still slowed there.
    const t4 = Date.now();
    assert.equal((await guess('again')).status, 401);
    assert.ok(Date.now() - t4 >= 1000, `a guess after the owner's login took ${Date.now() - t4} ms`);
  });
});

describe('password-hash gate', () => {
  // PBKDF2 is the one thing a client can make the node compute at will (a wrong password under
  // a fresh name is never slowed down); [chttpd_auth] max_concurrent_hashes bounds how many run
  // at once, and a check that finds no slot within hash_wait_ms gets 503 with Retry-After.
  let s;
  before(async () => {
    s = await startServer({ args: ['--set', `admins.${ADMIN.name}=${ADMIN.password}`,
      '--set', 'chttpd_auth.iterations=300000', '--set', 'chttpd_auth.max_concurrent_hashes=1',
      '--set', 'chttpd_auth.hash_wait_ms=300'] });
  });
  after(async () => { await s?.stop(); });

  test('parallel wrong passwords: one hash at a time, the rest wait briefly then get 503', async () => {
    // The owner proves the password once (one PBKDF2); later checks hit the cache.
    assert.equal((await req(s.url, 'GET', '/_session', { auth: ADMIN })).status, 200);
    // One hash's time, from three in a row: the bound on how early k serial hashes can end
    // takes the fastest (a loaded machine only makes a single sample slower, which would
    // make that bound wrongly strict), the bounds on waiting take the slowest.
    const ones = [];
    for (let i = 0; i < 3; i++) {
      const t0 = Date.now();
      assert.equal((await req(s.url, 'GET', '/', { auth: { name: `nobody0x${i}`, password: 'x' } })).status, 401);
      ones.push(Date.now() - t0);
    }
    const one = Math.max(...ones), fastest = Math.min(...ones);

    const N = 12;
    const started = Date.now();
    const flood = Array.from({ length: N }, (_, i) => req(s.url, 'GET', '/',
      { auth: { name: `nobody${i + 1}`, password: 'x' } }).then((r) => ({ ...r, ms: Date.now() - started })));
    // While the flood runs, a request that needs no hash is answered at once.
    await new Promise((r) => setTimeout(r, 50));
    const t1 = Date.now();
    const owner = await req(s.url, 'GET', '/_session', { auth: ADMIN });
    const ownerMs = Date.now() - t1;
    const results = await Promise.all(flood);
    const elapsed = Date.now() - started;

    assert.equal(owner.status, 200);
    assert.equal(owner.json.userCtx.name, 'root');
    assert.ok(ownerMs < Math.max(one, 1000), `a cached login waited ${ownerMs} ms behind the flood`);
    const checked = results.filter((r) => r.status === 401);
    const busy = results.filter((r) => r.status === 503);
    assert.equal(checked.length + busy.length, N, results.map((r) => r.status).join(','));
    assert.ok(busy.length >= 1, `no request was refused (one hash: ${one} ms, all ${elapsed} ms)`);
    assert.ok(checked.length >= 1);
    for (const r of busy) {
      assert.equal(r.headers['retry-after'], '1');
      assert.equal(r.json.error, 'service_unavailable');
      assert.match(r.json.reason, /password checks/);
      // Refused after about hash_wait_ms, not after the whole queue.
      assert.ok(r.ms < 300 + 3 * Math.max(one, 200) + 2000, `a refusal took ${r.ms} ms`);
    }
    // One at a time: the checked ones end one hash apart, so the last of k ends no earlier
    // than about k hashes after the start (in parallel on 2 cores it would be k/2).
    const lastChecked = Math.max(...checked.map((r) => r.ms));
    assert.ok(lastChecked >= 0.7 * checked.length * fastest,
      `${checked.length} hashes ended within ${lastChecked} ms (one: ${ones.join('/')} ms): more than one ran at once`);
  });

  test('a sign-up (a hash too) goes through the same gate', async () => {
    // Enough sign-ups that the queue outlasts hash_wait_ms (300) even where hashes are quick:
    // with 8, all got their slot in time in 2 runs of 5 on a fast machine (a flaky test).
    const N = 24;
    const rs = await Promise.all(Array.from({ length: N }, (_, i) => req(s.url, 'PUT',
      `/_users/org.couchdb.user:gate${i}`, { body: { name: `gate${i}`, password: 'pw', roles: [], type: 'user' } })));
    const codes = rs.map((r) => r.status);
    assert.ok(codes.every((c) => c === 201 || c === 503), codes.join(','));
    assert.ok(codes.includes(503), `no sign-up was refused: ${codes.join(',')}`);
    for (const r of rs.filter((x) => x.status === 503)) assert.equal(r.headers['retry-after'], '1');
    // A refused sign-up wrote nothing.
    const refused = rs.findIndex((r) => r.status === 503);
    assert.equal((await req(s.url, 'GET', `/_users/org.couchdb.user:gate${refused}`, { auth: ADMIN })).status, 404);
  });
});

describe('configuration switches', () => {
  test('[chttpd_auth] timeout: a cookie is renewed past half its life and dies at its end', async () => {
    const s = await startServer({ args: ['--set', `admins.${ADMIN.name}=${ADMIN.password}`, ...FAST,
      '--set', 'chttpd_auth.timeout=6', '--set', 'chttpd_auth.same_site=Strict'] });
    try {
      const res = await req(s.url, 'POST', '/_session', { body: ADMIN });
      assert.match(authSession(res), /Max-Age=6; Path=\/; HttpOnly; SameSite=Strict$/);
      const cookie = authSession(res).split(';')[0];
      const early = await req(s.url, 'GET', '/_session', { cookie });
      assert.equal(early.json.userCtx.name, 'root');
      assert.equal(authSession(early), undefined, 'no renewal in the first half');
      await new Promise((r) => setTimeout(r, 4000));
      const late = await req(s.url, 'GET', '/_session', { cookie });
      assert.equal(late.json.userCtx.name, 'root');
      const renewed = authSession(late);
      assert.ok(renewed, 'a fresh cookie past half the lifetime');
      await new Promise((r) => setTimeout(r, 3000));
      assert.equal((await req(s.url, 'GET', '/_session', { cookie })).json.userCtx.name, null, 'expired');
      assert.equal((await req(s.url, 'GET', '/_session', { cookie: renewed.split(';')[0] })).json.userCtx.name, 'root');
    } finally { await s.stop(); }
  });

  test('require_valid_user, WWW-Authenticate when configured', async () => {
    const s = await startServer({ args: ['--set', `admins.${ADMIN.name}=${ADMIN.password}`, ...FAST,
      '--set', 'chttpd.require_valid_user=true', '--set', 'httpd.WWW-Authenticate=Basic realm="mimeo"'] });
    try {
      const r = await req(s.url, 'GET', '/');
      assert.equal(r.status, 401);
      assert.equal(r.headers['www-authenticate'], 'Basic realm="mimeo"');
      assert.equal((await req(s.url, 'GET', '/_uuids')).status, 401);
      assert.equal((await req(s.url, 'GET', '/_up')).status, 200);
      assert.equal((await req(s.url, 'GET', '/', { auth: ADMIN })).status, 200);
      const c = await login(s.url, ADMIN.name, ADMIN.password);
      assert.equal((await req(s.url, 'GET', '/', { cookie: c })).status, 200);
    } finally { await s.stop(); }
  });

  test('CORS: off by default; listed origins with credentials; * never with credentials', async () => {
    const s = await startServer({ args: FAST });
    const origin = 'http://app.example';
    try {
      const r = await req(s.url, 'GET', '/', { headers: { origin } });
      assert.equal(r.headers['access-control-allow-origin'], undefined);
      assert.equal(r.headers['access-control-allow-credentials'], undefined);
    } finally { await s.stop(); }
    const s2 = await startServer({ args: [...FAST, '--set', 'cors.enable=true', '--set', `cors.origins=${origin}`,
      '--set', 'cors.credentials=true'] });
    try {
      const r = await req(s2.url, 'GET', '/', { headers: { origin } });
      assert.equal(r.headers['access-control-allow-origin'], origin);
      assert.equal(r.headers['access-control-allow-credentials'], 'true');
      const other = await req(s2.url, 'GET', '/', { headers: { origin: 'http://evil.example' } });
      assert.equal(other.headers['access-control-allow-origin'], undefined);
      const pre = await req(s2.url, 'OPTIONS', '/db', { headers: { origin, 'access-control-request-method': 'PUT' } });
      assert.equal(pre.headers['access-control-allow-origin'], origin);
      assert.match(pre.headers['access-control-allow-methods'], /PUT/);
    } finally { await s2.stop(); }
    const s3 = await startServer({ args: [...FAST, '--set', 'cors.enable=true', '--set', 'cors.origins=*',
      '--set', 'cors.credentials=true'] });
    try {
      const r = await req(s3.url, 'GET', '/', { headers: { origin } });
      assert.equal(r.headers['access-control-allow-origin'], '*');
      assert.equal(r.headers['access-control-allow-credentials'], undefined);
    } finally { await s3.stop(); }
  });
});

describe('real clients', () => {
  let s;
  before(async () => {
    s = await startServer({ args: ['--set', `admins.${ADMIN.name}=${ADMIN.password}`, ...FAST] });
  });
  after(async () => { await s?.stop(); });

  test('PouchDB logs in with /_session and syncs a user\'s database by cookie', async () => {
    await putUser(s.url, 'pat', 'pw-pat');
    const db = uniqueDbName('userdb');
    await req(s.url, 'PUT', `/${db}`, { auth: ADMIN });
    await req(s.url, 'PUT', `/${db}/_security`, { auth: ADMIN, body: { admins: { names: ['pat'] }, members: { names: ['pat'] } } });
    const cookie = await login(s.url, 'pat', 'pw-pat');
    const fetchWithCookie = (u, opts = {}) => {
      opts.headers.set('Cookie', cookie);
      return PouchDB.fetch(u, opts);
    };
    const remote = new PouchDB(`${s.url}/${db}`, { fetch: fetchWithCookie, skip_setup: true });
    const local = memoryDb('pat');
    await local.bulkDocs(Array.from({ length: 20 }, (_, i) => ({ _id: `d${i}`, n: i })));
    await remote.put({ _id: 'from-server', v: 1 });
    await local.sync(remote);
    assert.equal((await remote.allDocs()).total_rows, 21);
    assert.equal((await local.allDocs()).total_rows, 21);
    // Without the cookie the same database is closed.
    const anon = new PouchDB(`${s.url}/${db}`, { skip_setup: true });
    await assert.rejects(anon.allDocs(), (e) => e.status === 401);
    await local.destroy();
  });

  test('nano with cookie auth', async () => {
    const n = nano({ url: s.url, requestDefaults: { jar: true } });
    const who = await n.auth(ADMIN.name, ADMIN.password);
    assert.equal(who.ok, true);
    assert.deepEqual(who.roles, ['_admin']);
    const name = uniqueDbName('nano');
    await n.db.create(name);
    const d = n.use(name);
    await d.insert({ a: 1 }, 'x');
    assert.equal((await d.get('x')).a, 1);
    const sess = await n.session();
    assert.equal(sess.userCtx.name, 'root');
    assert.equal(sess.info.authenticated, 'cookie');
    await n.db.destroy(name);
    await assert.rejects(nano(s.url).db.list(), (e) => e.statusCode === 401);
  });
});

describe('_replicator documents belong to their writer', () => {
  let s;
  before(async () => {
    s = await startServer({ args: ['--set', `admins.${ADMIN.name}=${ADMIN.password}`, ...FAST] });
  });
  after(async () => { await s?.stop(); });

  test('owner set by the server, hidden from others, URLs required, and the job runs as its owner', async () => {
    await putUser(s.url, 'rita', 'r-pw');
    await putUser(s.url, 'sam', 's-pw');
    const rita = { name: 'rita', password: 'r-pw' };
    const sam = { name: 'sam', password: 's-pw' };
    const src = uniqueDbName('rsrc'), dst = uniqueDbName('rdst');
    for (const db of [src, dst]) {
      await req(s.url, 'PUT', `/${db}`, { auth: ADMIN });
      await req(s.url, 'PUT', `/${db}/_security`, { auth: ADMIN, body: { members: { names: ['rita'] } } });
    }
    for (let i = 0; i < 5; i++) await req(s.url, 'PUT', `/${src}/d${i}`, { auth: rita, body: { i } });
    const withCreds = (db) => `http://rita:r-pw@${new URL(s.url).host}/${db}`;
    // Local names would let the job bypass _security: refused for non-admins.
    const local = await req(s.url, 'PUT', '/_replicator/job-local', { auth: rita, body: { source: src, target: dst } });
    assert.equal(local.status, 403);
    assert.equal((await req(s.url, 'PUT', '/_replicator/job-anon', { body: { source: withCreds(src), target: withCreds(dst) } })).status, 401);
    // Claiming another owner is refused.
    assert.equal((await req(s.url, 'PUT', '/_replicator/job-x', { auth: rita,
      body: { source: withCreds(src), target: withCreds(dst), owner: 'sam' } })).status, 403);
    const put = await req(s.url, 'PUT', '/_replicator/job1', { auth: rita, body: { source: withCreds(src), target: withCreds(dst) } });
    assert.equal(put.status, 201, put.text);
    const mine = await req(s.url, 'GET', '/_replicator/job1', { auth: rita });
    assert.equal(mine.status, 200);
    assert.equal(mine.json.owner, 'rita');
    // Others see nothing (the credentials in the URLs reach no one else) and change nothing.
    assert.equal((await req(s.url, 'GET', '/_replicator/job1', { auth: sam })).status, 404);
    assert.equal((await req(s.url, 'GET', '/_replicator/job1')).status, 401);
    assert.equal((await req(s.url, 'GET', '/_replicator/_all_docs', { auth: sam })).status, 403);
    assert.equal((await req(s.url, 'PUT', '/_replicator/job1', { auth: sam,
      body: { _rev: mine.json._rev, source: 'http://evil/x', target: withCreds(dst) } })).status, 403);
    assert.equal((await req(s.url, 'DELETE', `/_replicator/job1?rev=${mine.json._rev}`, { auth: sam })).status, 403);
    assert.equal((await req(s.url, 'GET', '/_replicator/job1', { auth: ADMIN })).status, 200);
    // The job acts with rita's credentials and completes.
    await waitFor(async () => (await req(s.url, 'GET', '/_replicator/job1', { auth: rita })).json._replication_state === 'completed',
      { timeout: 30000 });
    assert.equal((await req(s.url, 'GET', `/${dst}/_all_docs`, { auth: rita })).json.total_rows, 5);
  });
});

describe('[replicator] allowed_hosts', () => {
  let s;
  before(async () => {
    s = await startServer({ args: ['--set', `admins.${ADMIN.name}=${ADMIN.password}`, ...FAST,
      '--set', 'replicator.allowed_hosts=127.0.0.1, [::1]:5984'] });
  });
  after(async () => { await s?.stop(); });

  test('replications may not name other hosts, whoever asks, however the URL is written', async () => {
    const db = uniqueDbName('ah');
    await req(s.url, 'PUT', `/${db}`, { auth: ADMIN });
    for (const target of ['http://10.0.0.1:5984/x', 'http://localhost:5984/x', 'http://127.0.0.1@169.254.169.254/x',
      { url: 'http://192.168.0.1/x' }, 'https://[::1]:6984/x', 'http://127.0.0.1.evil.example/x']) {
      const r = await req(s.url, 'POST', '/_replicate', { auth: ADMIN, body: { source: db, target } });
      assert.equal(r.status, 403, `${JSON.stringify(target)}: ${r.text}`);
      assert.match(r.json.reason, /allowed_hosts/);
      const d = await req(s.url, 'PUT', `/_replicator/j${Math.random().toString(36).slice(2)}`,
        { auth: ADMIN, body: { source: db, target } });
      assert.equal(d.status, 403, `_replicator ${JSON.stringify(target)}`);
    }
    // Listed hosts pass (any port for a bare host).
    const ok = await req(s.url, 'POST', '/_replicate', { auth: ADMIN,
      body: { source: db, target: `http://root:${ADMIN.password}@${new URL(s.url).host}/${db}-copy`, create_target: true } });
    assert.equal(ok.status, 200, ok.text);
  });

  test('jobs that bypass the request checks are refused by the replicator itself', async () => {
    // _bulk_docs into _replicator (and new_edits=false, as a replication writes) never passes
    // the checks of single-document writes: the replicator checks every job it starts.
    const db = uniqueDbName('ahb');
    await req(s.url, 'PUT', `/${db}`, { auth: ADMIN });
    const id1 = `bulk-${Date.now()}`, id2 = `repl-${Date.now()}`;
    const b1 = await req(s.url, 'POST', '/_replicator/_bulk_docs', { auth: ADMIN,
      body: { docs: [{ _id: id1, source: db, target: 'http://10.0.0.1:5984/x', continuous: true }] } });
    assert.equal(b1.status, 201, b1.text);
    const b2 = await req(s.url, 'POST', '/_replicator/_bulk_docs', { auth: ADMIN,
      body: { new_edits: false, docs: [{ _id: id2, _rev: '1-0123456789abcdef0123456789abcdef',
        source: 'http://169.254.169.254/latest', target: db }] } });
    assert.equal(b2.status, 201, b2.text);
    for (const id of [id1, id2]) {
      let d;
      await waitFor(async () => {
        d = await req(s.url, 'GET', `/_scheduler/docs/_replicator/${id}`, { auth: ADMIN });
        return d.status === 200 && d.json.state === 'failed';
      }, { timeout: 20000, message: `${id} not failed` });
      assert.match(JSON.stringify(d.json), /allowed_hosts/);
      const doc = await req(s.url, 'GET', `/_replicator/${id}`, { auth: ADMIN });
      assert.equal(doc.json._replication_state, 'failed');
      assert.match(doc.json._replication_state_reason, /allowed_hosts/);
    }
  });
});
