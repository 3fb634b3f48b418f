// Long feeds are streamed page by page: every row arrives once, in order, in both directions,
// with CouchDB's last_seq, whatever the page size of the server.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from './lib/server.mjs';

const N = 1300; // more than two of the server's pages
let server;
let db;

before(async () => {
  server = await startServer();
  db = `${server.url}/paging`;
  assert.equal((await fetch(db, { method: 'PUT' })).status, 201);
  const docs = [];
  for (let i = 0; i < N; i++) docs.push({ _id: String(i).padStart(5, '0'), n: i });
  const res = await fetch(`${db}/_bulk_docs`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ docs }),
  });
  assert.equal(res.status, 201);
});
after(() => server?.stop());

async function changes(query) {
  const res = await fetch(`${db}/_changes?${query}`);
  assert.equal(res.status, 200);
  return res.json();
}

test('an ascending feed longer than a page lists every change once, in order', async () => {
  const body = await changes('include_docs=true');
  const seqs = body.results.map((r) => r.seq);
  assert.equal(seqs.length, N);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
  assert.equal(new Set(body.results.map((r) => r.id)).size, N);
  assert.equal(body.last_seq, N);
});

test('a descending feed longer than a page lists every change once, newest first', async () => {
  const body = await changes('descending=true');
  const seqs = body.results.map((r) => r.seq);
  assert.equal(seqs.length, N);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => b - a));
  assert.equal(seqs[0], N);
  assert.equal(body.last_seq, 1);
});

test('a descending feed with a limit across pages stops at the limit', async () => {
  const body = await changes('descending=true&limit=700');
  const seqs = body.results.map((r) => r.seq);
  assert.equal(seqs.length, 700);
  assert.equal(seqs[0], N);
  assert.equal(seqs[699], N - 699);
  assert.equal(body.last_seq, N - 699);
});

test('_all_docs longer than a page, both directions', async () => {
  const up = await (await fetch(`${db}/_all_docs?skip=10&limit=900`)).json();
  assert.equal(up.rows.length, 900);
  assert.equal(up.rows[0].id, '00010');
  assert.equal(up.rows[899].id, '00909');
  const down = await (await fetch(`${db}/_all_docs?descending=true`)).json();
  assert.equal(down.rows.length, N);
  assert.equal(down.rows[0].id, String(N - 1).padStart(5, '0'));
  assert.equal(down.total_rows, N);
});
