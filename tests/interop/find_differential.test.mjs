// Differential test of Mango selectors: seeded random documents and random selectors (every
// operator, nested fields, arrays, missing fields, mixed types, combinations at depth) run
// through mimeo's real POST /{db}/_find — with and without JSON indexes, sorted, and paged by
// bookmark — and through pouchdb-selector-core's matchesSelector. Results are compared as
// sets, and as sequences where a sort is given. A failure prints the seed: SEED=n reruns it.
//
// The reference evaluates the combination operators ($and, $or, $nor, $not) itself and asks
// pouchdb-selector-core about each field condition. Where pouchdb-find and CouchDB disagree,
// mimeo follows CouchDB; the generator stays out of those corners and the last test pins
// mimeo's (CouchDB's) answer on each of them:
//   1. $ne, $nin, $not and $nor on a missing field: CouchDB never matches a missing field
//      (negations are pushed down to the field's condition); pouchdb matches.
//   2. $in/$nin on a null value: pouchdb treats null like a missing field; CouchDB compares it.
//   3. {"$all": []}: false in CouchDB; true on any array in pouchdb.
//   4. {field: [a, b]} (implicit equality with an array): pouchdb reads the array as field
//      names "0", "1"; CouchDB compares the arrays.
//   5. A path through a scalar ("n.x" where n is 5) is a bad path in CouchDB: even
//      {"$exists": false} does not match; pouchdb reads it as missing.
//   6. Strings collate by ICU in CouchDB ("a" < "B" < "b"), by UTF-16 code units in pouchdb.
//   7. pouchdb merges the conditions of an explicit $and with JavaScript's < and > instead of
//      the collation (and drops conditions next to an $eq).
//   8. $beginsWith and $keyMapMatch (CouchDB 3.x) are unknown to pouchdb-selector-core.
//   9. $mod on 4.0: a float in CouchDB (never matches); the integer 4 in JavaScript.
//  10. _id is compared in Erlang term order by CouchDB (every string above every number).
//  11. $regex: Erlang's re (PCRE) in CouchDB, JavaScript RegExp in pouchdb: only their common
//      syntax is generated.
//  12. {"$all": [[1, 2]]} matches the array [1, 2] itself in CouchDB.
//  14. Inside $elemMatch/$allMatch on objects, pouchdb ignores an implicit condition whose
//      value is falsy ({"k": 0} matches every element); CouchDB compares.
//  13. $ne with an array argument: pouchdb reads the array as a list of values that must all
//      differ ({"$ne": []} is always true); CouchDB compares with the array.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { startServer } from './lib/server.mjs';
import { client } from './lib/http.mjs';
import { uniqueDbName } from './lib/util.mjs';

const require = createRequire(import.meta.url);
const { matchesSelector } = require('pouchdb-selector-core');
const { collate } = require('pouchdb-collate');

const SEED = process.env.SEED ? Number(process.env.SEED) : (Date.now() % 1_000_000_007);
const DOCS = 150;
const QUERIES = Number(process.env.FIND_QUERIES || 200);

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

// ---- a seeded generator -------------------------------------------------------------------

function rng(seed) {
  let s = BigInt(seed) || 1n;
  return () => {
    s ^= s << 13n; s &= 0xffffffffffffffffn;
    s ^= s >> 7n;
    s ^= s << 17n; s &= 0xffffffffffffffffn;
    return Number(s % 1_000_000n) / 1_000_000;
  };
}

function gen(seed) {
  const r = rng(seed);
  const int = (lo, hi) => lo + Math.floor(r() * (hi - lo + 1));
  const pick = (a) => a[Math.floor(r() * a.length)];
  const chance = (p) => r() < p;
  // lowercase letters and digits only: there ICU and code-unit order agree (difference 6)
  const str = () => Array.from({ length: int(0, 3) }, () => pick(['a', 'b', 'c', '0', '1', '2'])).join('');
  const num = () => (chance(0.7) ? int(-5, 5) : int(-5, 5) + 0.5); // never 4.0 (difference 9)
  const TAGS = ['red', 'green', 'blue', 'x'];
  const scalar = () => pick([() => num(), () => str(), () => chance(0.5), () => null])();
  const anyValue = () => pick([scalar, scalar, () => [num(), num()], () => ({ x: int(0, 3) }),
    () => [], () => ({})])();

  function doc(i) {
    const d = {
      _id: `d${String(i).padStart(3, '0')}`,
      n: num(),
      s: str(),
      tags: Array.from({ length: int(0, 3) }, () => pick(TAGS)),
      nums: Array.from({ length: int(0, 3) }, () => int(0, 5)),
      sub: { x: int(0, 3), y: str() },
      items: Array.from({ length: int(0, 3) }, () => ({ k: int(0, 3), v: pick(['a', 'b']) })),
    };
    const o = int(0, 9);
    if (o === 1) d.opt = null;
    else if (o === 2) d.opt = num();
    else if (o === 3) d.opt = str();
    else if (o === 4) d.opt = chance(0.5);
    else if (o === 5) d.opt = [int(0, 3), int(0, 3)];
    else if (o === 6) d.opt = { x: int(0, 3) };
    const dp = int(0, 2);
    if (dp === 1) d.deep = { a: { b: int(0, 3) } };
    else if (dp === 2) d.deep = { a: {} };
    return d;
  }

  // Fields every document has with a non-null value: negations are safe there (difference 1).
  const SAFE = ['n', 's', 'sub.x', 'sub.y', 'tags', 'nums', 'items'];
  const ALL = [...SAFE, 'opt', 'deep.a.b', '_id'];
  const REGEXES = ['^a', 'b$', 'a.c', '[0-9]', '^$', '^[a-c]+$', '1|2', 'c*b'];
  const TYPES = ['null', 'boolean', 'number', 'string', 'array', 'object'];

  function cond(field, safe) {
    const ops = ['$eq', '$gt', '$gte', '$lt', '$lte', '$in', '$exists', '$type', '$size',
      '$mod', '$regex', '$all', '$elemMatch', '$allMatch', 'implicit'];
    if (safe) ops.push('$ne', '$nin', '$ne');
    const op = pick(ops);
    const inArgs = () => Array.from({ length: int(1, 3) }, () => pick([num, str, () => pick(TAGS), () => chance(0.5)])());
    switch (op) {
      case 'implicit': return pick([num, str, () => chance(0.5)])();
      case '$eq': case '$ne': case '$gt': case '$gte': case '$lt': case '$lte':
        // _id against a non-string compares in Erlang's order (difference 10); $ne with an
        // array (difference 13)
        if (field === '_id') return { [op]: pick([() => `d${int(0, 1)}${int(0, 9)}`, str])() };
        if (op === '$ne') return { $ne: pick([scalar, () => ({ x: int(0, 3) })])() };
        return { [op]: anyValue() };
      case '$in': case '$nin': return { [op]: inArgs() }; // never null (difference 2)
      case '$exists':
        // no generated path runs through a scalar (difference 5)
        return { $exists: chance(0.5) };
      case '$type': return { $type: pick(TYPES) };
      case '$size': return { $size: int(0, 3) };
      case '$mod': return { $mod: [pick([2, 3, -3]), pick([-1, 0, 1])] };
      case '$regex': return { $regex: pick(REGEXES) };
      case '$all': return { $all: Array.from({ length: int(1, 2) }, () => pick([...TAGS, 0, 1, 2, 3])) };
      case '$elemMatch': case '$allMatch':
        if (field === 'items') {
          // explicit $eq: pouchdb skips a falsy implicit value there (difference 14)
          return { [op]: chance(0.5) ? { k: { $eq: int(0, 3) } } : { k: { $gt: int(0, 2) }, v: pick(['a', 'b']) } };
        }
        return { [op]: pick([() => ({ $eq: pick([...TAGS, 1, 2]) }), () => ({ $gt: int(0, 3) }),
          () => ({ $gte: int(0, 3), $lt: int(2, 5) }), () => ({ $in: [pick(TAGS), int(0, 5)] }),
          () => ({ $ne: pick([...TAGS, 2]) })])() };
      default: throw new Error(op);
    }
  }

  // A selector node: {sel, safe} where safe means only SAFE fields are involved.
  function node(depth, wantSafe) {
    const k = depth >= 3 ? 0 : int(0, 9);
    if (k <= 4) {
      const safe = wantSafe || chance(0.6);
      const field = pick(safe ? SAFE : ALL);
      let c0 = cond(field, safe);
      if (c0 !== null && typeof c0 === 'object' && chance(0.15) && !('$elemMatch' in c0) && !('$allMatch' in c0)) {
        const c1 = cond(field, safe); // two operators on one field
        if (c1 !== null && typeof c1 === 'object' && !('$elemMatch' in c1) && !('$allMatch' in c1)) c0 = { ...c0, ...c1 };
      }
      // nested object form for sub-fields, sometimes
      if (field.startsWith('sub.') && chance(0.4) && typeof c0 === 'object') {
        return { sel: { sub: { [field.slice(4)]: c0 } }, safe };
      }
      return { sel: { [field]: c0 }, safe };
    }
    if (k <= 6) {
      const kids = Array.from({ length: int(1, 3) }, () => node(depth + 1, wantSafe));
      return { sel: { [k === 5 ? '$and' : '$or']: kids.map((x) => x.sel) }, safe: kids.every((x) => x.safe) };
    }
    if (k === 7) {
      // implicit $and of several members (distinct keys)
      const kids = Array.from({ length: int(2, 3) }, () => node(depth + 1, wantSafe));
      const sel = {};
      for (const x of kids) for (const [kk, v] of Object.entries(x.sel)) if (!(kk in sel)) sel[kk] = v;
      return { sel, safe: kids.every((x) => x.safe) };
    }
    // negations over safe subtrees only (difference 1)
    if (k === 8) {
      const x = node(depth + 1, true);
      return { sel: { $not: x.sel }, safe: true };
    }
    const kids = Array.from({ length: int(1, 2) }, () => node(depth + 1, true));
    return { sel: { $nor: kids.map((x) => x.sel) }, safe: true };
  }

  return { r, int, pick, chance, doc, node, num, str };
}

// ---- the reference ------------------------------------------------------------------------

const COMBINATIONS = new Set(['$and', '$or', '$nor', '$not']);

/** CouchDB's meaning of a selector: combinations here, each field's condition by pouchdb. */
function reference(sel, doc) {
  return Object.entries(sel).every(([k, v]) => {
    if (k === '$and') return v.every((s) => reference(s, doc));
    if (k === '$or') return v.length === 0 || v.some((s) => reference(s, doc));
    if (k === '$nor') return !v.some((s) => reference(s, doc));
    if (k === '$not') return !reference(v, doc);
    return matchesSelector(doc, { [k]: v });
  });
}

function byId(a, b) { return a < b ? -1 : a > b ? 1 : 0; }

async function find(db, body) {
  const res = await c.post(`/${db}/_find`, body);
  assert.equal(res.status, 200, `_find ${JSON.stringify(body)}: ${res.text}`);
  return res.json;
}

async function findAllPages(db, body, pageSize) {
  const ids = [];
  let bookmark;
  for (let guard = 0; guard < 1000; guard++) {
    const res = await find(db, { ...body, limit: pageSize, ...(bookmark ? { bookmark } : {}) });
    ids.push(...res.docs.map((d) => d._id));
    if (res.docs.length < pageSize) return ids;
    bookmark = res.bookmark;
  }
  throw new Error('paging did not end');
}

test(`random selectors: mimeo _find equals the reference (SEED=${SEED})`, async () => {
  const g = gen(SEED);
  const db = uniqueDbName('finddiff');
  assert.equal((await c.put(`/${db}`)).status, 201);
  const docs = new Map();
  for (let i = 0; i < DOCS; i++) { const d = g.doc(i); docs.set(d._id, d); }
  const put = await c.post(`/${db}/_bulk_docs`, { docs: [...docs.values()] });
  assert.equal(put.status, 201);
  for (const row of put.json) docs.get(row.id)._rev = row.rev;

  // indexes: used whenever the selector requires their fields (CouchDB's rule)
  for (const fields of [['n'], ['s', 'n'], ['sub.x'], ['tags']]) {
    const res = await c.post(`/${db}/_index`, { index: { fields } });
    assert.equal(res.status, 200, res.text);
  }

  let indexed = 0;
  for (let q = 0; q < QUERIES; q++) {
    const { sel } = g.node(0, false);
    const ctx = `SEED=${SEED} query ${q}: ${JSON.stringify(sel)}`;
    const want = [...docs.values()].filter((d) => reference(sel, d)).map((d) => d._id).sort(byId);

    // a set, through whatever index the planner picks
    const res = await find(db, { selector: sel, limit: 100000 });
    const got = res.docs.map((d) => d._id).sort(byId);
    assert.deepEqual(got, want, ctx);
    if (!res.warning) indexed++;

    // sorted by n through the index on n (the selector must require n to use it)
    if (q % 3 === 0) {
      const dir = g.chance(0.5) ? 'asc' : 'desc';
      const sorted = { $and: [sel, { n: { $exists: true } }] };
      const r2 = await find(db, { selector: sorted, sort: [{ n: dir }], limit: 100000 });
      assert.equal(r2.warning, undefined, `${ctx}: sorted query used no index`);
      const seq = [...docs.values()].filter((d) => reference(sel, d))
        .sort((a, b) => collate(a.n, b.n) || byId(a._id, b._id));
      if (dir === 'desc') seq.reverse();
      assert.deepEqual(r2.docs.map((d) => d._id), seq.map((d) => d._id), `${ctx} sorted ${dir}`);
    }

    // paged by bookmark: the pages add up to the whole
    if (q % 7 === 0 && want.length > 0) {
      const paged = await findAllPages(db, { selector: sel }, 1 + g.int(0, 6));
      assert.deepEqual([...paged].sort(byId), want, `${ctx} paged`);
      assert.equal(new Set(paged).size, paged.length, `${ctx} paged: a document came twice`);
    }

    // now and then, change some documents: the indexes follow the changes feed
    if (q % 25 === 24) {
      const batch = [];
      for (let k = 0; k < 10; k++) {
        const id = `d${String(g.int(0, DOCS - 1)).padStart(3, '0')}`;
        const old = docs.get(id);
        if (!old || batch.some((b) => b._id === id)) continue;
        if (g.chance(0.2)) {
          batch.push({ _id: id, _rev: old._rev, _deleted: true });
        } else {
          const fresh = g.doc(Number(id.slice(1)));
          batch.push({ ...fresh, _rev: old._rev });
        }
      }
      const w = await c.post(`/${db}/_bulk_docs`, { docs: batch });
      assert.equal(w.status, 201, w.text);
      for (const [i, row] of w.json.entries()) {
        assert.ok(row.ok, JSON.stringify(row));
        if (batch[i]._deleted) docs.delete(row.id);
        else docs.set(row.id, { ...batch[i], _rev: row.rev });
      }
    }
  }
  assert.ok(indexed > QUERIES / 10, `only ${indexed} of ${QUERIES} queries used a JSON index`);
});

test('where pouchdb-find differs, mimeo answers as CouchDB', async () => {
  const db = uniqueDbName('finddiffer');
  assert.equal((await c.put(`/${db}`)).status, 201);
  const docs = [
    { _id: 'a', n: 5, s: 'a', arr: [1, 2], z: null, f: 4.0, o: [{ k: 0 }, { k: 1 }] },
    { _id: 'b', n: 6, s: 'B', arr: [], z: 1 },
    { _id: 'c', s: 'b', m: { k1: 1, other: 2 } },
  ];
  // 4.0 must reach the server as a float: JSON.stringify writes 4
  const body = JSON.stringify({ docs }).replace('"f":4', '"f":4.0');
  assert.equal((await c.post(`/${db}/_bulk_docs`, body, { headers: { 'content-type': 'application/json' } })).status, 201);
  const ids = async (selector) => (await find(db, { selector })).docs.map((d) => d._id).sort();
  // 1: negations never match a missing field
  assert.deepEqual(await ids({ n: { $ne: 5 } }), ['b']);
  assert.deepEqual(await ids({ n: { $nin: [5] } }), ['b']);
  assert.deepEqual(await ids({ $nor: [{ n: 5 }] }), ['b']);
  assert.deepEqual(await ids({ $not: { n: { $gt: 5 } } }), ['a']);
  assert.deepEqual(await ids({ n: { $not: { $type: 'string' } } }), ['a', 'b']);
  // 2: null is a value for $in/$nin
  assert.deepEqual(await ids({ z: { $in: [null] } }), ['a']);
  assert.deepEqual(await ids({ z: { $nin: [1] } }), ['a']);
  // 14: a falsy implicit value inside $allMatch is compared
  assert.deepEqual(await ids({ o: { $allMatch: { k: 0 } } }), []);
  assert.deepEqual(await ids({ o: { $elemMatch: { k: 0 } } }), ['a']);
  // 13: $ne with an array compares arrays
  assert.deepEqual(await ids({ arr: { $ne: [] } }), ['a']);
  // 3 and 12: $all
  assert.deepEqual(await ids({ arr: { $all: [] } }), []);
  assert.deepEqual(await ids({ arr: { $all: [[1, 2]] } }), ['a']);
  // 4: implicit equality with an array compares arrays
  assert.deepEqual(await ids({ arr: [1, 2] }), ['a']);
  assert.deepEqual(await ids({ arr: [1] }), []);
  // 5: a path through a scalar is no match, even for $exists:false
  assert.deepEqual(await ids({ 'n.x': { $exists: false } }), ['c']);
  // 6: ICU order: a < A < b < B (code units: B < a < b)
  assert.deepEqual(await ids({ s: { $gt: 'a' } }), ['b', 'c']);
  assert.deepEqual(await ids({ s: { $lt: 'b' } }), ['a']);
  // 7: an explicit $and keeps every condition
  assert.deepEqual(await ids({ $and: [{ n: { $gt: 4 } }, { n: 5 }, { n: { $lt: 5 } }] }), []);
  // 8: CouchDB 3.x operators
  assert.deepEqual(await ids({ s: { $beginsWith: 'B' } }), ['b']);
  assert.deepEqual(await ids({ m: { $keyMapMatch: { $eq: 'other' } } }), ['c']);
  // 9: 4.0 is a float
  assert.deepEqual(await ids({ f: { $mod: [2, 0] } }), []);
  // 10: _id in Erlang order: strings above numbers, arrays below strings
  assert.deepEqual(await ids({ _id: { $gt: 100 } }), ['a', 'b', 'c']);
  assert.deepEqual(await ids({ _id: { $lt: [] } }), []);
});
