// The permission matrix: every endpoint mimeo serves × {anonymous, user, member, db admin,
// server admin} → the status CouchDB 3.5 answers. The table is written from CouchDB's
// documentation (docs.couchdb.org: "Security", "Authentication", "/db/_security",
// "Database endpoints" and chttpd_auth_request.erl's rules); cells marked `?` are ones the
// documentation leaves open, with the reason beside them. A failure prints the cell.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startServer } from './lib/server.mjs';
import { uniqueDbName } from './lib/util.mjs';

const ROLES = ['anonymous', 'user', 'member', 'dbadmin', 'admin'];
const PW = { user: 'pw-u', member: 'pw-m', dbadmin: 'pw-d', admin: 'pw-a' };
const NAME = { user: 'uma', member: 'mel', dbadmin: 'dan', admin: 'root' };

function req(base, method, p, { body, role } = {}) {
  const u = new URL(base);
  const headers = { accept: 'application/json', 'content-type': 'application/json' };
  const payload = body === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(body));
  headers['content-length'] = String(payload.length);
  if (role && role !== 'anonymous') {
    headers.authorization = 'Basic ' + Buffer.from(`${NAME[role]}:${PW[role]}`).toString('base64');
  }
  return new Promise((resolve, reject) => {
    const r = http.request({ host: u.hostname, port: u.port, method, path: p, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString() }));
    });
    r.on('error', reject);
    r.end(payload);
  });
}

// [method, path (DB = the test database, ROLE = the caller's role), body, expected per role,
//  note for uncertain cells]
const A = 401; const F = 403;
const MATRIX = [
  ['GET', '/', undefined, [200, 200, 200, 200, 200]],
  ['GET', '/_up', undefined, [200, 200, 200, 200, 200]],
  ['GET', '/_uuids', undefined, [200, 200, 200, 200, 200]],
  ['GET', '/_session', undefined, [200, 200, 200, 200, 200]],
  ['GET', '/_all_dbs', undefined, [A, F, F, F, 200], '[chttpd] admin_only_all_dbs = true is 3.x\'s default'],
  ['GET', '/_active_tasks', undefined, [A, F, F, F, 200]],
  ['GET', '/_scheduler/jobs', undefined, [A, F, F, F, 200]],
  ['GET', '/_scheduler/docs', undefined, [A, F, F, F, 200], '? CouchDB filters docs per user; mimeo asks for a server admin'],
  ['GET', '/_node/_local/_config', undefined, [A, F, F, F, 404], '? admin cell: CouchDB serves its config API (200), mimeo has none'],
  ['PUT', '/newdb-ROLE', undefined, [A, F, F, F, 201]],
  ['DELETE', '/victim-ROLE', undefined, [A, F, F, F, 200]],
  ['GET', '/DB', undefined, [A, F, 200, 200, 200]],
  ['HEAD', '/DB', undefined, [A, F, 200, 200, 200]],
  ['GET', '/DB/_all_docs', undefined, [A, F, 200, 200, 200]],
  ['POST', '/DB/_all_docs', { keys: ['d1'] }, [A, F, 200, 200, 200]],
  ['GET', '/DB/_design_docs', undefined, [A, F, 200, 200, 200]],
  ['GET', '/DB/_changes', undefined, [A, F, 200, 200, 200]],
  ['GET', '/DB/d1', undefined, [A, F, 200, 200, 200]],
  ['GET', '/DB/_design/app', undefined, [A, F, 200, 200, 200]],
  ['PUT', '/DB/doc-ROLE', { v: 1 }, [A, F, 201, 201, 201]],
  ['POST', '/DB', { _id: 'post-ROLE' }, [A, F, 201, 201, 201]],
  ['POST', '/DB/_bulk_docs', { docs: [{ _id: 'bulk-ROLE' }] }, [A, F, 201, 201, 201]],
  ['POST', '/DB/_bulk_get', { docs: [{ id: 'd1' }] }, [A, F, 200, 200, 200]],
  ['POST', '/DB/_revs_diff', { d1: ['1-abc'] }, [A, F, 200, 200, 200]],
  ['PUT', '/DB/_local/ck-ROLE', { last_seq: 1 }, [A, F, 201, 201, 201]],
  ['GET', '/DB/_revs_limit', undefined, [A, F, 200, 200, 200]],
  ['PUT', '/DB/_revs_limit', 1000, [A, F, F, 200, 200]],
  ['POST', '/DB/_ensure_full_commit', {}, [A, F, 201, 201, 201]],
  ['GET', '/DB/_security', undefined, [A, F, 200, 200, 200]],
  ['PUT', '/DB/_security', 'SECURITY', [A, F, F, 200, 200]],
  ['PUT', '/DB/_design/ddoc-ROLE', { views: {} }, [A, F, F, 201, 201]],
  // A member's request is served; its design document entry alone is refused (per-entry
  // "forbidden", security_bulk_design.test.mjs), as CouchDB does.
  ['POST', '/DB/_bulk_docs', { docs: [{ _id: '_design/bulk-ROLE' }] }, [A, F, 201, 201, 201]],
  ['POST', '/DB/_compact', {}, [A, F, F, 202, 202]],
  ['GET', '/_users/_all_docs', undefined, [A, F, F, F, 200]],
  ['GET', '/_users/_changes', undefined, [A, F, F, F, 200]],
  ['GET', '/_users/org.couchdb.user:mel', undefined, [404, 404, 200, 404, 200], 'the member role is user "mel" itself: own document only'],
  ['GET', '/_replicator/_all_docs', undefined, [A, F, F, F, 200]],
  ['POST', '/_replicate', { source: 'DB', target: 'copy-ROLE', create_target: true }, [A, F, F, F, 200], '? non-admins may replicate between URLs (their credentials); local names need an admin'],
];

describe('permission matrix (CouchDB 3.5 statuses)', () => {
  let s, db, security;
  before(async () => {
    s = await startServer({ args: ['--set', `admins.root=${PW.admin}`, '--set', 'chttpd_auth.iterations=1000'] });
    for (const role of ['user', 'member', 'dbadmin']) {
      const r = await req(s.url, 'PUT', `/_users/org.couchdb.user:${NAME[role]}`,
        { role: 'admin', body: { name: NAME[role], password: PW[role], roles: [], type: 'user' } });
      assert.equal(r.status, 201, r.text);
    }
    db = uniqueDbName('matrix');
    security = { admins: { names: [NAME.dbadmin], roles: [] }, members: { names: [NAME.member], roles: [] } };
    assert.equal((await req(s.url, 'PUT', `/${db}`, { role: 'admin' })).status, 201);
    assert.equal((await req(s.url, 'PUT', `/${db}/_security`, { role: 'admin', body: security })).status, 200);
    assert.equal((await req(s.url, 'PUT', `/${db}/d1`, { role: 'admin', body: { a: 1 } })).status, 201);
    assert.equal((await req(s.url, 'PUT', `/${db}/_design/app`, { role: 'admin', body: {} })).status, 201);
    for (const role of ROLES) {
      assert.equal((await req(s.url, 'PUT', `/victim-${role}`, { role: 'admin' })).status, 201);
    }
  });
  after(async () => { await s?.stop(); });

  for (const [method, pathT, bodyT, expected, note] of MATRIX) {
    test(`${method} ${pathT}${note ? ` (${note})` : ''}`, async () => {
      const got = [];
      for (const role of ROLES) {
        const p = pathT.replace('DB', db).replace('ROLE', role);
        let body = bodyT === 'SECURITY' ? security : bodyT;
        if (body !== undefined) body = JSON.parse(JSON.stringify(body).replaceAll('ROLE', role).replaceAll('"DB"', JSON.stringify(db)));
        const r = await req(s.url, method, p, { role, body });
        got.push(r.status);
      }
      assert.deepEqual(Object.fromEntries(ROLES.map((r, i) => [r, got[i]])),
        Object.fromEntries(ROLES.map((r, i) => [r, expected[i]])), `${method} ${pathT}`);
    });
  }
});
