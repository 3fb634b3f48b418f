// An admin's /_replicate to a target that does not exist, without create_target: CouchDB 3.x
// answers 500 {"error":"db_not_found","reason":"could not open <url>"} — its
// couch_replicator_httpd:handle_req sends every {error, {Error, Reason}} with 500 (only
// CouchDB 1.x used 404). The URL in the reason carries no credentials.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import { request } from './lib/http.mjs';

const ADMIN = { authorization: 'Basic ' + Buffer.from('root:pw').toString('base64') };

describe('replication to a missing target', () => {
  let s;
  before(async () => {
    s = await startServer({ args: ['--set', 'admins.root=pw', '--set', 'chttpd_auth.iterations=1000'] });
    assert.equal((await request(s.url, 'PUT', '/src', { headers: ADMIN })).status, 201);
  });
  after(async () => { await s?.stop(); });

  test('a local name and a URL with credentials: 500 db_not_found, "could not open"', async () => {
    const local = await request(s.url, 'POST', '/_replicate', { headers: ADMIN, body: { source: 'src', target: 'nope' } });
    assert.equal(local.status, 500, local.text);
    assert.deepEqual(local.json, { error: 'db_not_found', reason: 'could not open nope' });
    const u = new URL(s.url);
    const remote = await request(s.url, 'POST', '/_replicate', { headers: ADMIN,
      body: { source: 'src', target: `http://root:pw@${u.host}/nope` } });
    assert.equal(remote.status, 500, remote.text);
    assert.equal(remote.json.error, 'db_not_found');
    assert.equal(remote.json.reason, `could not open http://${u.host}/nope/`);
    assert.equal((await request(s.url, 'GET', '/nope', { headers: ADMIN })).status, 404);
  });
});
