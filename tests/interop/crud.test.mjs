// Databases and documents through nano (and raw HTTP where status codes and headers matter):
// the CouchDB 3 shapes, status codes and revision rules a client sees.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import Nano from 'nano';
import { startServer } from './lib/server.mjs';
import { client, docPath, qs, assertError, expectStatus } from './lib/http.mjs';
import { uniqueDbName, hashOf, parseRev, waitFor, sorted } from './lib/util.mjs';

const REV = /^[1-9][0-9]*-[0-9a-f]{32}$/;

let server;
let nano;
let c;

before(async () => {
  server = await startServer();
  nano = Nano({ url: server.url });
  c = client(server.url);
});

after(async () => {
  await server?.stop();
});

/** Asserts that a nano call fails with this status and error name. */
async function rejectsWith(promise, status, error, reason) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.statusCode, status, `status (error ${err.error}: ${err.reason})`);
    if (error) assert.equal(err.error, error);
    if (reason) assert.equal(err.reason, reason);
    return true;
  });
}

async function freshDb(prefix) {
  const name = uniqueDbName(prefix);
  await nano.db.create(name);
  return { name, db: nano.use(name) };
}

/** A revision path ending in `tip`, for new_edits:false writes: {start, ids} newest first. */
function revisions(...revs) {
  const first = parseRev(revs[0]);
  return { start: first.gen, ids: revs.map((r) => parseRev(r).hash) };
}

function rev(gen, label) {
  return `${gen}-${hashOf(label)}`;
}

describe('server', () => {
  test('GET / answers the CouchDB welcome with version, uuid and vendor', async () => {
    const res = await c.get('/');
    const info = expectStatus(res, 200);
    assert.equal(info.couchdb, 'Welcome');
    assert.equal(typeof info.version, 'string');
    assert.equal(typeof info.uuid, 'string');
    assert.ok(info.uuid.length > 0);
    assert.equal(typeof info.vendor, 'object');
    const again = (await c.get('/')).json;
    assert.equal(again.uuid, info.uuid, 'uuid is stable');
  });

  test('GET /_up answers {"status":"ok"}', async () => {
    const res = await c.get('/_up');
    assert.deepEqual(expectStatus(res, 200), { status: 'ok' });
  });

  test('_uuids returns the requested count of unique, increasing 32-hex ids', async () => {
    const one = await nano.uuids();
    assert.equal(one.uuids.length, 1);
    const { uuids } = await nano.uuids(20);
    assert.equal(uuids.length, 20);
    for (const u of uuids) assert.match(u, /^[0-9a-f]{32}$/);
    assert.equal(new Set(uuids).size, 20, 'unique');
    for (let i = 1; i < uuids.length; i++) {
      assert.ok(uuids[i - 1] < uuids[i], `uuids increase: ${uuids[i - 1]} then ${uuids[i]}`);
    }
    const later = (await nano.uuids(1)).uuids[0];
    assert.ok(uuids.at(-1) < later, 'a later call continues the sequence');
  });
});

describe('databases', () => {
  test('create answers 201 {"ok":true}; a second create answers 412 file_exists', async () => {
    const name = uniqueDbName('create');
    const res = await c.put(`/${name}`);
    assert.equal(res.status, 201);
    assert.deepEqual(res.json, { ok: true });
    await rejectsWith(nano.db.create(name), 412, 'file_exists');
    const again = await c.put(`/${name}`);
    assertError(again, 412, 'file_exists');
    await nano.db.destroy(name);
  });

  test('a missing database is 404 not_found for GET, HEAD and DELETE', async () => {
    const name = uniqueDbName('missing');
    await rejectsWith(nano.db.get(name), 404, 'not_found', 'Database does not exist.');
    assert.equal((await c.head(`/${name}`)).status, 404);
    assertError(await c.delete(`/${name}`), 404, 'not_found');
    assertError(await c.get(`/${name}/somedoc`), 404, 'not_found');
  });

  test('delete answers 200 {"ok":true} and the database is gone from _all_dbs', async () => {
    const name = uniqueDbName('drop');
    await nano.db.create(name);
    assert.ok((await nano.db.list()).includes(name));
    const res = await c.delete(`/${name}`);
    assert.equal(res.status, 200);
    assert.deepEqual(res.json, { ok: true });
    assert.ok(!(await nano.db.list()).includes(name));
    await rejectsWith(nano.db.get(name), 404, 'not_found');
  });

  test('_all_dbs lists databases in sorted order', async () => {
    const base = uniqueDbName('list');
    const names = [`${base}_b`, `${base}_a`, `${base}_c`];
    for (const n of names) await nano.db.create(n);
    const all = await nano.db.list();
    const ours = all.filter((n) => n.startsWith(base));
    assert.deepEqual(ours, sorted(names));
    assert.deepEqual(all, [...all].sort(), '_all_dbs is sorted');
    for (const n of names) await nano.db.destroy(n);
  });

  test('illegal database names are refused with 400 illegal_database_name', async () => {
    for (const bad of ['Upper', '1digitfirst', 'has space', 'dot.name', '-dash', 'bang!', '_notsystem', 'é']) {
      const res = await c.put(`/${encodeURIComponent(bad)}`);
      assertError(res, 400, 'illegal_database_name', `PUT /${bad}`);
    }
  });

  test('legal names with _$()+-/ characters work', async () => {
    const name = `${uniqueDbName('chars')}_$()+-x`;
    await nano.db.create(name);
    const info = await nano.db.get(name);
    assert.equal(info.db_name, name);
    await nano.db.destroy(name);
  });

  test('a name with "/" works when escaped as %2F', async () => {
    const name = `${uniqueDbName('team')}/inbox`;
    const created = await c.put(`/${encodeURIComponent(name)}`);
    assert.equal(created.status, 201, created.text);
    assert.ok((await nano.db.list()).includes(name));
    const info = await nano.db.get(name);
    assert.equal(info.db_name, name);
    const db = nano.use(name);
    const put = await db.insert({ _id: 'd1', v: 1 });
    assert.equal(put.ok, true);
    assert.equal((await db.get('d1')).v, 1);
    assert.equal((await db.list()).rows.length, 1);
    await nano.db.destroy(name);
    assert.ok(!(await nano.db.list()).includes(name));
  });

  test('HEAD /db answers 200 without a body; GET /db/ equals GET /db', async () => {
    const { name } = await freshDb('head');
    const head = await c.head(`/${name}`);
    assert.equal(head.status, 200);
    assert.equal(head.body.length, 0);
    const slash = await c.get(`/${name}/`);
    assert.equal(slash.status, 200);
    assert.equal(slash.json.db_name, name);
    await nano.db.destroy(name);
  });

  test('db info has db_name, doc_count, doc_del_count, update_seq, instance_start_time and sizes', async () => {
    const { name, db } = await freshDb('info');
    const empty = await nano.db.get(name);
    assert.equal(empty.db_name, name);
    assert.equal(empty.doc_count, 0);
    assert.equal(empty.doc_del_count, 0);
    assert.ok(['number', 'string'].includes(typeof empty.update_seq), 'update_seq present');
    assert.equal(typeof empty.instance_start_time, 'string');
    assert.equal(typeof empty.sizes, 'object');

    await db.insert({ _id: 'a' });
    await db.insert({ _id: 'b' });
    const c1 = await db.insert({ _id: 'c' });
    await db.destroy('c', c1.rev);
    await db.insert({ x: 1 }, '_local/not-counted');
    const info = await nano.db.get(name);
    assert.equal(info.doc_count, 2);
    assert.equal(info.doc_del_count, 1);
    assert.notDeepEqual(info.update_seq, empty.update_seq, 'update_seq moves with writes');
    assert.equal(info.instance_start_time, empty.instance_start_time, 'instance_start_time is stable');
    await nano.db.destroy(name);
  });

  test('DELETE /db?rev= (a doc delete missing its id) is refused with 400 and the database stays', async () => {
    const { name } = await freshDb('revdrop');
    assertError(await c.delete(`/${name}?rev=1-abc`), 400, 'bad_request');
    assert.equal((await c.get(`/${name}`)).status, 200);
    await nano.db.destroy(name);
  });

  test('a deleted and recreated database starts empty', async () => {
    const { name, db } = await freshDb('recreate');
    await db.insert({ _id: 'old' });
    await nano.db.destroy(name);
    await nano.db.create(name);
    const info = await nano.db.get(name);
    assert.equal(info.doc_count, 0);
    assert.equal(info.doc_del_count, 0);
    await rejectsWith(nano.use(name).get('old'), 404, 'not_found');
    const changes = await c.get(`/${name}/_changes`);
    assert.deepEqual(changes.json.results, []);
    await nano.db.destroy(name);
  });
});

describe('documents', () => {
  let name;
  let db;
  before(async () => { ({ name, db } = await freshDb('docs')); });
  after(async () => { await nano.db.destroy(name).catch(() => {}); });

  test('PUT creates a doc: 201 {ok,id,rev} with a 1-<32 hex> rev and an ETag', async () => {
    const res = await c.put(docPath(name, 'first'), { v: 1, nested: { a: [1, 2, { b: null }] } });
    assert.equal(res.status, 201);
    assert.equal(res.json.ok, true);
    assert.equal(res.json.id, 'first');
    assert.match(res.json.rev, /^1-[0-9a-f]{32}$/);
    assert.equal(res.headers.etag, `"${res.json.rev}"`);
    const doc = await db.get('first');
    assert.deepEqual(doc, { _id: 'first', _rev: res.json.rev, v: 1, nested: { a: [1, 2, { b: null }] } });
  });

  test('the same edit made twice gives the same rev id', async () => {
    const other = await freshDb('twin');
    const body = { same: 'body', n: [1, 2] };
    const a = await db.insert(body, 'twin');
    const b = await other.db.insert(body, 'twin');
    assert.equal(a.rev, b.rev, 'same id, parent and body in two databases');
    const a2 = await db.insert({ _rev: a.rev, step: 2 }, 'twin');
    const b2 = await other.db.insert({ _rev: b.rev, step: 2 }, 'twin');
    assert.equal(a2.rev, b2.rev, 'same update of the same parent');
    await nano.db.destroy(other.name);
  });

  test('GET returns the body with its ETag; numbers, unicode and nesting round-trip', async () => {
    const body = { int: 9007199254740991, neg: -12, float: 1.5, exp: 1e-7, str: 'ü☃\u0000"\\', t: true, f: false, n: null,
      arr: [[], {}, [1, [2, [3]]]], obj: { 'key with space': 1, '': 'empty key' } };
    const put = await db.insert(body, 'roundtrip');
    const res = await c.get(docPath(name, 'roundtrip'));
    assert.equal(res.status, 200);
    assert.equal(res.headers.etag, `"${put.rev}"`);
    assert.deepEqual(res.json, { _id: 'roundtrip', _rev: put.rev, ...body });
  });

  test('update with the current rev creates generation 2; a stale or missing rev is 409 conflict', async () => {
    const r1 = await db.insert({ v: 1 }, 'upd');
    const r2 = await db.insert({ _rev: r1.rev, v: 2 }, 'upd');
    assert.match(r2.rev, /^2-[0-9a-f]{32}$/);
    await rejectsWith(db.insert({ _rev: r1.rev, v: 3 }, 'upd'), 409, 'conflict', 'Document update conflict.');
    await rejectsWith(db.insert({ v: 3 }, 'upd'), 409, 'conflict');
    await rejectsWith(db.insert({ _rev: '1-00000000000000000000000000000000', v: 3 }, 'never-existed'), 409, 'conflict');
    assert.equal((await db.get('upd')).v, 2);
  });

  test('?rev= and _rev in the body must agree (400 bad_request otherwise)', async () => {
    const r1 = await db.insert({ v: 1 }, 'revagree');
    const res = await c.put(`${docPath(name, 'revagree')}?rev=${r1.rev}`, { _rev: '1-11111111111111111111111111111111', v: 2 });
    assertError(res, 400, 'bad_request');
    const ok = await c.put(`${docPath(name, 'revagree')}?rev=${r1.rev}`, { v: 2 });
    assert.equal(ok.status, 201, ok.text);
  });

  test('the id in the URL wins over _id in the body', async () => {
    const res = await c.put(docPath(name, 'url-id'), { _id: 'body-id', v: 1 });
    assert.equal(res.status, 201, res.text);
    assert.equal(res.json.id, 'url-id');
    assert.equal((await db.get('url-id')).v, 1);
  });

  test('DELETE answers 200 with a tombstone rev; GET is then 404 deleted, never-written ids 404 missing', async () => {
    const r1 = await db.insert({ v: 1 }, 'del');
    const res = await c.delete(`${docPath(name, 'del')}?rev=${r1.rev}`);
    assert.equal(res.status, 200);
    assert.equal(res.json.ok, true);
    assert.equal(res.json.id, 'del');
    assert.match(res.json.rev, /^2-[0-9a-f]{32}$/);
    await rejectsWith(db.get('del'), 404, 'not_found', 'deleted');
    await rejectsWith(db.get('never-written'), 404, 'not_found', 'missing');
    const tomb = await db.get('del', { rev: res.json.rev });
    assert.deepEqual(tomb, { _id: 'del', _rev: res.json.rev, _deleted: true });
  });

  test('a deleted doc is recreated by a rev-less PUT at the tombstone generation + 1', async () => {
    const r1 = await db.insert({ v: 1 }, 'phoenix');
    const r2 = await db.insert({ _rev: r1.rev, v: 2 }, 'phoenix');
    const tomb = await db.destroy('phoenix', r2.rev);
    assert.equal(parseRev(tomb.rev).gen, 3);
    const again = await db.insert({ v: 'reborn' }, 'phoenix');
    assert.equal(parseRev(again.rev).gen, 4, `recreated rev ${again.rev}`);
    const doc = await db.get('phoenix', { revs: true });
    assert.equal(doc.v, 'reborn');
    assert.deepEqual(doc._revisions.ids.slice(1), [tomb.rev, r2.rev, r1.rev].map((r) => parseRev(r).hash));
  });

  test('PUT with _deleted:true deletes a doc and keeps the body on the tombstone', async () => {
    const r1 = await db.insert({ v: 1 }, 'putdel');
    const r2 = await db.insert({ _rev: r1.rev, _deleted: true, why: 'archived' }, 'putdel');
    await rejectsWith(db.get('putdel'), 404, 'not_found', 'deleted');
    const tomb = await db.get('putdel', { rev: r2.rev });
    assert.deepEqual(tomb, { _id: 'putdel', _rev: r2.rev, _deleted: true, why: 'archived' });
  });

  test('POST /db generates increasing ids; POST with _id uses it', async () => {
    const ids = [];
    for (let i = 0; i < 15; i++) {
      const res = await c.post(`/${name}`, { i });
      assert.equal(res.status, 201, res.text);
      assert.match(res.json.rev, /^1-/);
      ids.push(res.json.id);
    }
    for (const id of ids) assert.match(id, /^[0-9a-f]{32}$/);
    for (let i = 1; i < ids.length; i++) assert.ok(ids[i - 1] < ids[i], `ids increase: ${ids[i - 1]} then ${ids[i]}`);
    const named = await c.post(`/${name}`, { _id: 'posted', x: 1 });
    assert.equal(named.status, 201);
    assert.equal(named.json.id, 'posted');
  });

  test('ids with /, +, spaces, colons and non-ASCII round-trip through percent-encoding', async () => {
    const ids = ['a/b', 'plus+sign', 'space id', 'colon:x', 'ünï☃', 'q?x&y=z', '%41'];
    for (const id of ids) {
      const put = await c.put(docPath(name, id), { id });
      assert.equal(put.status, 201, `${id}: ${put.text}`);
      assert.equal(put.json.id, id);
      const got = await c.get(docPath(name, id));
      assert.equal(got.status, 200, `${id}: ${got.text}`);
      assert.equal(got.json._id, id);
      assert.equal((await db.get(id)).id, id, `nano get ${id}`);
    }
    const listed = await db.fetch({ keys: ids });
    assert.deepEqual(listed.rows.map((r) => r.id), ids);
  });

  test('HEAD on a doc answers 200 with its ETag and no body; 404 when missing', async () => {
    const r1 = await db.insert({ v: 1 }, 'headdoc');
    const res = await c.head(docPath(name, 'headdoc'));
    assert.equal(res.status, 200);
    assert.equal(res.headers.etag, `"${r1.rev}"`);
    assert.equal(res.body.length, 0);
    const headers = await db.head('headdoc');
    assert.equal(headers.etag, `"${r1.rev}"`);
    assert.equal((await c.head(docPath(name, 'no-such-doc'))).status, 404);
  });

  test('If-Match carries the rev for PUT and DELETE; a stale If-Match is 409', async () => {
    const r1 = await db.insert({ v: 1 }, 'ifmatch');
    const r2 = await c.put(docPath(name, 'ifmatch'), { v: 2 }, { headers: { 'if-match': `"${r1.rev}"` } });
    assert.equal(r2.status, 201, r2.text);
    assert.match(r2.json.rev, /^2-/);
    const stale = await c.put(docPath(name, 'ifmatch'), { v: 3 }, { headers: { 'if-match': `"${r1.rev}"` } });
    assertError(stale, 409, 'conflict');
    const del = await c.delete(docPath(name, 'ifmatch'), { headers: { 'if-match': `"${r2.json.rev}"` } });
    assert.equal(del.status, 200, del.text);
    assert.match(del.json.rev, /^3-/);
  });

  test('design documents are stored and read like other docs, also addressed as _design%2F', async () => {
    const ddoc = { views: { byType: { map: 'function (doc) { emit(doc.type); }' } }, language: 'javascript' };
    const put = await c.put(`/${name}/_design/app`, ddoc);
    assert.equal(put.status, 201, put.text);
    assert.equal(put.json.id, '_design/app');
    const got = await c.get(`/${name}/_design/app`);
    assert.deepEqual(got.json, { _id: '_design/app', _rev: put.json.rev, ...ddoc });
    const escaped = await c.get(`/${name}/_design%2Fapp`);
    assert.equal(escaped.status, 200, escaped.text);
    assert.equal(escaped.json._id, '_design/app');
    const all = await db.list({ keys: ['_design/app'] });
    assert.equal(all.rows[0].value.rev, put.json.rev);
    const ch = await c.get(`/${name}/_changes`);
    assert.ok(ch.json.results.some((r) => r.id === '_design/app'), 'design docs appear in _changes');
    const del = await c.delete(`/${name}/_design/app?rev=${put.json.rev}`);
    assert.equal(del.status, 200, del.text);
  });

  test('PUT ?new_edits=false stores the given revision and answers an object {ok,id,rev}', async () => {
    const r2 = rev(2, 'ne-2');
    const r1 = rev(1, 'ne-1');
    const res = await c.put(`${docPath(name, 'replicated')}?new_edits=false`,
      { _id: 'replicated', _rev: r2, _revisions: revisions(r2, r1), v: 2 });
    assert.ok([201, 200].includes(res.status), res.text);
    assert.ok(res.json && !Array.isArray(res.json), `object reply, got ${res.text}`);
    assert.equal(res.json.id, 'replicated');
    assert.equal(res.json.rev, r2);
    assert.equal((await db.get('replicated')).v, 2);
  });
});

describe('revision metadata and conflicts', () => {
  let name;
  let db;
  // doc "tree": 1-a → 2-b, 1-a → 2-c (winner: greater hash of the two), 1-a → 2-d deleted.
  const a = rev(1, 'tree-a');
  const b = rev(2, 'tree-b');
  const cc = rev(2, 'tree-c');
  const d = rev(2, 'tree-d');
  const [winner, loser] = [b, cc].sort().reverse();

  before(async () => {
    ({ name, db } = await freshDb('meta'));
    const res = await c.post(`/${name}/_bulk_docs`, {
      new_edits: false,
      docs: [
        { _id: 'tree', _rev: b, _revisions: revisions(b, a), side: 'b' },
        { _id: 'tree', _rev: cc, _revisions: revisions(cc, a), side: 'c' },
        { _id: 'tree', _rev: d, _revisions: revisions(d, a), _deleted: true },
      ],
    });
    assert.equal(res.status, 201, res.text);
    assert.deepEqual(res.json, []);
  });
  after(async () => { await nano.db.destroy(name).catch(() => {}); });

  test('the winner is the live leaf with the greater rev hash at the highest generation', async () => {
    const doc = await db.get('tree');
    assert.equal(doc._rev, winner);
  });

  test('conflicts=true lists the other live leaves; deleted_conflicts=true the tombstones', async () => {
    const doc = await db.get('tree', { conflicts: true, deleted_conflicts: true });
    assert.deepEqual(doc._conflicts, [loser]);
    assert.deepEqual(doc._deleted_conflicts, [d]);
    const plain = await db.get('tree');
    assert.equal(plain._conflicts, undefined, 'no _conflicts unless asked');
  });

  test('revs=true adds _revisions; revs_info=true adds _revs_info with statuses', async () => {
    const doc = await db.get('tree', { revs: true, revs_info: true });
    assert.deepEqual(doc._revisions, revisions(winner, a));
    assert.deepEqual(doc._revs_info, [
      { rev: winner, status: 'available' },
      { rev: a, status: 'missing' },
    ]);
  });

  test('meta=true combines conflicts, deleted_conflicts and revs_info', async () => {
    const doc = await db.get('tree', { meta: true });
    assert.deepEqual(doc._conflicts, [loser]);
    assert.deepEqual(doc._deleted_conflicts, [d]);
    assert.equal(doc._revs_info.length, 2);
  });

  test('?rev= reads a losing leaf and a tombstone leaf; an unknown or body-less rev is 404 missing', async () => {
    const l = await db.get('tree', { rev: loser });
    assert.equal(l._rev, loser);
    const t = await db.get('tree', { rev: d });
    assert.deepEqual(t, { _id: 'tree', _rev: d, _deleted: true });
    await rejectsWith(db.get('tree', { rev: rev(2, 'unknown') }), 404, 'not_found', 'missing');
    await rejectsWith(db.get('tree', { rev: a }), 404, 'not_found', 'missing');
  });

  test('open_revs=all answers a JSON array with every leaf, tombstones included', async () => {
    const res = await c.get(`${docPath(name, 'tree')}?open_revs=all&revs=true`);
    assert.equal(res.status, 200, res.text);
    assert.ok(Array.isArray(res.json), `array reply, got ${res.text.slice(0, 200)}`);
    const revs = res.json.map((e) => e.ok._rev).sort();
    assert.deepEqual(revs, [b, cc, d].sort());
    const tomb = res.json.find((e) => e.ok._rev === d).ok;
    assert.equal(tomb._deleted, true);
    for (const e of res.json) assert.equal(e.ok._revisions.ids.at(-1), parseRev(a).hash);
  });

  test('open_revs=[list] answers in request order with {"missing"} for unknown revs', async () => {
    const unknown = rev(3, 'not-there');
    const res = await c.get(`${docPath(name, 'tree')}${qs({ open_revs: [cc, unknown, b] })}`);
    assert.equal(res.status, 200, res.text);
    assert.ok(Array.isArray(res.json));
    assert.equal(res.json.length, 3);
    assert.equal(res.json[0].ok._rev, cc);
    assert.deepEqual(res.json[1], { missing: unknown });
    assert.equal(res.json[2].ok._rev, b);
  });

  test('open_revs on an unknown doc: all is 404, an explicit list gives missing entries', async () => {
    assertError(await c.get(`${docPath(name, 'nobody')}?open_revs=all`), 404, 'not_found');
    const res = await c.get(`${docPath(name, 'nobody')}${qs({ open_revs: [a] })}`);
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.json, [{ missing: a }]);
  });

  test('open_revs with latest=true maps an ancestor to its descendant leaves', async () => {
    const res = await c.get(`${docPath(name, 'tree')}${qs({ open_revs: [a], latest: 'true' })}`);
    assert.equal(res.status, 200, res.text);
    const revs = res.json.map((e) => e.ok?._rev).sort();
    assert.deepEqual(revs, [b, cc, d].sort());
  });

  test('deleting a losing leaf resolves the conflict without changing the winner', async () => {
    await db.insert({ _id: 'tree2', v: 0 });
    const r1 = (await db.get('tree2'))._rev;
    const x = rev(2, 'tree2-x');
    const y = rev(2, 'tree2-y');
    await db.bulk({ new_edits: false, docs: [
      { _id: 'tree2', _rev: x, _revisions: revisions(x, r1), v: 'x' },
      { _id: 'tree2', _rev: y, _revisions: revisions(y, r1), v: 'y' },
    ] });
    const [w, l] = [x, y].sort().reverse();
    const del = await db.destroy('tree2', l);
    assert.match(del.rev, /^3-/);
    const doc = await db.get('tree2', { conflicts: true, deleted_conflicts: true });
    assert.equal(doc._rev, w);
    assert.equal(doc._conflicts, undefined);
    assert.deepEqual(doc._deleted_conflicts, [del.rev]);
  });

  test('an update of a losing leaf extends that branch', async () => {
    const upd = await db.insert({ _rev: loser, side: 'loser-updated' }, 'tree');
    assert.match(upd.rev, /^3-/);
    const doc = await db.get('tree', { conflicts: true });
    assert.equal(doc._rev, upd.rev, 'the longer branch now wins');
    assert.deepEqual(doc._conflicts, [winner]);
  });
});

describe('_all_docs', () => {
  let name;
  let db;
  const revOf = {};
  before(async () => {
    ({ name, db } = await freshDb('alldocs'));
    for (const id of ['c', 'a', 'e', 'b', 'd', 'Z', '_design/d1', 'gone']) {
      revOf[id] = (await db.insert({ id }, id)).rev;
    }
    revOf.gone = (await db.destroy('gone', revOf.gone)).rev;
    await db.insert({ x: 1 }, '_local/hidden');
  });
  after(async () => { await nano.db.destroy(name).catch(() => {}); });

  const live = ['Z', '_design/d1', 'a', 'b', 'c', 'd', 'e'];

  test('lists live docs (design docs too) in raw byte order with total_rows and offset', async () => {
    const res = await db.list();
    assert.deepEqual(res.rows.map((r) => r.id), live);
    assert.equal(res.total_rows, live.length);
    assert.equal(res.offset, 0);
    for (const r of res.rows) {
      assert.equal(r.key, r.id);
      assert.deepEqual(r.value, { rev: revOf[r.id] });
      assert.equal(r.doc, undefined);
    }
  });

  test('deleted docs and _local docs are not listed', async () => {
    const res = await db.list();
    assert.ok(!res.rows.some((r) => r.id === 'gone' || r.id.startsWith('_local')));
  });

  test('startkey/endkey select a range; inclusive_end=false drops the end key', async () => {
    assert.deepEqual((await db.list({ startkey: 'b', endkey: 'd' })).rows.map((r) => r.id), ['b', 'c', 'd']);
    assert.deepEqual((await db.list({ start_key: 'b', end_key: 'd' })).rows.map((r) => r.id), ['b', 'c', 'd']);
    assert.deepEqual((await db.list({ startkey: 'b', endkey: 'd', inclusive_end: false })).rows.map((r) => r.id), ['b', 'c']);
    assert.deepEqual((await db.list({ startkey: 'bb', endkey: 'cc' })).rows.map((r) => r.id), ['c']);
    assert.deepEqual((await db.list({ key: 'c' })).rows.map((r) => r.id), ['c']);
  });

  test('startkey_docid/endkey_docid select a range when no startkey/endkey is given', async () => {
    const res = await c.get(`/${name}/_all_docs?startkey_docid=b&endkey_docid=d`);
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.json.rows.map((r) => r.id), ['b', 'c', 'd']);
  });

  test('limit and skip page through the rows', async () => {
    const res = await db.list({ limit: 2, skip: 1 });
    assert.deepEqual(res.rows.map((r) => r.id), ['_design/d1', 'a']);
    assert.equal(res.offset, 1);
    assert.deepEqual((await db.list({ limit: 0 })).rows, []);
    assert.deepEqual((await db.list({ skip: 100 })).rows, []);
  });

  test('descending=true reverses the order and swaps start and end', async () => {
    assert.deepEqual((await db.list({ descending: true })).rows.map((r) => r.id), [...live].reverse());
    assert.deepEqual((await db.list({ descending: true, startkey: 'd', endkey: 'b' })).rows.map((r) => r.id), ['d', 'c', 'b']);
    assert.deepEqual((await db.list({ descending: true, startkey: 'd', endkey: 'b', inclusive_end: false })).rows.map((r) => r.id), ['d', 'c']);
    assert.deepEqual((await db.list({ descending: true, limit: 2 })).rows.map((r) => r.id), ['e', 'd']);
  });

  test('include_docs=true adds each doc', async () => {
    const res = await db.list({ include_docs: true, startkey: 'a', endkey: 'b' });
    assert.deepEqual(res.rows.map((r) => r.doc), [
      { _id: 'a', _rev: revOf.a, id: 'a' },
      { _id: 'b', _rev: revOf.b, id: 'b' },
    ]);
  });

  test('keys answers one row per key in request order: live, deleted (doc null) and not_found', async () => {
    const res = await c.post(`/${name}/_all_docs?include_docs=true`, { keys: ['c', 'nope', 'gone', 'a'] });
    assert.equal(res.status, 200, res.text);
    const rows = res.json.rows;
    assert.equal(rows.length, 4);
    assert.deepEqual(rows[0], { id: 'c', key: 'c', value: { rev: revOf.c }, doc: { _id: 'c', _rev: revOf.c, id: 'c' } });
    assert.deepEqual(rows[1], { key: 'nope', error: 'not_found' });
    assert.deepEqual(rows[2], { id: 'gone', key: 'gone', value: { rev: revOf.gone, deleted: true }, doc: null });
    assert.equal(rows[3].id, 'a');
    const viaGet = await c.get(`/${name}/_all_docs${qs({ keys: ['c', 'nope', 'gone', 'a'] })}`);
    assert.deepEqual(viaGet.json.rows.map((r) => r.key), ['c', 'nope', 'gone', 'a']);
    assert.deepEqual(viaGet.json.rows[2].value, { rev: revOf.gone, deleted: true });
  });

  test('update_seq=true adds update_seq equal to the database update_seq', async () => {
    const res = await db.list({ update_seq: true, limit: 1 });
    const info = await nano.db.get(name);
    assert.deepEqual(res.update_seq, info.update_seq);
  });

  test('conflicts=true with include_docs adds _conflicts to conflicted docs', async () => {
    const r1 = revOf.a;
    const x = rev(2, 'ad-x');
    const y = rev(2, 'ad-y');
    await db.bulk({ new_edits: false, docs: [
      { _id: 'a', _rev: x, _revisions: revisions(x, r1) },
      { _id: 'a', _rev: y, _revisions: revisions(y, r1) },
    ] });
    const res = await db.list({ keys: ['a'], include_docs: true, conflicts: true });
    const [w, l] = [x, y].sort().reverse();
    assert.equal(res.rows[0].value.rev, w);
    assert.deepEqual(res.rows[0].doc._conflicts, [l]);
  });
});

describe('_bulk_docs', () => {
  let name;
  let db;
  before(async () => { ({ name, db } = await freshDb('bulk')); });
  after(async () => { await nano.db.destroy(name).catch(() => {}); });

  test('new_edits true answers 201 with one entry per doc in order, conflicts as entries', async () => {
    const e1 = await db.insert({ v: 1 }, 'exists');
    const e2 = await db.insert({ v: 1 }, 'to-delete');
    const res = await c.post(`/${name}/_bulk_docs`, { docs: [
      { _id: 'new1', v: 1 },
      { _id: 'exists', _rev: '1-00000000000000000000000000000000', v: 2 },
      { v: 'generated id' },
      { _id: 'to-delete', _rev: e2.rev, _deleted: true },
      { _id: 'exists', _rev: e1.rev, v: 3 },
    ] });
    assert.equal(res.status, 201, res.text);
    const out = res.json;
    assert.equal(out.length, 5);
    assert.equal(out[0].ok, true);
    assert.equal(out[0].id, 'new1');
    assert.match(out[0].rev, REV);
    assert.equal(out[1].id, 'exists');
    assert.equal(out[1].error, 'conflict');
    assert.equal(out[1].reason, 'Document update conflict.');
    assert.equal(out[1].ok, undefined);
    assert.equal(out[2].ok, true);
    assert.match(out[2].id, /^[0-9a-f]{32}$/);
    assert.equal(out[3].ok, true);
    assert.match(out[3].rev, /^2-/);
    assert.equal(out[4].ok, true);
    assert.match(out[4].rev, /^2-/);
    await rejectsWith(db.get('to-delete'), 404, 'not_found', 'deleted');
    assert.equal((await db.get('exists')).v, 3);
  });

  test('new_edits false answers 201 and [] and merges the revisions as given', async () => {
    const r1 = rev(1, 'nef-1');
    const r2 = rev(2, 'nef-2');
    const r2b = rev(2, 'nef-2b');
    const r3 = rev(3, 'nef-3');
    const body = { new_edits: false, docs: [
      { _id: 'nef', _rev: r3, _revisions: revisions(r3, r2, r1), v: 3 },
      { _id: 'nef', _rev: r2b, _revisions: revisions(r2b, r1), v: 'b' },
    ] };
    const res = await c.post(`/${name}/_bulk_docs`, body);
    assert.equal(res.status, 201, res.text);
    assert.deepEqual(res.json, []);
    const again = await c.post(`/${name}/_bulk_docs`, body);
    assert.equal(again.status, 201, 'replaying known revisions is a silent success');
    assert.deepEqual(again.json, []);
    const doc = await db.get('nef', { conflicts: true, revs: true });
    assert.equal(doc._rev, r3);
    assert.deepEqual(doc._conflicts, [r2b]);
    assert.deepEqual(doc._revisions, revisions(r3, r2, r1));
  });
});

describe('_revs_diff', () => {
  test('reports missing revisions with possible_ancestors and omits complete docs', async () => {
    const { name, db } = await freshDb('revsdiff');
    const a1 = await db.insert({ v: 1 }, 'a');
    const b1 = await db.insert({ v: 1 }, 'b');
    const a2 = rev(2, 'rd-a2');
    const a3 = rev(3, 'rd-a3');
    const res = await c.post(`/${name}/_revs_diff`, {
      a: [a2, a3, a1.rev],
      b: [b1.rev],
      c: [rev(1, 'rd-c1')],
    });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(Object.keys(res.json).sort(), ['a', 'c']);
    assert.deepEqual(sorted(res.json.a.missing), sorted([a2, a3]));
    assert.deepEqual(res.json.a.possible_ancestors, [a1.rev]);
    assert.deepEqual(res.json.c.missing, [rev(1, 'rd-c1')]);
    assert.equal(res.json.c.possible_ancestors, undefined);
    const none = await c.post(`/${name}/_revs_diff`, { a: [a1.rev], b: [b1.rev] });
    assert.deepEqual(none.json, {});
    await nano.db.destroy(name);
  });

  test('an internal revision known without its body is not missing', async () => {
    const { name } = await freshDb('revsdiff2');
    const r1 = rev(1, 'rdi-1');
    const r2 = rev(2, 'rdi-2');
    await c.post(`/${name}/_bulk_docs`, { new_edits: false, docs: [{ _id: 'x', _rev: r2, _revisions: revisions(r2, r1) }] });
    const res = await c.post(`/${name}/_revs_diff`, { x: [r1, r2] });
    assert.deepEqual(res.json, {});
    await nano.db.destroy(name);
  });
});

describe('_bulk_get', () => {
  let name;
  let db;
  let r1;
  let r2;
  before(async () => {
    ({ name, db } = await freshDb('bulkget'));
    r1 = (await db.insert({ v: 1 }, 'doc')).rev;
    r2 = (await db.insert({ _rev: r1, v: 2 }, 'doc')).rev;
    await db.insert({ w: 1 }, 'other');
  });
  after(async () => { await nano.db.destroy(name).catch(() => {}); });

  test('returns the asked revisions in request order, with _revisions when revs=true', async () => {
    const res = await c.post(`/${name}/_bulk_get?revs=true`, { docs: [{ id: 'doc', rev: r2 }, { id: 'other' }, { id: 'doc', rev: r2 }] });
    assert.equal(res.status, 200, res.text);
    const { results } = res.json;
    assert.deepEqual(results.map((r) => r.id), ['doc', 'other', 'doc']);
    const d = results[0].docs[0].ok;
    assert.equal(d._rev, r2);
    assert.equal(d.v, 2);
    assert.deepEqual(d._revisions, revisions(r2, r1));
    assert.equal(results[1].docs.length, 1, 'no rev: every leaf');
    assert.equal(results[1].docs[0].ok.w, 1);
  });

  test('latest=true returns the current leaf for a superseded revision', async () => {
    const res = await c.post(`/${name}/_bulk_get?revs=true&latest=true`, { docs: [{ id: 'doc', rev: r1 }] });
    assert.equal(res.status, 200, res.text);
    const docs = res.json.results[0].docs;
    assert.equal(docs.length, 1);
    assert.equal(docs[0].ok._rev, r2);
  });

  test('a missing doc or revision is an error entry {id, rev, error, reason}', async () => {
    const unknownRev = rev(1, 'bg-unknown');
    const res = await c.post(`/${name}/_bulk_get`, { docs: [{ id: 'nope', rev: unknownRev }, { id: 'doc', rev: unknownRev }] });
    assert.equal(res.status, 200, res.text);
    for (const [i, id] of ['nope', 'doc'].entries()) {
      const entry = res.json.results[i];
      assert.equal(entry.id, id);
      assert.equal(entry.docs.length, 1);
      const err = entry.docs[0].error;
      assert.ok(err, `error entry for ${id}: ${JSON.stringify(entry)}`);
      assert.equal(err.id, id);
      assert.equal(err.rev, unknownRev);
      assert.equal(err.error, 'not_found');
      assert.equal(typeof err.reason, 'string');
    }
  });
});

describe('_local documents', () => {
  let name;
  let db;
  before(async () => { ({ name, db } = await freshDb('local')); });
  after(async () => { await nano.db.destroy(name).catch(() => {}); });

  const checkpoint = {
    session_id: '449186dc-38b8-4cc3-ab0a-ddcd4637a2f3',
    history: [{ last_seq: 6, session_id: '449186dc' }, { last_seq: '5-g1AAAA', session_id: 'x' }],
    replicator: 'pouchdb', version: 1, last_seq: 6, f: 1.25,
  };

  test('PUT answers 201 with rev 0-1, then 0-2; GET returns the body exactly', async () => {
    const id = '_local/KrtIFKgxLQNF1kss6zScoA==';
    const path = `/${name}/_local/${encodeURIComponent('KrtIFKgxLQNF1kss6zScoA==')}`;
    const put = await c.put(path, checkpoint);
    assert.equal(put.status, 201, put.text);
    assert.deepEqual(put.json, { ok: true, id, rev: '0-1' });
    const got = await c.get(path);
    assert.equal(got.status, 200);
    assert.deepEqual(got.json, { _id: id, _rev: '0-1', ...checkpoint });
    const put2 = await c.put(path, { ...checkpoint, _rev: '0-1', last_seq: 7 });
    assert.equal(put2.status, 201, put2.text);
    assert.equal(put2.json.rev, '0-2');
    assert.equal((await c.get(path)).json.last_seq, 7);
  });

  test('a _revisions member (as CouchDB replicators send) is accepted', async () => {
    const path = `/${name}/_local/couchrep`;
    const put = await c.put(path, { x: 1 });
    const put2 = await c.put(path, { x: 2, _rev: put.json.rev, _revisions: { start: 0, ids: ['1'] } });
    assert.equal(put2.status, 201, put2.text);
    assert.equal((await c.get(path)).json.x, 2);
  });

  test('_local docs are kept out of _changes and _all_docs', async () => {
    await db.insert({ v: 1 }, 'visible');
    await db.insert({ v: 1 }, '_local/invisible');
    const changes = await c.get(`/${name}/_changes`);
    assert.ok(changes.json.results.every((r) => !r.id.startsWith('_local/')), changes.text);
    assert.ok(changes.json.results.some((r) => r.id === 'visible'));
    const all = await db.list();
    assert.ok(all.rows.every((r) => !r.id.startsWith('_local/')));
    const info = await nano.db.get(name);
    assert.equal(info.doc_count, 1);
  });

  test('a missing _local doc is 404 with error "not_found"; DELETE removes one', async () => {
    const missing = await c.get(`/${name}/_local/absent`);
    assertError(missing, 404, 'not_found');
    const put = await c.put(`/${name}/_local/temp`, { t: 1 });
    const del = await c.delete(`/${name}/_local/temp?rev=${put.json.rev}`);
    assert.equal(del.status, 200, del.text);
    assert.equal(del.json.ok, true);
    assertError(await c.get(`/${name}/_local/temp`), 404, 'not_found');
  });
});

describe('_revs_limit, _compact, _ensure_full_commit', () => {
  let name;
  let db;
  before(async () => { ({ name, db } = await freshDb('maint')); });
  after(async () => { await nano.db.destroy(name).catch(() => {}); });

  test('_revs_limit defaults to 1000; PUT sets it and answers {"ok":true}', async () => {
    const res = await c.get(`/${name}/_revs_limit`);
    assert.equal(res.status, 200);
    assert.equal(res.text.trim(), '1000');
    const put = await c.put(`/${name}/_revs_limit`, '3');
    assert.equal(put.status, 200, put.text);
    assert.deepEqual(put.json, { ok: true });
    assert.equal((await c.get(`/${name}/_revs_limit`)).text.trim(), '3');
    assertError(await c.put(`/${name}/_revs_limit`, '"lots"'), 400, 'bad_request');
  });

  test('revisions are stemmed to _revs_limit', async () => {
    let r = (await db.insert({ n: 0 }, 'stem')).rev;
    for (let i = 1; i < 6; i++) r = (await db.insert({ _rev: r, n: i }, 'stem')).rev;
    const doc = await db.get('stem', { revs: true });
    assert.equal(doc._revisions.start, 6);
    assert.equal(doc._revisions.ids.length, 3);
    await c.put(`/${name}/_revs_limit`, '1000');
  });

  test('_compact answers 202 and drops bodies of non-leaf revisions, keeping every leaf', async () => {
    const r1 = (await db.insert({ v: 1 }, 'compact')).rev;
    const r2 = (await db.insert({ _rev: r1, v: 2 }, 'compact')).rev;
    const x = rev(2, 'compact-branch');
    await db.bulk({ new_edits: false, docs: [{ _id: 'compact', _rev: x, _revisions: revisions(x, r1), v: 'x' }] });
    assert.equal((await db.get('compact', { rev: r1 })).v, 1, 'before compaction the old body is readable');
    const res = await c.post(`/${name}/_compact`, undefined, { headers: { 'content-type': 'application/json' } });
    assert.equal(res.status, 202, res.text);
    assert.deepEqual(res.json, { ok: true });
    await waitFor(async () => (await c.get(`${docPath(name, 'compact')}?rev=${r1}`)).status === 404,
      { timeout: 20_000, message: 'old revision body dropped by compaction' });
    assert.equal((await db.get('compact', { rev: r2 })).v, 2);
    assert.equal((await db.get('compact', { rev: x })).v, 'x');
    const doc = await db.get('compact', { revs_info: true });
    assert.deepEqual(doc._revs_info.map((i) => i.status), ['available', 'missing']);
  });

  test('_ensure_full_commit answers 201 with the instance_start_time of GET /db', async () => {
    const info = await nano.db.get(name);
    const res = await c.post(`/${name}/_ensure_full_commit`, undefined, { headers: { 'content-type': 'application/json' } });
    assert.equal(res.status, 201, res.text);
    assert.equal(res.json.ok, true);
    assert.equal(res.json.instance_start_time, info.instance_start_time);
  });
});

describe('shutdown', () => {
  test('SIGTERM stops the server with exit code 0 and no sanitizer report', async (t) => {
    if (server.external) return t.skip('external server');
    const result = await server.stop();
    assert.equal(result.killed, false, 'exited before the deadline');
    assert.equal(result.code, 0, `exit code; stderr:\n${result.stderr.slice(-4000)}`);
    assert.doesNotMatch(result.stderr, /Sanitizer|runtime error:/, 'no sanitizer report');
  });
});
