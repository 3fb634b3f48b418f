// Mango through the real endpoints: PouchDB's db.find()/createIndex()/getIndexes()/
// deleteIndex() against mimeo, index use and choice (_explain), sort rules, fields, skip and
// limit, bookmarks over 10,000 results, partial indexes, incremental index updates, and bad
// input answered with CouchDB's 400 errors — including a regular expression that backtracks
// catastrophically, which must be stopped, not hang a worker.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';
import { client } from './lib/http.mjs';
import PouchDBFind from 'pouchdb-find';
import { PouchDB } from './lib/pouch.mjs';

PouchDB.plugin(PouchDBFind);
import { uniqueDbName } from './lib/util.mjs';

let server;
let c;

before(async () => {
  server = await startServer();
  c = client(server.url);
});

after(async () => {
  const r = await server?.stop();
  if (r && !server.external) {
    assert.doesNotMatch(r.stderr, /Sanitizer|runtime error/, r.stderr.slice(-4000));
  }
});

async function newDb(prefix) {
  const name = uniqueDbName(prefix);
  assert.equal((await c.put(`/${name}`)).status, 201);
  return name;
}

async function find(db, body, status = 200) {
  const res = await c.post(`/${db}/_find`, body);
  assert.equal(res.status, status, res.text);
  return res.json;
}

test('PouchDB db.find against mimeo: indexes created, used, listed and deleted', async () => {
  const name = await newDb('findpouch');
  const db = new PouchDB(`${server.url}/${name}`);
  const people = [
    { _id: 'p1', name: 'Ada', age: 36, city: 'London' },
    { _id: 'p2', name: 'Grace', age: 45, city: 'Arlington' },
    { _id: 'p3', name: 'alan', age: 41, city: 'London' },
    { _id: 'p4', name: 'Edsger', age: 72, city: 'Austin' },
    { _id: 'p5', name: 'Barbara', city: 'Boston' },
  ];
  await db.bulkDocs(people);

  // without an index: the warning, and every match
  let res = await db.find({ selector: { city: 'London' } });
  assert.deepEqual(res.docs.map((d) => d._id).sort(), ['p1', 'p3']);
  assert.match(res.warning, /No matching index found/);

  // sorting needs an index
  await assert.rejects(db.find({ selector: { age: { $gt: 0 } }, sort: ['age'] }),
    (err) => err.status === 400 && err.name === 'no_usable_index');

  const created = await db.createIndex({ index: { fields: ['age'] }, name: 'by-age', ddoc: 'people' });
  assert.deepEqual(created, { result: 'created', id: '_design/people', name: 'by-age' });
  const again = await db.createIndex({ index: { fields: ['age'] }, name: 'by-age', ddoc: 'people' });
  assert.equal(again.result, 'exists');

  res = await db.find({ selector: { age: { $gt: 40 } }, sort: [{ age: 'desc' }], fields: ['_id', 'age'] });
  assert.equal(res.warning, undefined);
  assert.deepEqual(res.docs, [{ _id: 'p4', age: 72 }, { _id: 'p2', age: 45 }, { _id: 'p3', age: 41 }]);
  res = await db.find({ selector: { age: { $gte: 36 } }, sort: ['age'], skip: 1, limit: 2 });
  assert.deepEqual(res.docs.map((d) => d._id), ['p3', 'p2']);

  // the index follows later writes (incrementally, from the changes feed)
  await db.put({ _id: 'p6', name: 'Barbara L', age: 40 });
  const p2 = await db.get('p2');
  await db.remove(p2);
  res = await db.find({ selector: { age: { $gt: 38 } }, sort: ['age'] });
  assert.deepEqual(res.docs.map((d) => d._id), ['p6', 'p3', 'p4']);

  const { indexes } = await db.getIndexes();
  assert.deepEqual(indexes.map((i) => i.name), ['_all_docs', 'by-age']);
  assert.deepEqual(indexes[1].def.fields, [{ age: 'asc' }]);
  assert.equal(indexes[1].ddoc, '_design/people');

  // the index is a design document in CouchDB's shape, so it replicates
  const ddoc = await db.get('_design/people');
  assert.equal(ddoc.language, 'query');
  assert.deepEqual(ddoc.views['by-age'].map.fields, { age: 'asc' });

  await db.deleteIndex(indexes[1]);
  assert.deepEqual((await db.getIndexes()).indexes.map((i) => i.name), ['_all_docs']);
  await assert.rejects(db.get('_design/people'), (err) => err.status === 404);
  await assert.rejects(db.find({ selector: { age: { $gt: 0 } }, sort: ['age'] }),
    (err) => err.status === 400);
});

test('index choice, use_index, _explain and partial indexes', async () => {
  const db = await newDb('findplan');
  const docs = [];
  for (let i = 0; i < 60; i++) docs.push({ _id: `d${String(i).padStart(2, '0')}`, a: i % 6, b: i % 5, kind: i % 2 ? 'odd' : 'even' });
  assert.equal((await c.post(`/${db}/_bulk_docs`, { docs })).status, 201);
  for (const [fields, ddoc] of [[['a'], 'ia'], [['a', 'b'], 'iab'], [['b'], 'ib']]) {
    const r = await c.post(`/${db}/_index`, { index: { fields }, ddoc, name: ddoc });
    assert.equal(r.status, 200, r.text);
  }
  const partial = await c.post(`/${db}/_index`, { index: { fields: ['a'], partial_filter_selector: { kind: 'odd' } }, ddoc: 'podd', name: 'podd' });
  assert.equal(partial.status, 200, partial.text);

  const explain = async (body) => {
    const r = await c.post(`/${db}/_explain`, body);
    assert.equal(r.status, 200, r.text);
    return r.json;
  };
  // the longest restricted prefix wins
  assert.equal((await explain({ selector: { a: 1, b: 2 } })).index.name, 'iab');
  // then the fewest columns
  assert.equal((await explain({ selector: { a: { $gt: 2 } } })).index.name, 'ia');
  assert.equal((await explain({ selector: { b: 3 } })).index.name, 'ib');
  // nothing usable: the special index
  const ex = await explain({ selector: { kind: 'odd' } });
  assert.equal(ex.index.name, '_all_docs');
  assert.equal(ex.index.type, 'special');
  assert.deepEqual(ex.selector, { kind: { $eq: 'odd' } });

  // a partial index serves only queries that name it
  assert.notEqual((await explain({ selector: { a: 1 } })).index.name, 'podd');
  const withPartial = await find(db, { selector: { a: 1 }, use_index: 'podd' });
  assert.equal(withPartial.warning, undefined);
  assert.deepEqual(withPartial.docs.map((d) => d.kind), Array(withPartial.docs.length).fill('odd'));
  assert.equal(withPartial.docs.length, 10);
  // rows outside the partial filter are not in the index: a = 2 is only on even documents
  assert.deepEqual((await find(db, { selector: { a: 2 }, use_index: 'podd' })).docs, []);
  assert.equal((await find(db, { selector: { a: 2 } })).docs.length, 10);
  // a use_index that cannot serve: a warning and a fallback, or an error without fallback
  const fallback = await find(db, { selector: { kind: 'odd' }, use_index: ['ib', 'ib'] });
  assert.match(fallback.warning, /_design\/ib, ib was not used because it is not a valid index for this query/);
  assert.equal(fallback.docs.length, 25);
  const noFallback = await c.post(`/${db}/_find`, { selector: { kind: 'odd' }, use_index: 'ib', allow_fallback: false });
  assert.equal(noFallback.status, 400);
  assert.equal(noFallback.json.error, 'no_usable_index');

  // a sort on a column after constant columns can use the index
  const sorted = await find(db, { selector: { a: 2, b: { $gte: 0 } }, sort: ['b'] });
  assert.equal(sorted.warning, undefined);
  assert.deepEqual(sorted.docs.map((d) => d.b), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4].sort());
  // mixed directions are refused
  const mixed = await c.post(`/${db}/_find`, { selector: { a: 1 }, sort: [{ a: 'asc' }, { b: 'desc' }] });
  assert.equal(mixed.status, 400);
  assert.equal(mixed.json.error, 'unsupported_mixed_sort');

  // execution statistics
  const stats = await find(db, { selector: { a: 1, b: 1 }, execution_stats: true });
  assert.equal(stats.execution_stats.results_returned, 2);
  assert.equal(stats.execution_stats.total_docs_examined, 2);
  assert.ok(stats.execution_stats.total_keys_examined >= 2);
  assert.equal(typeof stats.execution_stats.execution_time_ms, 'number');

  // update=false reads the index as it is; the next query brings it up
  assert.equal((await c.put(`/${db}/late`, { a: 5, b: 4, kind: 'even' })).status, 201);
  const stale = await find(db, { selector: { a: 5, b: 4 }, update: false });
  assert.equal(stale.docs.length, 2);
  const fresh = await find(db, { selector: { a: 5, b: 4 } });
  assert.equal(fresh.docs.length, 3);

  // deleting the design document drops its index from the list
  const dd = await c.get(`/${db}/_design/ib`);
  assert.equal((await c.delete(`/${db}/_design/ib?rev=${dd.json._rev}`)).status, 200);
  const list = await c.get(`/${db}/_index`);
  assert.deepEqual(list.json.indexes.map((i) => i.name), ['_all_docs', 'ia', 'iab', 'podd']);
  assert.equal(list.json.total_rows, 4);
  assert.deepEqual(list.json.indexes[3].def.partial_filter_selector, { kind: 'odd' });
});

test('bookmarks page through 10,000 results, with and without an index', async () => {
  const db = await newDb('findpages');
  const total = 10_000;
  for (let start = 0; start < total; start += 2000) {
    const docs = [];
    for (let i = start; i < start + 2000; i++) docs.push({ _id: `k${String(i).padStart(5, '0')}`, v: i % 97, g: 'x' });
    assert.equal((await c.post(`/${db}/_bulk_docs`, { docs })).status, 201);
  }
  assert.equal((await c.post(`/${db}/_index`, { index: { fields: ['g', 'v'] } })).status, 200);
  for (const body of [{ selector: { g: 'x' } }, { selector: { g: 'x', v: { $gte: 0 } }, sort: ['g', 'v'] },
    { selector: { g: 'x', v: { $gte: 0 } }, sort: [{ g: 'desc' }, { v: 'desc' }] },
    { selector: { _id: { $gt: null } } }, { selector: { _id: { $gt: null } }, sort: [{ _id: 'desc' }] }]) {
    const seen = [];
    let bookmark;
    let pages = 0;
    for (;;) {
      const res = await find(db, { ...body, limit: 1000, ...(bookmark ? { bookmark } : {}) });
      pages++;
      seen.push(...res.docs);
      if (res.docs.length < 1000) break;
      bookmark = res.bookmark;
    }
    assert.equal(seen.length, total, JSON.stringify(body));
    assert.equal(new Set(seen.map((d) => d._id)).size, total);
    assert.ok(pages >= 10);
    if (body.sort) {
      const desc = Object.values(body.sort[0])[0] === 'desc';
      const byV = body.sort.length > 1;
      for (let i = 1; i < seen.length; i++) {
        let [a, b] = [seen[i - 1], seen[i]];
        if (desc) [a, b] = [b, a];
        const ok = byV ? a.v < b.v || (a.v === b.v && a._id < b._id) : a._id < b._id;
        assert.ok(ok, `${JSON.stringify(body.sort)}: order at ${i}`);
      }
    }
  }
  // a bookmark past the end gives no documents and comes back unchanged
  const last = await find(db, { selector: { _id: { $gte: 'k09999' } } });
  const after = await find(db, { selector: { _id: { $gte: 'k09999' } }, bookmark: last.bookmark });
  assert.deepEqual(after.docs, []);
  assert.equal(after.bookmark, last.bookmark);
});

test('fields, conflicts, skip, limit and _id ranges', async () => {
  const db = await newDb('findfields');
  const docs = [
    { _id: 'a', x: { y: 1, z: 2 }, list: [10, 20], n: 1 },
    { _id: 'b', x: { y: 2 }, n: 2 },
    { _id: 'c', n: 3 },
  ];
  assert.equal((await c.post(`/${db}/_bulk_docs`, { docs })).status, 201);
  let r = await find(db, { selector: { n: { $gte: 1 } }, fields: ['x.y', '_id', 'list.1', 'missing'] });
  assert.deepEqual(r.docs, [{ x: { y: 1 }, _id: 'a', list: { 1: 20 } }, { x: { y: 2 }, _id: 'b' }, { _id: 'c' }]);
  r = await find(db, { selector: { n: { $gte: 1 } }, fields: ['x.y', 'x'] });
  assert.deepEqual(r.docs, [{ x: { y: 1, z: 2 } }, { x: { y: 2 } }, {}]);
  r = await find(db, { selector: { _id: { $gt: 'a', $lte: 'c' } }, skip: 1, limit: 5 });
  assert.deepEqual(r.docs.map((d) => d._id), ['c']);
  r = await find(db, { selector: { n: 1 }, limit: 0 });
  assert.deepEqual(r.docs, []);

  // a conflict, shown with conflicts:true
  const a = await c.get(`/${db}/a`);
  assert.equal((await c.post(`/${db}/_bulk_docs`, { new_edits: false, docs: [{ _id: 'a', _rev: '1-ffffffffffffffffffffffffffffffff', n: 1 }] })).status, 201);
  r = await find(db, { selector: { _id: 'a' }, conflicts: true });
  assert.equal(r.docs.length, 1);
  assert.ok(Array.isArray(r.docs[0]._conflicts), JSON.stringify(r.docs[0]));
  assert.ok(a.json._rev);
  r = await find(db, { selector: { _id: 'a' } });
  assert.equal(r.docs[0]._conflicts, undefined);
  // design documents are never results
  assert.equal((await c.put(`/${db}/_design/z`, { n: 1 })).status, 201);
  r = await find(db, { selector: { n: 1 } });
  assert.deepEqual(r.docs.map((d) => d._id), ['a']);
});

test('bad input: CouchDB 400 errors, and a catastrophic regex is stopped', async () => {
  const db = await newDb('findbad');
  const docs = [{ _id: 'r', s: `${'a'.repeat(40)}b` }, { _id: 'r2', s: `${'a'.repeat(60)}!` }];
  for (let i = 0; i < 20; i++) docs.push({ _id: `f${i}`, s: `plain ${i}` });
  assert.equal((await c.post(`/${db}/_bulk_docs`, { docs })).status, 201);
  const cases = [
    [{ selector: { a: { $in: 5 } } }, 'bad_arg', 'Bad argument for operator $in: 5'],
    [{ selector: { a: { $bogus: 1 } } }, 'invalid_operator', 'Invalid operator: $bogus'],
    [{ selector: { a: { $regex: '(' } } }, 'bad_arg'],
    [{ selector: { a: { $regex: 5 } } }, 'invalid_operator'],
    [{ selector: { a: { $size: -1 } } }, 'bad_arg'],
    [{ selector: { a: { $mod: [0, 1] } } }, 'bad_arg'],
    [{ selector: { a: { $exists: 'yes' } } }, 'bad_arg'],
    [{ selector: { a: { $type: 3 } } }, 'bad_arg'],
    [{ selector: { $and: {} } }, 'bad_arg'],
    [{ selector: { $where: 'x' } }, 'not_supported'],
    [{ selector: { $eq: 1 } }, 'invalid_selector', 'One or more conditions is missing a field name.'],
    [{ selector: [] }, 'invalid_selector_json'],
    [{}, 'missing_required_key', 'Missing required key: selector'],
    [{ selector: {}, limit: -1 }, 'invalid_non_neg_integer'],
    [{ selector: {}, skip: 'x' }, 'invalid_non_neg_integer'],
    [{ selector: {}, r: 0 }, 'invalid_pos_integer'],
    [{ selector: {}, conflicts: 'yes' }, 'invalid_boolean'],
    [{ selector: {}, sort: 'a' }, 'invalid_sort_json'],
    [{ selector: {}, sort: [{ a: 'up' }] }, 'invalid_sort_dir'],
    [{ selector: {}, fields: 'a' }, 'invalid_fields_json'],
    [{ selector: {}, bookmark: 'not a bookmark!' }, 'invalid_bookmark'],
    [{ selector: {}, bookmark: 5 }, 'invalid_bookmark'],
    [{ selector: {}, bogus: true }, 'invalid_key', 'Invalid key bogus for this request.'],
    [{ selector: { 'a..b': 1 } }, 'invalid_field_name'],
  ];
  for (const [body, error, reason] of cases) {
    const r = await c.post(`/${db}/_find`, body);
    assert.equal(r.status, 400, `${JSON.stringify(body)}: ${r.text}`);
    assert.equal(r.json.error, error, JSON.stringify(body));
    if (reason) assert.equal(r.json.reason, reason);
  }
  const notJson = await c.post(`/${db}/_find`, '{"selector":', { headers: { 'content-type': 'application/json' } });
  assert.equal(notJson.status, 400);
  const wrongType = await c.post(`/${db}/_find`, '{}', { headers: { 'content-type': 'text/plain' } });
  assert.equal(wrongType.status, 415);
  assert.equal((await c.get(`/${db}/_find`)).status, 405);
  assert.equal((await c.post('/no_such_db_here/_find', { selector: {} })).status, 404);
  assert.equal((await c.post(`/${db}/_index`, { index: { fields: [] } })).status, 400);
  assert.equal((await c.post(`/${db}/_index`, { fields: ['a'] })).status, 400);
  assert.equal((await c.post(`/${db}/_index`, { index: { fields: ['a'] }, type: 'text' })).status, 400);
  assert.equal((await c.delete(`/${db}/_index/nope/json/nope`)).status, 404);

  // (a+)+$ on 40 a's and a b backtracks 2^40 ways without a limit: the match limit ends it
  const t0 = Date.now();
  const r = await find(db, { selector: { s: { $regex: '^(a+)+$' } }, execution_stats: true });
  assert.deepEqual(r.docs, []);
  assert.equal(r.execution_stats.total_docs_examined, 22);
  assert.ok(Date.now() - t0 < 60_000, `took ${Date.now() - t0} ms`);
  // and the server still answers
  assert.equal((await c.get('/')).status, 200);
});

test('a document nested to the depth PUT accepts is found, with and without an index', async () => {
  const db = await newDb('finddeep');
  // the deepest document PUT accepts: one more level is refused
  let depth = 0;
  for (let n = 300; n > 200; n--) {
    const body = { _id: 'deep', v: 1, t: JSON.parse('{"a":'.repeat(n) + '1' + '}'.repeat(n)) };
    const res = await c.put(`/${db}/deep`, body);
    if (res.status === 201) { depth = n; break; }
    assert.equal(res.status, 400, res.text);
  }
  assert.ok(depth > 0);
  const full = await find(db, { selector: { v: 1 } });
  assert.deepEqual(full.docs.map((d) => d._id), ['deep']);
  assert.equal((await c.post(`/${db}/_index`, { index: { fields: ['v'] } })).status, 200);
  const indexed = await find(db, { selector: { v: 1 }, fields: ['_id', 'v'] });
  assert.deepEqual(indexed.docs, [{ _id: 'deep', v: 1 }]);
});

test('rows answered by the index alone: stale rows are checked, definitions follow design documents', async () => {
  const db = await newDb('findexact');
  const docs = Array.from({ length: 30 }, (_, i) => ({ _id: `d${i}`, k: `k${i % 3}`, n: i }));
  assert.equal((await c.post(`/${db}/_bulk_docs`, { docs })).status, 201);
  assert.equal((await c.post(`/${db}/_index`, { index: { fields: ['k'] }, ddoc: 'ik', name: 'k' })).status, 200);
  let r = await find(db, { selector: { k: 'k1' }, limit: 100 });
  assert.deepEqual(r.docs.map((d) => d._id).sort(), ['d1', 'd10', 'd13', 'd16', 'd19', 'd22', 'd25', 'd28', 'd4', 'd7']);
  assert.equal(r.warning, undefined);
  // whole documents, as GET serves them
  const got = await c.get(`/${db}/d4`);
  assert.deepEqual(r.docs.find((d) => d._id === 'd4'), got.json);
  // a projection still works on this path
  r = await find(db, { selector: { k: 'k1' }, fields: ['n'], limit: 2 });
  assert.deepEqual(r.docs, [{ n: 1 }, { n: 10 }]);

  // d4 moves from k1 to k2; with update=false its row still says k1, and the document is
  // checked again instead of being trusted
  assert.equal((await c.put(`/${db}/d4`, { _rev: got.json._rev, k: 'k2', n: 4 })).status, 201);
  r = await find(db, { selector: { k: 'k1' }, update: false, limit: 100 });
  assert.ok(!r.docs.some((d) => d._id === 'd4'), JSON.stringify(r.docs));
  r = await find(db, { selector: { k: 'k2' }, update: false, limit: 100 });
  assert.ok(!r.docs.some((d) => d._id === 'd4'), 'the stale index has no k2 row for d4 yet');
  r = await find(db, { selector: { k: 'k2' }, limit: 100 });
  assert.ok(r.docs.some((d) => d._id === 'd4' && d.k === 'k2'));
  r = await find(db, { selector: { k: 'k1' }, limit: 100 });
  assert.equal(r.docs.length, 9);

  // an index written as a plain design document (as replication brings one) is seen by the
  // next query, and one deleted the same way is gone
  const ddoc = { _id: '_design/plain', language: 'query', views: { byn: {
    map: { fields: { n: 'asc' } }, reduce: '_count', options: { def: { fields: ['n'] } } } } };
  const put = await c.put(`/${db}/_design/plain`, ddoc);
  assert.equal(put.status, 201, put.text);
  r = await find(db, { selector: { n: { $gt: 25 } }, use_index: 'plain/byn', allow_fallback: false });
  assert.deepEqual(r.docs.map((d) => d._id), ['d26', 'd27', 'd28', 'd29']);
  assert.equal((await c.delete(`/${db}/_design/plain?rev=${put.json.rev}`)).status, 200);
  const gone = await find(db, { selector: { n: { $gt: 25 } }, use_index: 'plain/byn', allow_fallback: false }, 400);
  assert.equal(gone.error, 'no_usable_index');
});

test('index rows read from document text agree with the tree: escapes, nesting, arrays, numbers', async () => {
  const db = await newDb('findtext');
  const docs = [
    { _id: 't1', a: { b: 1 } },
    { _id: 't2', a: { b: 'q"uo\\te \u00e9' } },
    { _id: 't3', a: { 'b\u00e9': 2, b: [1, { c: 2 }] } },
    { _id: 't4', a: [{ b: 5 }] },                 // a path through an array: no row for "a.b"
    { _id: 't5', a: { b: { c: 'x}', d: ']' } } },
    { _id: 't6', a: { 'x"y': 1, b: 1e21 } },
    { _id: 't7', a: { b: -0.5 }, 'a.b': 'dotted' },
    { _id: 't8', a: 'scalar' },
    { _id: 't9', a: { b: null } },
    { _id: 't10', 'a.b': 3 },
  ];
  assert.equal((await c.post(`/${db}/_bulk_docs`, { docs })).status, 201);
  // the same two queries with no index first (every document checked by the selector)
  const sels = [{ 'a.b': { $gte: null } }, { 'a\\.b': { $gte: null } }, { 'a.b': { $gt: 0 } }];
  const plain = [];
  for (const selector of sels) {
    const r = await find(db, { selector, limit: 100 });
    assert.match(r.warning, /No matching index/);
    plain.push(r.docs.map((d) => d._id).sort());
  }
  assert.equal((await c.post(`/${db}/_index`, { index: { fields: ['a.b'] }, name: 'ab', ddoc: 'text' })).status, 200);
  assert.equal((await c.post(`/${db}/_index`, { index: { fields: ['a\\.b'] }, name: 'adotb', ddoc: 'text' })).status, 200);
  for (const [i, selector] of sels.entries()) {
    const r = await find(db, { selector, limit: 100 });
    assert.equal(r.warning, undefined, JSON.stringify(selector));
    assert.deepEqual(r.docs.map((d) => d._id).sort(), plain[i], JSON.stringify(selector));
  }
  // and in index order: null < numbers < strings < arrays < objects
  const r = await find(db, { selector: { 'a.b': { $gte: null } }, sort: ['a.b'], limit: 100 });
  assert.deepEqual(r.docs.map((d) => d._id), ['t9', 't7', 't1', 't6', 't2', 't3', 't5']);
});
