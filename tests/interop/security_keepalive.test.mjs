// Credentials on a kept-alive connection: the server remembers what a connection has proven
// (to skip the base64 and the password proof on every request), and must still see at once a
// password changed, roles changed, a user removed, and a different header on the same
// connection. Every request below goes over one socket (an agent with one kept-alive socket).

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startServer } from './lib/server.mjs';

const FAST = ['--set', 'chttpd_auth.iterations=1000', '--set', 'admins.root=r00t-pw'];

describe('credentials on a kept-alive connection', () => {
  let s, agent;
  const sockets = new Set();
  before(async () => {
    s = await startServer({ args: FAST });
    agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  });
  after(async () => {
    agent?.destroy();
    await s?.stop();
  });

  /** One request over the shared socket; auth is [name, password] or a cookie string. */
  function req(method, p, { auth, cookie, body, fresh } = {}) {
    return new Promise((resolve, reject) => {
      const headers = { 'content-type': 'application/json' };
      if (auth) headers.authorization = 'Basic ' + Buffer.from(auth.join(':')).toString('base64');
      if (cookie) headers.cookie = cookie;
      const r = http.request(s.url + p, { method, headers, agent: fresh ? false : agent }, (res) => {
        if (!fresh) sockets.add(res.socket);
        let text = '';
        res.on('data', (c) => { text += c; });
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers,
          body: text ? JSON.parse(text) : null }));
      });
      r.on('error', reject);
      r.end(body === undefined ? undefined : JSON.stringify(body));
    });
  }
  const root = ['root', 'r00t-pw'];

  test('a changed password, changed roles and a removed user count on the same connection', async () => {
    assert.equal((await req('PUT', '/kept', { auth: root, fresh: true })).status, 201);
    const sec = { admins: { names: [], roles: [] }, members: { names: [], roles: ['crew'] } };
    assert.equal((await req('PUT', '/kept/_security', { auth: root, body: sec, fresh: true })).status, 200);
    const user = { _id: 'org.couchdb.user:ann', name: 'ann', type: 'user', roles: ['crew'], password: 'one' };
    let w = await req('PUT', '/_users/org.couchdb.user:ann', { auth: root, body: user, fresh: true });
    assert.equal(w.status, 201);

    const ann = ['ann', 'one'];
    for (let i = 0; i < 3; i++) assert.equal((await req('GET', '/kept', { auth: ann })).status, 200);
    // A different password on the same connection is checked, not taken from memory.
    assert.equal((await req('GET', '/kept', { auth: ['ann', 'two'] })).status, 401);
    assert.equal((await req('GET', '/kept', { auth: ann })).status, 200);

    // Roles changed elsewhere: the member role is gone, so the database is closed to ann.
    const cur = await req('GET', '/_users/org.couchdb.user:ann', { auth: root, fresh: true });
    w = await req('PUT', '/_users/org.couchdb.user:ann',
      { auth: root, body: { ...cur.body, roles: [] }, fresh: true });
    assert.equal(w.status, 201);
    assert.equal((await req('GET', '/kept', { auth: ann })).status, 403);

    // The password changed elsewhere: the old one fails on the connection that proved it.
    const cur2 = await req('GET', '/_users/org.couchdb.user:ann', { auth: root, fresh: true });
    w = await req('PUT', '/_users/org.couchdb.user:ann',
      { auth: root, body: { ...cur2.body, roles: ['crew'], password: 'two' }, fresh: true });
    assert.equal(w.status, 201);
    assert.equal((await req('GET', '/kept', { auth: ann })).status, 401);
    assert.equal((await req('GET', '/kept', { auth: ['ann', 'two'] })).status, 200);

    // Removed: the credentials that worked a moment ago no longer do.
    const cur3 = await req('GET', '/_users/org.couchdb.user:ann', { auth: root, fresh: true });
    w = await req('DELETE', `/_users/org.couchdb.user:ann?rev=${cur3.body._rev}`, { auth: root, fresh: true });
    assert.equal(w.status, 200);
    assert.equal((await req('GET', '/kept', { auth: ['ann', 'two'] })).status, 401);
    assert.equal(sockets.size, 1, 'every request went over one connection');
  });

  test('a session cookie on the same connection: a new password invalidates it', async () => {
    const user = { _id: 'org.couchdb.user:bo', name: 'bo', type: 'user', roles: ['crew'], password: 'p1' };
    assert.equal((await req('PUT', '/_users/org.couchdb.user:bo', { auth: root, body: user, fresh: true })).status, 201);
    const login = await req('POST', '/_session', { body: { name: 'bo', password: 'p1' }, fresh: true });
    assert.equal(login.status, 200);
    const cookie = login.headers['set-cookie'][0].split(';')[0];
    for (let i = 0; i < 3; i++) {
      const me = await req('GET', '/_session', { cookie });
      assert.equal(me.body.userCtx.name, 'bo');
    }
    const cur = await req('GET', '/_users/org.couchdb.user:bo', { auth: root, fresh: true });
    assert.equal((await req('PUT', '/_users/org.couchdb.user:bo',
      { auth: root, body: { ...cur.body, password: 'p2' }, fresh: true })).status, 201);
    const after = await req('GET', '/_session', { cookie });
    assert.equal(after.body.userCtx.name, null, 'a cookie made with the old salt is anonymous');
    // A forged variant of a remembered cookie is not taken from memory either.
    const login2 = await req('POST', '/_session', { body: { name: 'bo', password: 'p2' }, fresh: true });
    const good = login2.headers['set-cookie'][0].split(';')[0];
    assert.equal((await req('GET', '/_session', { cookie: good })).body.userCtx.name, 'bo');
    const last = good.at(-1) === 'A' ? 'B' : 'A';
    const forged = good.slice(0, -1) + last;
    assert.equal((await req('GET', '/_session', { cookie: forged })).body.userCtx.name, null);
    assert.equal(sockets.size, 1, 'every request went over one connection');
  });

  // The server keeps _users accounts and parsed _security objects in memory between requests
  // (an account until _users' update_seq moves). Changes by any write path count at once,
  // on new connections as on kept ones.
  test('cached accounts and _security objects: _bulk_docs and _security changes count at once', async () => {
    assert.equal((await req('PUT', '/cached', { auth: root, fresh: true })).status, 201);
    const open = { admins: { names: [], roles: [] }, members: { names: ['cy'], roles: [] } };
    assert.equal((await req('PUT', '/cached/_security', { auth: root, body: open, fresh: true })).status, 200);
    const user = { _id: 'org.couchdb.user:cy', name: 'cy', type: 'user', roles: [], password: 'c1' };
    assert.equal((await req('PUT', '/_users/org.couchdb.user:cy', { auth: root, body: user, fresh: true })).status, 201);
    const cy = ['cy', 'c1'];
    for (let i = 0; i < 3; i++) {
      assert.equal((await req('GET', '/cached', { auth: cy, fresh: true })).status, 200);
      assert.equal((await req('GET', '/cached', { auth: cy })).status, 200);
    }
    // Out of the members list: refused on the next request.
    const closed = { admins: { names: [], roles: [] }, members: { names: ['someone'], roles: [] } };
    assert.equal((await req('PUT', '/cached/_security', { auth: root, body: closed, fresh: true })).status, 200);
    assert.equal((await req('GET', '/cached', { auth: cy })).status, 403);
    assert.equal((await req('GET', '/cached', { auth: cy, fresh: true })).status, 403);
    assert.equal((await req('PUT', '/cached/_security', { auth: root, body: open, fresh: true })).status, 200);
    assert.equal((await req('GET', '/cached', { auth: cy })).status, 200);

    // Deleted through _bulk_docs rather than DELETE: the account is gone at once.
    const cur = await req('GET', '/_users/org.couchdb.user:cy', { auth: root, fresh: true });
    const del = await req('POST', '/_users/_bulk_docs',
      { auth: root, body: { docs: [{ _id: cur.body._id, _rev: cur.body._rev, _deleted: true }] }, fresh: true });
    assert.equal(del.status, 201);
    assert.equal((await req('GET', '/cached', { auth: cy })).status, 401);
    assert.equal((await req('GET', '/cached', { auth: cy, fresh: true })).status, 401);
  });
  // A connection also remembers its user's standing in the last database it asked about.
  // A database deleted and made again (its _security gone with it), and a cookie user's roles
  // changed, count on the next request over the same socket.
  test('remembered standing: a re-created database and a cookie user\'s new roles count at once', async () => {
    const user = { _id: 'org.couchdb.user:di', name: 'di', type: 'user', roles: ['crew'], password: 'd1' };
    assert.equal((await req('PUT', '/_users/org.couchdb.user:di', { auth: root, body: user, fresh: true })).status, 201);
    assert.equal((await req('PUT', '/again', { auth: root, fresh: true })).status, 201);
    const crew = { admins: { names: [], roles: [] }, members: { names: [], roles: ['crew'] } };
    assert.equal((await req('PUT', '/again/_security', { auth: root, body: crew, fresh: true })).status, 200);
    const di = ['di', 'd1'];
    for (let i = 0; i < 3; i++) assert.equal((await req('GET', '/again', { auth: di })).status, 200);
    // Deleted and created again: the new database has the default (admin-only or open to
    // members listed — none), so di is no member of it any more.
    assert.equal((await req('DELETE', '/again', { auth: root, fresh: true })).status, 200);
    assert.equal((await req('PUT', '/again', { auth: root, fresh: true })).status, 201);
    const nobody = { admins: { names: [], roles: [] }, members: { names: ['nobody'], roles: [] } };
    assert.equal((await req('PUT', '/again/_security', { auth: root, body: nobody, fresh: true })).status, 200);
    assert.equal((await req('GET', '/again', { auth: di })).status, 403);
    assert.equal((await req('PUT', '/again/_security', { auth: root, body: crew, fresh: true })).status, 200);
    assert.equal((await req('GET', '/again', { auth: di })).status, 200);

    // The same through a session cookie: roles taken away elsewhere close the database.
    const login = await req('POST', '/_session', { body: { name: 'di', password: 'd1' }, fresh: true });
    const cookie = login.headers['set-cookie'][0].split(';')[0];
    for (let i = 0; i < 3; i++) assert.equal((await req('GET', '/again', { cookie })).status, 200);
    const cur = await req('GET', '/_users/org.couchdb.user:di', { auth: root, fresh: true });
    assert.equal((await req('PUT', '/_users/org.couchdb.user:di',
      { auth: root, body: { ...cur.body, roles: [] }, fresh: true })).status, 201);
    assert.equal((await req('GET', '/again', { cookie })).status, 403);
    assert.equal(sockets.size, 1, 'every request went over one connection');
  });
});

// A remembered cookie still ages: past half the session timeout the reply carries a fresh
// cookie, and past the timeout the old one is anonymous, on the connection that proved it.
describe('a remembered session cookie expires on time', () => {
  let s, agent;
  before(async () => {
    s = await startServer({ args: [...FAST, '--set', 'chttpd_auth.timeout=6'] });
    agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  });
  after(async () => {
    agent?.destroy();
    await s?.stop();
  });
  function req(method, p, { cookie, body, fresh } = {}) {
    return new Promise((resolve, reject) => {
      const headers = { 'content-type': 'application/json' };
      if (cookie) headers.cookie = cookie;
      const r = http.request(s.url + p, { method, headers, agent: fresh ? false : agent }, (res) => {
        let text = '';
        res.on('data', (c) => { text += c; });
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers,
          body: text ? JSON.parse(text) : null, socket: res.socket }));
      });
      r.on('error', reject);
      r.end(body === undefined ? undefined : JSON.stringify(body));
    });
  }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  test('refreshed past half its life, anonymous past its end', async () => {
    const login = await req('POST', '/_session', { body: { name: 'root', password: 'r00t-pw' }, fresh: true });
    assert.equal(login.status, 200);
    const cookie = login.headers['set-cookie'][0].split(';')[0];
    const first = await req('GET', '/_session', { cookie });
    assert.equal(first.body.userCtx.name, 'root');
    assert.equal(first.headers['set-cookie'], undefined, 'young: no new cookie');
    // The cookie's time has whole seconds (rounded down): 4.1 s later it is 4 to 5.1 s old,
    // past half of 6 s (the server refreshes when older than 3 s) and not yet expired.
    await sleep(4100);
    const mid = await req('GET', '/_session', { cookie });
    assert.equal(mid.body.userCtx.name, 'root');
    assert.ok(mid.headers['set-cookie']?.[0]?.startsWith('AuthSession='), 'a fresh cookie past half its life');
    await sleep(2500);
    const late = await req('GET', '/_session', { cookie });
    assert.equal(late.body.userCtx.name, null, 'expired: anonymous');
    assert.equal(late.socket, first.socket, 'one connection throughout');
  });
});
