// validate_doc_update: CouchDB's replies for rejected interactive, bulk and replicated writes
// (403 forbidden / 401 unauthorized, per entry in _bulk_docs), replication going on past the
// rejected documents (mimeo → mimeo over HTTP and into a local target, PouchDB pushing), the
// userCtx and secObj the function sees, and hostile functions (an endless loop, a syntax
// error, require('fs')) each giving its error while the server goes on.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import { request } from './lib/http.mjs';
import { PouchDB, memoryDb } from './lib/pouch.mjs';
import { freePort, postReplicate } from './lib/repl_peers.mjs';

const TIMEOUT_MS = 1500;

// Rejects documents with `bad` (forbidden) or `secret` (unauthorized); `echo` reports what the
// function was given; `spin` never returns.
const VDU = `function(newDoc, oldDoc, userCtx, secObj) {
  if (newDoc.spin) { while (true) {} }
  if (newDoc.bad) throw({forbidden: 'bad documents are refused'});
  if (newDoc.secret) throw({unauthorized: 'only for the owner'});
  var seen = {newDoc: newDoc, oldDoc: oldDoc, name: userCtx.name, roles: userCtx.roles,
    db: userCtx.db, sec: secObj};
  if (newDoc.echo) throw({forbidden: JSON.stringify(newDoc.echo === true ? seen : seen[newDoc.echo])});
}`;

const put = (base, p, body, opts = {}) => request(base, 'PUT', p, { body, ...opts });
const post = (base, p, body, opts = {}) => request(base, 'POST', p, { body, ...opts });

async function makeDb(base, db, vdu = VDU) {
  assert.equal((await put(base, `/${db}`)).status, 201);
  const r = await put(base, `/${db}/_design/rules`, { validate_doc_update: vdu });
  assert.equal(r.status, 201, r.text);
}

let S;
before(async () => {
  S = await startServer({ args: ['--set', `couchdb.os_process_timeout=${TIMEOUT_MS}`] });
});
after(async () => { await S?.stop(); });

describe('interactive writes', () => {
  before(async () => { await makeDb(S.url, 'inter'); });

  test('forbidden → 403 and unauthorized → 401 with CouchDB bodies; nothing stored', async () => {
    let r = await put(S.url, '/inter/a', { bad: true });
    assert.equal(r.status, 403);
    assert.deepEqual(r.json, { error: 'forbidden', reason: 'bad documents are refused' });
    r = await post(S.url, '/inter', { _id: 'b', secret: 1 });
    assert.equal(r.status, 401);
    assert.deepEqual(r.json, { error: 'unauthorized', reason: 'only for the owner' });
    assert.equal((await request(S.url, 'GET', '/inter/a')).status, 404);
    assert.equal((await request(S.url, 'GET', '/inter/b')).status, 404);
    r = await put(S.url, '/inter/c', { fine: true });
    assert.equal(r.status, 201, r.text);
  });

  test('updates and deletes are validated with newDoc and oldDoc as CouchDB builds them', async () => {
    const c1 = await put(S.url, '/inter/d', { v: 1 });
    assert.equal(c1.status, 201);
    // Interactive replies carry at most 199 bytes of reason: one part at a time.
    let r = await put(S.url, `/inter/d?rev=${c1.json.rev}`, { v: 2, echo: 'newDoc' });
    assert.equal(r.status, 403);
    assert.deepEqual(JSON.parse(r.json.reason), { _id: 'd', _rev: c1.json.rev, v: 2, echo: 'newDoc' });
    r = await put(S.url, `/inter/d?rev=${c1.json.rev}`, { v: 2, echo: 'oldDoc' });
    assert.deepEqual(JSON.parse(r.json.reason), { _id: 'd', _rev: c1.json.rev, v: 1 });
    r = await put(S.url, `/inter/d?rev=${c1.json.rev}`, { v: 2, echo: 'db' });
    assert.equal(JSON.parse(r.json.reason), 'inter');
    // No admin is configured: a loopback client is a server admin.
    r = await put(S.url, `/inter/d?rev=${c1.json.rev}`, { v: 2, echo: 'roles' });
    assert.deepEqual(JSON.parse(r.json.reason), ['_admin']);
    r = await put(S.url, '/inter/new', { echo: 'oldDoc' });
    assert.equal(JSON.parse(r.json.reason), null);
    // A delete is a write like any other: the tombstone is what the function sees.
    const c2 = await put(S.url, '/inter/e', { v: 1 });
    r = await put(S.url, `/inter/e?rev=${c2.json.rev}`, { _deleted: true, bad: true });
    assert.equal(r.status, 403);
    r = await request(S.url, 'DELETE', `/inter/e?rev=${c2.json.rev}`);
    assert.equal(r.status, 200, r.text);
  });

  test('design documents are validated too', async () => {
    const r = await put(S.url, '/inter/_design/other', { bad: true, views: {} });
    assert.equal(r.status, 403);
    assert.equal(r.json.error, 'forbidden');
  });

  test('_local documents are not validated (CouchDB)', async () => {
    const r = await put(S.url, '/inter/_local/x', { bad: true });
    assert.equal(r.status, 201, r.text);
  });
});

describe('_bulk_docs', () => {
  before(async () => { await makeDb(S.url, 'bulk'); });

  test('new_edits=true: rejected documents are per-entry errors, the rest are written', async () => {
    const r = await post(S.url, '/bulk/_bulk_docs', {
      docs: [{ _id: 'ok1' }, { _id: 'no1', bad: 1 }, { _id: 'no2', secret: 1 }, { _id: 'ok2' }],
    });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json.length, 4);
    assert.equal(r.json[0].ok, true);
    assert.deepEqual(r.json[1], { id: 'no1', error: 'forbidden', reason: 'bad documents are refused' });
    assert.deepEqual(r.json[2], { id: 'no2', error: 'unauthorized', reason: 'only for the owner' });
    assert.equal(r.json[3].ok, true);
    const all = await request(S.url, 'GET', '/bulk/_all_docs');
    assert.deepEqual(all.json.rows.map((x) => x.id).sort(), ['_design/rules', 'ok1', 'ok2']);
  });

  test('new_edits=false: the reply lists the rejected revisions', async () => {
    const r = await post(S.url, '/bulk/_bulk_docs', {
      new_edits: false,
      docs: [
        { _id: 'r1', _rev: '1-aaaa', _revisions: { start: 1, ids: ['aaaa'] } },
        { _id: 'r2', _rev: '1-bbbb', bad: true },
        { _id: 'r3', _rev: '2-cccc', _revisions: { start: 2, ids: ['cccc', 'dddd'] }, echo: true },
      ],
    });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json.length, 2);
    assert.deepEqual(r.json[0], { id: 'r2', rev: '1-bbbb', error: 'forbidden',
      reason: 'bad documents are refused' });
    const seen = JSON.parse(r.json[1].reason);
    assert.deepEqual(seen.newDoc, { _id: 'r3', _rev: '2-cccc',
      _revisions: { start: 2, ids: ['cccc', 'dddd'] }, echo: true });
    assert.equal(seen.oldDoc, null);
    assert.equal((await request(S.url, 'GET', '/bulk/r1')).status, 200);
    assert.equal((await request(S.url, 'GET', '/bulk/r2')).status, 404);
  });

  test('all_or_nothing with a rejected document writes nothing (417)', async () => {
    const r = await post(S.url, '/bulk/_bulk_docs', {
      all_or_nothing: true, docs: [{ _id: 'aon1' }, { _id: 'aon2', bad: 1 }],
    });
    assert.equal(r.status, 417, r.text);
    assert.equal((await request(S.url, 'GET', '/bulk/aon1')).status, 404);
  });
});

describe('replication', () => {
  let B;
  const docs = [];
  for (let i = 0; i < 20; i++) docs.push({ _id: `doc-${String(i).padStart(2, '0')}`, n: i, bad: i % 4 === 0 });

  before(async () => {
    B = await startServer({ args: ['--port', String(await freePort())] });
    assert.equal((await put(S.url, '/source')).status, 201);
    const r = await post(S.url, '/source/_bulk_docs', { docs });
    assert.equal(r.status, 201);
  });
  after(async () => { await B?.stop(); });

  const accepted = docs.filter((d) => !d.bad).map((d) => d._id);
  const rejected = docs.length - accepted.length;

  async function targetIds(url, db) {
    const all = await request(url, 'GET', `/${db}/_all_docs`);
    return all.json.rows.map((x) => x.id).filter((id) => !id.startsWith('_design/'));
  }

  test('mimeo → mimeo over HTTP: accepted docs land, the rest are doc_write_failures', async () => {
    await makeDb(B.url, 'target');
    const r = await postReplicate(B.url, { source: `${S.url}/source`, target: `${B.url}/target` });
    assert.equal(r.status, 200, r.text);
    const h = r.json.history[0];
    assert.equal(h.docs_read, docs.length);
    assert.equal(h.docs_written, accepted.length);
    assert.equal(h.doc_write_failures, rejected);
    assert.deepEqual(await targetIds(B.url, 'target'), accepted);
  });

  test('into a local target (the in-process endpoint) the same', async () => {
    await makeDb(B.url, 'ltarget');
    const r = await postReplicate(B.url, { source: `${S.url}/source`, target: 'ltarget' });
    assert.equal(r.status, 200, r.text);
    const h = r.json.history[0];
    assert.equal(h.docs_written, accepted.length);
    assert.equal(h.doc_write_failures, rejected);
    assert.deepEqual(await targetIds(B.url, 'ltarget'), accepted);
  });

  test('PouchDB pushing: rejected docs are write failures, the others are replicated', async () => {
    await makeDb(B.url, 'pouchtarget');
    const local = memoryDb('vdu');
    await local.bulkDocs(docs);
    const res = await local.replicate.to(new PouchDB(`${B.url}/pouchtarget`));
    assert.equal(res.ok, true);
    assert.equal(res.docs_written, accepted.length);
    assert.equal(res.doc_write_failures, rejected);
    assert.deepEqual(await targetIds(B.url, 'pouchtarget'), accepted);
    await local.destroy();
  });
});

describe('userCtx and secObj', () => {
  const ADMIN = { name: 'root', password: 'r00t-pw' };
  const auth = (u) => ({ authorization: 'Basic ' + Buffer.from(`${u.name}:${u.password}`).toString('base64') });
  let A;
  before(async () => {
    A = await startServer({ args: ['--port', String(await freePort()), '--set', `admins.${ADMIN.name}=${ADMIN.password}`,
      '--set', 'chttpd_auth.iterations=1000'] });
    const h = { headers: auth(ADMIN) };
    assert.equal((await put(A.url, '/users_db', undefined, h)).status, 201);
    let r = await put(A.url, '/users_db/_design/rules', { validate_doc_update: VDU }, h);
    assert.equal(r.status, 201, r.text);
    r = await put(A.url, '/users_db/_security',
      { admins: { names: [], roles: [] }, members: { names: ['alice'], roles: [] } }, h);
    assert.equal(r.status, 200, r.text);
    r = await put(A.url, '/_users/org.couchdb.user:alice',
      { name: 'alice', password: 'alice-pw', roles: ['editor'], type: 'user' }, h);
    assert.equal(r.status, 201, r.text);
  });
  after(async () => { await A?.stop(); });

  test('a Basic user: name and roles reach the function, with the _security object', async () => {
    const r = await post(A.url, '/users_db/_bulk_docs', { docs: [{ _id: 'x', echo: true }] },
      { headers: auth({ name: 'alice', password: 'alice-pw' }) });
    assert.equal(r.status, 201, r.text);
    const seen = JSON.parse(r.json[0].reason);
    assert.equal(seen.name, 'alice');
    assert.deepEqual(seen.roles, ['editor']);
    assert.deepEqual(seen.sec.members, { names: ['alice'], roles: [] });
    const ok = await put(A.url, '/users_db/y', { fine: 1 },
      { headers: auth({ name: 'alice', password: 'alice-pw' }) });
    assert.equal(ok.status, 201, ok.text);
  });

  test('a session user in _bulk_docs; a server admin has the _admin role', async () => {
    const login = await post(A.url, '/_session', { name: 'alice', password: 'alice-pw' });
    assert.equal(login.status, 200, login.text);
    const cookie = [].concat(login.headers['set-cookie'])[0].split(';')[0];
    let r = await post(A.url, '/users_db/_bulk_docs', { docs: [{ _id: 'z', echo: true }] },
      { headers: { cookie } });
    assert.equal(r.status, 201, r.text);
    assert.equal(JSON.parse(r.json[0].reason).name, 'alice');
    r = await put(A.url, '/users_db/w', { echo: 'name' }, { headers: auth(ADMIN) });
    assert.equal(r.status, 403, r.text);
    assert.equal(JSON.parse(r.json.reason), 'root');
    r = await put(A.url, '/users_db/w', { echo: 'roles' }, { headers: auth(ADMIN) });
    assert.ok(JSON.parse(r.json.reason).includes('_admin'));
  });
});

describe('hostile functions', () => {
  test('an endless loop: 500 os_process_error within the timeout, the next write works', async () => {
    await makeDb(S.url, 'spin');
    const t0 = Date.now();
    let r = await put(S.url, '/spin/a', { spin: true });
    const took = Date.now() - t0;
    assert.equal(r.status, 500, r.text);
    assert.equal(r.json.error, 'os_process_error');
    assert.ok(took >= TIMEOUT_MS - 100 && took < TIMEOUT_MS + 5000, `took ${took} ms`);
    r = await put(S.url, '/spin/b', { fine: true });
    assert.equal(r.status, 201, r.text);
    r = await post(S.url, '/spin/_bulk_docs', { docs: [{ _id: 'c' }, { _id: 'd', spin: 1 }, { _id: 'e' }] });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json[0].ok, true);
    assert.equal(r.json[1].error, 'os_process_error');
    assert.equal(r.json[2].ok, true);
  });

  test('a syntax error: 400 compilation_error, other databases unaffected', async () => {
    await makeDb(S.url, 'syntax', 'function(newDoc) { if ( }');
    const r = await put(S.url, '/syntax/a', { x: 1 });
    assert.equal(r.status, 400, r.text);
    assert.equal(r.json.error, 'compilation_error');
    assert.equal((await put(S.url, '/inter/after-syntax', { x: 1 })).status, 201);
  });

  test("require('fs'): an error for the write, the server goes on", async () => {
    await makeDb(S.url, 'fsdb', "function(newDoc) { var fs = require('fs'); fs.readFileSync('/etc/passwd'); }");
    const r = await put(S.url, '/fsdb/a', { x: 1 });
    assert.equal(r.status, 500, r.text);
    assert.match(r.json.reason, /fs/);
    assert.equal((await request(S.url, 'GET', '/fsdb/a')).status, 404);
    const after = await put(S.url, '/inter/after-fs', { x: 1 });
    assert.equal(after.status, 201, after.text);
  });
});

test('a new, changed or deleted design document takes effect at the next write', async () => {
  assert.equal((await put(S.url, '/changing')).status, 201);
  assert.equal((await put(S.url, '/changing/a', { bad: true })).status, 201);
  let d = await put(S.url, '/changing/_design/one', { validate_doc_update: VDU });
  assert.equal((await put(S.url, '/changing/b', { bad: true })).status, 403);
  d = await put(S.url, `/changing/_design/one?rev=${d.json.rev}`,
    { validate_doc_update: "function(n) { if (n.red) throw({forbidden: 'no red'}); }" });
  assert.equal(d.status, 201, d.text);
  assert.equal((await put(S.url, '/changing/c', { bad: true })).status, 201);
  let r = await put(S.url, '/changing/d', { red: true });
  assert.deepEqual([r.status, r.json.reason], [403, 'no red']);
  // A second design document adds its rules; both run.
  const two = await put(S.url, '/changing/_design/two', { validate_doc_update: VDU });
  assert.equal(two.status, 201, two.text);
  assert.equal((await put(S.url, '/changing/e', { bad: true })).status, 403);
  assert.equal((await put(S.url, '/changing/f', { red: true })).status, 403);
  assert.equal((await request(S.url, 'DELETE', `/changing/_design/one?rev=${d.json.rev}`)).status, 200);
  assert.equal((await put(S.url, '/changing/g', { red: true })).status, 201);
  r = await request(S.url, 'DELETE', `/changing/_design/two?rev=${two.json.rev}`);
  assert.equal(r.status, 200);
  assert.equal((await put(S.url, '/changing/h', { bad: true })).status, 201);
});

test('the validate functions of one database do not apply to another', async () => {
  assert.equal((await put(S.url, '/plain')).status, 201);
  const r = await post(S.url, '/plain/_bulk_docs', { docs: [{ _id: 'p', bad: true }] });
  assert.equal(r.json[0].ok, true);
});
