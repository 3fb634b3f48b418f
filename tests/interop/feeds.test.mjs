// The _changes feed over raw HTTP: normal, longpoll, continuous and eventsource modes, their
// parameters, and how quickly a held-open feed delivers a new write (≤ 100 ms).

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import net from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { startServer } from './lib/server.mjs';
import { client, docPath } from './lib/http.mjs';
import { openFeed } from './lib/feed.mjs';
import { uniqueDbName, hashOf, sorted } from './lib/util.mjs';

const LATENCY_LIMIT_MS = 100;
// Time given to the server to park a freshly sent feed request before the write whose delivery
// is measured; without it the write could land before the request and the test would measure
// an immediate answer instead of a wake-up.
const SETTLE_MS = 200;

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

async function feed(path, opts) {
  const f = await openFeed(server.url, path, opts);
  feeds.push(f);
  return f;
}

async function newDb(prefix) {
  const name = uniqueDbName(prefix);
  const res = await c.put(`/${name}`);
  assert.equal(res.status, 201, res.text);
  return name;
}

async function put(db, id, body = {}) {
  const res = await c.put(docPath(db, id), body);
  assert.equal(res.status, 201, `PUT ${id}: ${res.text}`);
  return res.json.rev;
}

/** A seq as a query parameter value: opaque strings as they are, anything else as JSON. */
function seqParam(seq) {
  return typeof seq === 'string' ? seq : JSON.stringify(seq);
}

async function changes(db, query = '') {
  const res = await c.get(`/${db}/_changes${query}`);
  assert.equal(res.status, 200, res.text);
  assert.ok(Array.isArray(res.json.results), `results array: ${res.text.slice(0, 300)}`);
  assert.ok('last_seq' in res.json, `last_seq present: ${res.text.slice(0, 300)}`);
  return res.json;
}

describe('held-open feeds deliver a write within 100 ms', () => {
  let db;
  before(async () => {
    db = await newDb('latency');
    await put(db, 'existing', { v: 0 });
  });

  test('longpoll: a request held open answers within 100 ms of the write reply', async (t) => {
    const samples = [];
    for (let i = 0; i < 3; i++) {
      const f = await feed(`/${db}/_changes?feed=longpoll&since=now`);
      await delay(SETTLE_MS);
      assert.equal(f.done, false, `the longpoll answered before any write: ${f.text}`);
      const id = `lp-${i}`;
      const res = await c.put(docPath(db, id), { i });
      const acked = performance.now();
      assert.equal(res.status, 201, res.text);
      const endedAt = await f.waitEnd(5_000, 'longpoll answer');
      assert.equal(f.status, 200);
      const body = JSON.parse(f.text);
      assert.deepEqual(body.results.map((r) => r.id), [id]);
      assert.ok('last_seq' in body);
      samples.push(endedAt - acked);
    }
    t.diagnostic(`longpoll latencies: ${samples.map((s) => s.toFixed(1)).join(', ')} ms`);
    for (const ms of samples) {
      assert.ok(ms <= LATENCY_LIMIT_MS, `longpoll delivery latencies ${samples.map((s) => s.toFixed(1)).join(', ')} ms`);
    }
  });

  test('continuous: each new row arrives within 100 ms of the write reply', async (t) => {
    const f = await feed(`/${db}/_changes?feed=continuous&since=now&heartbeat=10000`);
    await f.response;
    assert.equal(f.status, 200);
    await delay(SETTLE_MS);
    const samples = [];
    for (let i = 0; i < 3; i++) {
      const id = `ct-${i}`;
      const res = await c.put(docPath(db, id), { i });
      const acked = performance.now();
      assert.equal(res.status, 201, res.text);
      const at = await f.waitFor((x) => x.rows().some((r) => r.id === id), 5_000, `row for ${id}`);
      samples.push(at - acked);
    }
    f.close();
    assert.deepEqual(f.rows().map((r) => r.id), ['ct-0', 'ct-1', 'ct-2']);
    t.diagnostic(`continuous latencies: ${samples.map((s) => s.toFixed(1)).join(', ')} ms`);
    for (const ms of samples) {
      assert.ok(ms <= LATENCY_LIMIT_MS, `continuous delivery latencies ${samples.map((s) => s.toFixed(1)).join(', ')} ms`);
    }
  });
});

describe('continuous, longpoll and eventsource framing', () => {
  let db;
  before(async () => {
    db = await newDb('framing');
    for (const id of ['a', 'b', 'c']) await put(db, id, { id });
  });

  test('continuous with timeout ends with a {"last_seq"} line after its rows', async () => {
    const f = await feed(`/${db}/_changes?feed=continuous&since=0&timeout=300`);
    await f.waitEnd(10_000, 'continuous feed with timeout=300');
    assert.equal(f.status, 200);
    const rows = f.rows();
    const last = rows.at(-1);
    assert.ok(last && 'last_seq' in last, `final line has last_seq: ${JSON.stringify(f.text)}`);
    assert.deepEqual(rows.slice(0, -1).map((r) => r.id), ['a', 'b', 'c']);
    assert.deepEqual(last.last_seq, rows[2].seq, 'last_seq is the seq of the last row');
  });

  test('continuous with limit stops after that many rows with a last_seq line', async () => {
    const f = await feed(`/${db}/_changes?feed=continuous&since=0&limit=2`);
    await f.waitEnd(10_000, 'continuous feed with limit=2');
    const rows = f.rows();
    assert.deepEqual(rows.slice(0, -1).map((r) => r.id), ['a', 'b']);
    assert.ok('last_seq' in rows.at(-1));
  });

  test('an HTTP/1.0 client gets rows longer than the reply block whole, before and after idling', async () => {
    const big = await newDb('http10');
    const pad = 'x'.repeat(700);
    for (const id of ['p1', 'p2']) await put(big, id, { pad });
    const sock = net.connect(Number(new URL(server.url).port), '127.0.0.1');
    let text = '';
    sock.setEncoding('utf8');
    sock.on('data', (d) => { text += d; });
    const closed = new Promise((res) => sock.on('close', res));
    sock.write(`GET /${big}/_changes?feed=continuous&since=0&include_docs=true&timeout=1500 ` +
      'HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n');
    await delay(600);   // the feed has sent p1, p2 and waits
    await put(big, 'p3', { pad });
    await Promise.race([closed, delay(10_000)]);
    const [head, body] = text.split('\r\n\r\n');
    assert.match(head, /^HTTP\/1\.[01] 200/);
    const rows = body.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
    assert.deepEqual(rows.slice(0, -1).map((r) => r.id), ['p1', 'p2', 'p3']);
    for (const r of rows.slice(0, -1)) assert.equal(r.doc.pad, pad);
    assert.ok('last_seq' in rows.at(-1));
  });

  test('continuous sends heartbeat newlines while idle', async () => {
    const f = await feed(`/${db}/_changes?feed=continuous&since=now&heartbeat=100`);
    await f.waitFor((x) => (x.text.match(/\n/g) ?? []).length >= 3, 5_000, 'three heartbeats');
    f.close();
    assert.equal(f.text.trim(), '', 'only newlines while idle');
  });

  test('longpoll sends heartbeat newlines while waiting and then a valid JSON body', async () => {
    const f = await feed(`/${db}/_changes?feed=longpoll&since=now&heartbeat=100`);
    await f.waitFor((x) => (x.text.match(/\n/g) ?? []).length >= 2, 5_000, 'two heartbeats');
    assert.equal(f.done, false);
    await put(db, 'after-heartbeats');
    await f.waitEnd(5_000, 'longpoll answer');
    const body = JSON.parse(f.text);
    assert.deepEqual(body.results.map((r) => r.id), ['after-heartbeats']);
  });

  test('longpoll answers at once when changes exist after since', async () => {
    const f = await feed(`/${db}/_changes?feed=longpoll&since=0`);
    await f.waitEnd(5_000, 'longpoll with pending changes');
    const body = JSON.parse(f.text);
    assert.ok(body.results.length >= 3);
  });

  test('longpoll with a timeout and no change ends with empty results and last_seq', async () => {
    const before = await changes(db);
    const f = await feed(`/${db}/_changes?feed=longpoll&since=now&timeout=200`);
    await f.waitEnd(10_000, 'longpoll timeout=200');
    const body = JSON.parse(f.text);
    assert.deepEqual(body.results, []);
    assert.deepEqual(body.last_seq, before.last_seq);
  });

  test('eventsource sends data:/id: events, then new writes as they happen', async () => {
    const f = await feed(`/${db}/_changes?feed=eventsource&since=0&heartbeat=10000`, { headers: { accept: 'text/event-stream' } });
    await f.response;
    assert.equal(f.status, 200);
    assert.match(f.headers['content-type'] ?? '', /^text\/event-stream/);
    const events = (x) => x.text.split('\n\n').slice(0, -1)
      .filter((e) => /^data: /m.test(e) && !/^event: heartbeat/m.test(e));
    await f.waitFor((x) => events(x).length >= 4, 5_000, 'four events');
    await put(db, 'es-live');
    await f.waitFor((x) => events(x).some((e) => e.includes('"es-live"')), 5_000, 'event for es-live');
    f.close();
    const parsed = events(f).map((e) => {
      const data = e.split('\n').find((l) => l.startsWith('data: '));
      const id = e.split('\n').find((l) => l.startsWith('id: '));
      assert.ok(id, `event has an id: line: ${JSON.stringify(e)}`);
      return JSON.parse(data.slice('data: '.length));
    });
    assert.deepEqual(parsed.slice(0, 3).map((r) => r.id), ['a', 'b', 'c']);
    assert.equal(parsed.at(-1).id, 'es-live');
    for (const r of parsed) assert.ok(Array.isArray(r.changes) && 'seq' in r);
  });
});

describe('normal feed parameters', () => {
  let db;
  const revs = {};
  before(async () => {
    db = await newDb('params');
    for (const id of ['d1', 'd2', 'd3', 'd4', 'd5']) revs[id] = await put(db, id, { id });
    // d2 updated: it moves to the end of the feed.
    revs.d2 = await put(db, 'd2', { _rev: revs.d2, id: 'd2', v: 2 });
    // d4 deleted.
    const del = await c.delete(`${docPath(db, 'd4')}?rev=${revs.d4}`);
    revs.d4 = del.json.rev;
    // d5 conflicted: two branches from its first revision's parent position.
    const base = revs.d5.split('-')[1];
    const x = `2-${hashOf('feed-x')}`;
    const y = `2-${hashOf('feed-y')}`;
    const res = await c.post(`/${db}/_bulk_docs`, { new_edits: false, docs: [
      { _id: 'd5', _rev: x, _revisions: { start: 2, ids: [x.slice(2), base] }, side: 'x' },
      { _id: 'd5', _rev: y, _revisions: { start: 2, ids: [y.slice(2), base] }, side: 'y' },
    ] });
    assert.equal(res.status, 201, res.text);
    revs.d5 = [x, y].sort().reverse();
  });

  test('rows list each doc once, at its latest change, in write order', async () => {
    const body = await changes(db, '?since=0');
    assert.deepEqual(body.results.map((r) => r.id), ['d1', 'd3', 'd2', 'd4', 'd5']);
    assert.deepEqual(body.last_seq, body.results.at(-1).seq);
    const d4 = body.results.find((r) => r.id === 'd4');
    assert.equal(d4.deleted, true);
    assert.deepEqual(d4.changes, [{ rev: revs.d4 }]);
    assert.equal(body.results.find((r) => r.id === 'd1').deleted, undefined, 'deleted only on deleted docs');
  });

  test('style=all_docs lists every leaf, winner first; main_only only the winner', async () => {
    const all = await changes(db, '?since=0&style=all_docs');
    const d5 = all.results.find((r) => r.id === 'd5');
    assert.equal(d5.changes[0].rev, revs.d5[0], 'winner first');
    assert.deepEqual(sorted(d5.changes.map((ch) => ch.rev)), sorted(revs.d5));
    const main = await changes(db, '?since=0');
    assert.deepEqual(main.results.find((r) => r.id === 'd5').changes, [{ rev: revs.d5[0] }]);
  });

  test('include_docs adds the winning doc; a deleted doc shows as a tombstone', async () => {
    const body = await changes(db, '?since=0&include_docs=true&conflicts=true');
    const byId = Object.fromEntries(body.results.map((r) => [r.id, r]));
    assert.deepEqual(byId.d2.doc, { _id: 'd2', _rev: revs.d2, id: 'd2', v: 2 });
    assert.deepEqual(byId.d4.doc, { _id: 'd4', _rev: revs.d4, _deleted: true });
    assert.equal(byId.d5.doc._rev, revs.d5[0]);
    assert.deepEqual(byId.d5.doc._conflicts, [revs.d5[1]]);
  });

  test('limit returns that many rows and their last seq; limit=0 only last_seq', async () => {
    const all = await changes(db, '?since=0');
    const two = await changes(db, '?since=0&limit=2');
    assert.deepEqual(two.results.map((r) => r.id), ['d1', 'd3']);
    assert.deepEqual(two.last_seq, two.results[1].seq);
    if ('pending' in two) assert.equal(two.pending, all.results.length - 2);
    const next = await changes(db, `?since=${encodeURIComponent(seqParam(two.last_seq))}&limit=2`);
    assert.deepEqual(next.results.map((r) => r.id), ['d2', 'd4'], 'paging with since=last_seq continues');
    const zero = await changes(db, '?since=0&limit=0');
    assert.deepEqual(zero.results, []);
    assert.ok(zero.last_seq !== undefined);
  });

  test('descending=true lists newest first', async () => {
    const body = await changes(db, '?since=0&descending=true');
    assert.deepEqual(body.results.map((r) => r.id), ['d5', 'd4', 'd2', 'd3', 'd1']);
    const one = await changes(db, '?descending=true&limit=1');
    assert.deepEqual(one.results.map((r) => r.id), ['d5']);
  });

  test('since=now returns no rows and the current last_seq', async () => {
    const all = await changes(db, '?since=0');
    const now = await changes(db, '?since=now');
    assert.deepEqual(now.results, []);
    assert.deepEqual(now.last_seq, all.last_seq);
    const info = await c.get(`/${db}`);
    assert.deepEqual(info.json.update_seq, all.last_seq, 'update_seq of GET /db equals last_seq');
  });

  test('filter=_doc_ids works with GET doc_ids=[…] and with a POST body', async () => {
    const viaGet = await changes(db, `?filter=_doc_ids&doc_ids=${encodeURIComponent(JSON.stringify(['d3', 'd1', 'nope']))}`);
    assert.deepEqual(viaGet.results.map((r) => r.id), ['d1', 'd3']);
    const viaPost = await c.post(`/${db}/_changes?filter=_doc_ids`, { doc_ids: ['d5', 'd2'] });
    assert.equal(viaPost.status, 200, viaPost.text);
    assert.deepEqual(viaPost.json.results.map((r) => r.id), ['d2', 'd5']);
    assert.ok('last_seq' in viaPost.json);
  });

  test('last_seq is present when results are empty and idle polls return the same last_seq', async () => {
    const first = await changes(db);
    const again = await changes(db);
    assert.deepEqual(again.last_seq, first.last_seq, 'nothing changed, same last_seq');
    const since = seqParam(first.last_seq);
    const empty1 = await changes(db, `?since=${encodeURIComponent(since)}`);
    const empty2 = await changes(db, `?since=${encodeURIComponent(since)}`);
    assert.deepEqual(empty1.results, []);
    assert.deepEqual(empty1.last_seq, first.last_seq);
    assert.deepEqual(empty2.last_seq, first.last_seq);
    // _local writes are not changes.
    await c.put(`/${db}/_local/cp`, { last_seq: first.last_seq });
    const afterLocal = await changes(db, `?since=${encodeURIComponent(since)}`);
    assert.deepEqual(afterLocal.results, []);
  });

  test('POST _changes accepts the same parameters as GET', async () => {
    const res = await c.post(`/${db}/_changes?since=0&limit=1`, {});
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.json.results.map((r) => r.id), ['d1']);
  });
});
