// filter=_selector on the changes feed in every feed mode, its errors, and PouchDB's
// changes({filter:'_selector'}) and selector-filtered replication (one-off and live).

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import { client, docPath, assertError, expectStatus } from './lib/http.mjs';
import { openFeed } from './lib/feed.mjs';
import { PouchDB, memoryDb } from './lib/pouch.mjs';
import { uniqueDbName } from './lib/util.mjs';

let server;
let c;
const feeds = [];

before(async () => {
  server = await startServer();
  c = client(server.url);
});

after(async () => {
  for (const f of feeds) f.close();
  await server?.stop();
});

async function seeded() {
  const db = uniqueDbName('sel');
  expectStatus(await c.put(`/${db}`), 201);
  const docs = [];
  for (let i = 0; i < 20; i++) docs.push({ _id: `d${String(i).padStart(2, '0')}`, n: i, kind: i % 2 ? 'odd' : 'even' });
  docs.push({ _id: 'nested', owner: { name: 'ann' }, n: 100 });
  expectStatus(await c.post(`/${db}/_bulk_docs`, { docs }), 201);
  return db;
}

const SEL = { selector: { kind: 'odd', n: { $gt: 10 } } };
const WANT = ['d11', 'd13', 'd15', 'd17', 'd19'];

describe('_changes?filter=_selector', () => {
  test('normal feed: only matching winners, doc only when asked, limit counts matches', async () => {
    const db = await seeded();
    let res = await c.post(`/${db}/_changes?filter=_selector`, SEL);
    let body = expectStatus(res, 200);
    assert.deepEqual(body.results.map((r) => r.id), WANT);
    assert.ok(body.results.every((r) => r.doc === undefined));
    res = await c.post(`/${db}/_changes?filter=_selector&include_docs=true&limit=2`, SEL);
    body = expectStatus(res, 200);
    assert.deepEqual(body.results.map((r) => r.id), ['d11', 'd13']);
    assert.equal(body.results[0].doc.n, 11);
    assert.equal(body.last_seq, body.results[1].seq);
    // _id and nested fields are visible to the selector
    res = await c.post(`/${db}/_changes?filter=_selector`, { selector: { _id: { $regex: '^d0' }, n: { $lt: 3 } } });
    assert.deepEqual(expectStatus(res, 200).results.map((r) => r.id), ['d00', 'd01', 'd02']);
    res = await c.post(`/${db}/_changes?filter=_selector`, { selector: { 'owner.name': 'ann' } });
    assert.deepEqual(expectStatus(res, 200).results.map((r) => r.id), ['nested']);
    // an update that stops matching leaves the feed; a deleted doc no longer matches
    const d11 = expectStatus(await c.get(docPath(db, 'd11')), 200);
    expectStatus(await c.put(docPath(db, 'd11'), { ...d11, kind: 'changed' }), 201);
    const d13 = expectStatus(await c.get(docPath(db, 'd13')), 200);
    expectStatus(await c.delete(`${docPath(db, 'd13')}?rev=${d13._rev}`), 200);
    res = await c.post(`/${db}/_changes?filter=_selector`, SEL);
    assert.deepEqual(expectStatus(res, 200).results.map((r) => r.id), ['d15', 'd17', 'd19']);
  });

  test('bad or missing selector: 400 bad_request', async () => {
    const db = await seeded();
    let res = await c.get(`/${db}/_changes?filter=_selector`);
    assertError(res, 400, 'bad_request');
    assert.match(res.json.reason, /Selector must be specified/);
    res = await c.post(`/${db}/_changes?filter=_selector`, { other: 1 });
    assertError(res, 400, 'bad_request');
    res = await c.post(`/${db}/_changes?filter=_selector`, { selector: [1] });
    assertError(res, 400, 'bad_request');
    res = await c.post(`/${db}/_changes?filter=_selector`, { selector: { n: { $bogus: 1 } } });
    assertError(res, 400, 'bad_request');
    res = await c.post(`/${db}/_changes?filter=_selector`, { selector: { n: { $regex: '(' } } });
    assertError(res, 400, 'bad_request');
    res = await c.post(`/${db}/_changes?filter=_bogus`, SEL);
    assertError(res, 400, 'bad_request');
  });

  test('longpoll waits for a matching change, skipping others', async () => {
    const db = await seeded();
    const since = expectStatus(await c.get(`/${db}`), 200).update_seq;
    const f = await openFeed(server.url, `/${db}/_changes?feed=longpoll&filter=_selector&since=${since}&timeout=10000`,
      { method: 'POST', body: SEL });
    feeds.push(f);
    await new Promise((r) => setTimeout(r, 200));
    expectStatus(await c.put(docPath(db, 'x1'), { kind: 'even', n: 50 }), 201);
    expectStatus(await c.put(docPath(db, 'x2'), { kind: 'odd', n: 50 }), 201);
    await f.waitEnd(10_000);
    const body = JSON.parse(f.text);
    assert.deepEqual(body.results.map((r) => r.id), ['x2']);
  });

  test('continuous and eventsource deliver only matches', async () => {
    const db = await seeded();
    const cont = await openFeed(server.url, `/${db}/_changes?feed=continuous&filter=_selector&heartbeat=1000`,
      { method: 'POST', body: SEL });
    const es = await openFeed(server.url, `/${db}/_changes?feed=eventsource&filter=_selector&heartbeat=1000`,
      { method: 'POST', body: SEL });
    feeds.push(cont, es);
    expectStatus(await c.put(docPath(db, 'y1'), { kind: 'even', n: 70 }), 201);
    expectStatus(await c.put(docPath(db, 'y2'), { kind: 'odd', n: 70 }), 201);
    await cont.waitFor((f) => f.rows().some((r) => r.id === 'y2'));
    assert.deepEqual(cont.rows().filter((r) => r.id).map((r) => r.id), [...WANT, 'y2']);
    await es.waitFor((f) => f.text.includes('"y2"'));
    const ids = es.text.split('\n').filter((l) => l.startsWith('data: {')).map((l) => JSON.parse(l.slice(6)).id);
    assert.deepEqual(ids, [...WANT, 'y2']);
    cont.close();
    es.close();
  });
});

describe('PouchDB against mimeo', () => {
  test("db.changes({filter:'_selector'})", async () => {
    const db = await seeded();
    const remote = new PouchDB(`${server.url}/${db}`);
    const res = await remote.changes({ filter: '_selector', selector: SEL.selector });
    assert.deepEqual(res.results.map((r) => r.id), WANT);
  });

  test('selector-filtered replication, one-off and live', async () => {
    const db = await seeded();
    const remote = new PouchDB(`${server.url}/${db}`);
    const local = memoryDb('selrep');
    await PouchDB.replicate(remote, local, { selector: SEL.selector });
    let ids = (await local.allDocs()).rows.map((r) => r.id);
    assert.deepEqual(ids, WANT);

    const live = memoryDb('sellive');
    const rep = PouchDB.replicate(remote, live, { selector: SEL.selector, live: true, retry: true });
    try {
      const deadline = Date.now() + 15_000;
      const waitIds = async (want) => {
        for (;;) {
          ids = (await live.allDocs()).rows.map((r) => r.id);
          if (JSON.stringify(ids) === JSON.stringify(want)) return;
          if (Date.now() > deadline) assert.fail(`live replication: ${JSON.stringify(ids)}`);
          await new Promise((r) => setTimeout(r, 100));
        }
      };
      await waitIds(WANT);
      expectStatus(await c.put(docPath(db, 'z1'), { kind: 'even', n: 90 }), 201);
      expectStatus(await c.put(docPath(db, 'z2'), { kind: 'odd', n: 90 }), 201);
      await waitIds([...WANT, 'z2']);
    } finally {
      rep.cancel();
    }
  });
});
