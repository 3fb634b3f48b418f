// GET /_node/_local/_prometheus: Prometheus text (version 0.0.4) for server admins, with
// CouchDB's names where a metric corresponds. The test parses the whole exposition (every
// sample belongs to a declared family, histogram buckets are cumulative and end at the
// count) and checks that the counters move: requests by method and status, latency, open
// databases, replicated documents, the mesh's members, messages and failed probes, and the
// changes a peer is behind.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startServer } from './lib/server.mjs';
import { request } from './lib/http.mjs';
import { waitFor } from './lib/util.mjs';

const FAST = [
  '--set', 'mesh.probe_interval_ms=200',
  '--set', 'mesh.probe_timeout_ms=100',
  '--set', 'mesh.gossip_interval_ms=100',
  '--set', 'mesh.suspicion_mult=3',
  '--set', 'mesh.pushpull_interval_ms=3000',
];
const PATH = '/_node/_local/_prometheus';

let dir;
let a;
let b;
let solo;
let headers;

/** Parses Prometheus text: {families: {name: {type, help}}, samples: [{name, labels, value}]}. */
function parse(text) {
  const families = {};
  const samples = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    let m = line.match(/^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/);
    if (m) {
      families[m[2]] ??= {};
      families[m[2]][m[1] === 'HELP' ? 'help' : 'type'] = m[3];
      continue;
    }
    m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/);
    assert.ok(m, `not a sample line: ${JSON.stringify(line)}`);
    const labels = {};
    if (m[2]) {
      for (const part of m[2].split(',')) {
        const l = part.match(/^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"$/);
        assert.ok(l, `bad label ${part} in ${line}`);
        labels[l[1]] = l[2];
      }
    }
    const value = m[3] === '+Inf' ? Infinity : Number(m[3]);
    assert.ok(!Number.isNaN(value), `bad value in ${line}`);
    samples.push({ name: m[1], labels, value });
  }
  for (const s of samples) {
    const family = Object.keys(families).find((f) => s.name === f ||
      (families[f].type === 'histogram' && [`${f}_bucket`, `${f}_sum`, `${f}_count`].includes(s.name)));
    assert.ok(family, `sample ${s.name} has no # TYPE`);
    assert.ok(['counter', 'gauge', 'histogram', 'summary'].includes(families[family].type));
    assert.ok(families[family].help, `${family} has no # HELP`);
  }
  return { families, samples };
}

function value(p, name, labels = {}) {
  const s = p.samples.find((x) => x.name === name &&
    Object.entries(labels).every(([k, v]) => x.labels[k] === v));
  return s ? s.value : undefined;
}

async function scrape(server) {
  const res = await request(server.url, 'GET', PATH, { headers });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.headers['content-type'], 'text/plain; version=0.0.4');
  return parse(res.text);
}

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-prom-'));
  const secret = path.join(dir, 'secret');
  await fs.writeFile(secret, 'the-prometheus-secret-0123456789\n');
  const adminFile = path.join(dir, 'admin.password');
  await fs.writeFile(adminFile, 'admin:prom-admin-pw\n', { mode: 0o600 });
  headers = { authorization: `Basic ${Buffer.from('admin:prom-admin-pw').toString('base64')}` };
  const common = ['--mesh-secret-file', secret, '--admin-file', adminFile, ...FAST];
  a = await startServer({ args: ['--node-name', 'pa', ...common] });
  b = await startServer({ args: ['--node-name', 'pb', '--join', a.url, ...common] });
  // Exact request counts need a node that no peer talks to: pb's push-pull and its
  // replication of every new database land on pa at any moment.
  solo = await startServer({ args: ['--admin-file', adminFile] });
});

after(async () => {
  for (const s of [a, b, solo]) if (s) await s.stop();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});

test('admins only, GET only', async () => {
  const anon = await request(a.url, 'GET', PATH);
  assert.equal(anon.status, 401, anon.text);
  const post = await request(a.url, 'POST', PATH, { headers });
  assert.equal(post.status, 405);
});

test('request counters by method and status, and the latency histogram, move', async () => {
  const before0 = await scrape(solo);
  const db = 'prom_requests';
  assert.equal((await request(solo.url, 'PUT', `/${db}`, { headers })).status, 201);
  for (let i = 0; i < 3; i++) assert.equal((await request(solo.url, 'GET', `/${db}`, { headers })).status, 200);
  assert.equal((await request(solo.url, 'GET', `/${db}/missing`, { headers })).status, 404);
  assert.equal((await request(solo.url, 'DELETE', '/prom_no_such_db', { headers })).status, 404);
  const after1 = await scrape(solo);
  const d = (name, labels) => value(after1, name, labels) - (value(before0, name, labels) ?? 0);
  // The first scrape itself finished in between: one more GET 200.
  assert.equal(d('couchdb_httpd_requests_total'), 7);
  assert.equal(d('couchdb_httpd_request_methods', { method: 'GET' }), 5);
  assert.equal(d('couchdb_httpd_request_methods', { method: 'PUT' }), 1);
  assert.equal(d('couchdb_httpd_request_methods', { method: 'DELETE' }), 1);
  assert.equal(d('couchdb_httpd_status_codes', { code: '201' }), 1);
  assert.equal(d('couchdb_httpd_status_codes', { code: '200' }), 4);
  assert.equal(d('couchdb_httpd_status_codes', { code: '404' }), 2);
  assert.equal(d('couchdb_request_time_seconds_count'), 7);
  assert.ok(d('couchdb_request_time_seconds_sum') > 0);
  // Buckets: cumulative, ascending bounds, +Inf equals the count.
  const buckets = after1.samples.filter((s) => s.name === 'couchdb_request_time_seconds_bucket');
  assert.ok(buckets.length >= 5);
  for (let i = 1; i < buckets.length; i++) {
    assert.ok(Number(buckets[i].labels.le === '+Inf' ? Infinity : buckets[i].labels.le) >
      Number(buckets[i - 1].labels.le));
    assert.ok(buckets[i].value >= buckets[i - 1].value);
  }
  assert.equal(buckets.at(-1).labels.le, '+Inf');
  assert.equal(buckets.at(-1).value, value(after1, 'couchdb_request_time_seconds_count'));
  assert.ok(value(after1, 'couchdb_open_databases') >= 1);
  assert.ok(value(after1, 'couchdb_uptime_seconds') >= 0);
  assert.equal(after1.families.couchdb_open_databases.type, 'gauge');
  assert.equal(after1.families.couchdb_httpd_status_codes.type, 'counter');
});

test('replicated documents count in the replicator totals', async () => {
  const before0 = await scrape(a);
  const docs = Array.from({ length: 5 }, (_, i) => ({ _id: `d${i}`, n: i }));
  assert.equal((await request(a.url, 'PUT', '/prom_src', { headers })).status, 201);
  assert.equal((await request(a.url, 'POST', '/prom_src/_bulk_docs', { headers, body: { docs } })).status, 201);
  const rep = await request(a.url, 'POST', '/_replicate', {
    headers, body: { source: 'prom_src', target: 'prom_dst', create_target: true },
  });
  assert.equal(rep.status, 200, rep.text);
  const after1 = await scrape(a);
  const d = (name) => value(after1, name) - value(before0, name);
  // The mesh may replicate too (its own jobs count in the same totals): at least ours.
  assert.ok(d('mimeo_replicator_docs_read_total') >= 5);
  assert.ok(d('mimeo_replicator_docs_written_total') >= 5);
});

test('mesh members by state, messages, failed probes and changes behind per peer', async () => {
  let p;
  await waitFor(async () => {
    p = await scrape(a);
    return value(p, 'mimeo_mesh_members', { state: 'alive' }) === 2;
  }, { timeout: 30_000, message: 'two alive members' });
  assert.equal(p.families.mimeo_mesh_members.type, 'gauge');
  for (const s of ['suspect', 'dead', 'left']) assert.equal(value(p, 'mimeo_mesh_members', { state: s }), 0);
  const m0 = value(p, 'mimeo_mesh_messages_sent_total');
  const r0 = value(p, 'mimeo_mesh_bytes_received_total');
  const f0 = value(p, 'mimeo_mesh_probes_failed_total');
  await waitFor(async () => {
    const q = await scrape(a);
    return value(q, 'mimeo_mesh_messages_sent_total') > m0 &&
      value(q, 'mimeo_mesh_bytes_received_total') > r0;
  }, { timeout: 10_000, message: 'gossip counters move' });
  // Changes behind per database and peer: a write on pa reaches pb and nothing is behind.
  assert.equal((await request(a.url, 'PUT', '/prom_sync', { headers })).status, 201);
  assert.equal((await request(a.url, 'PUT', '/prom_sync/one', { headers, body: { v: 1 } })).status, 201);
  const row = { db: 'prom_sync', peer: 'pb' };
  await waitFor(async () => {
    const q = await scrape(a);
    return value(q, 'mimeo_mesh_changes_behind', row) === 0 &&
      value(q, 'mimeo_mesh_last_sync_timestamp_seconds', row) > Date.now() / 1000 - 120 &&
      value(q, 'mimeo_mesh_replications_total', { result: 'completed' }) > 0;
  }, { timeout: 30_000, message: 'prom_sync in step with pb', describe: async () => (await request(a.url, 'GET', '/_mesh', { headers })).json.sync });
  const q0 = await scrape(a);
  assert.equal(q0.families.mimeo_mesh_changes_behind.type, 'gauge');
  await b.kill9();
  await waitFor(async () => {
    const q = await scrape(a);
    return value(q, 'mimeo_mesh_probes_failed_total') > f0 &&
      value(q, 'mimeo_mesh_members', { state: 'dead' }) === 1 &&
      value(q, 'mimeo_mesh_members', { state: 'alive' }) === 1;
  }, { timeout: 30_000, message: 'failed probes counted and pb dead' });
  // With pb gone, pa's new changes pile up behind it.
  for (let i = 0; i < 3; i++) {
    assert.equal((await request(a.url, 'PUT', `/prom_sync/more${i}`, { headers, body: { i } })).status, 201);
  }
  await waitFor(async () => value(await scrape(a), 'mimeo_mesh_changes_behind', row) >= 3,
    { timeout: 20_000, message: 'three changes behind pb' });
});
