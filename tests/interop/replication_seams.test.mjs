// The replicator at its seams with peers: every document mimeo stores can be replicated (the
// deepest one PUT accepts), a document the target refuses fails alone, replies from peers are
// capped (per request and by configuration), a vanished source database is recognised by
// status whatever the wording of the peer's 404, the monitoring endpoints show a job whose
// peer is unreachable as crashing with its error, and credentials never reach them.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startServer } from './lib/server.mjs';
import { request } from './lib/http.mjs';
import { freePort, waitFor, postReplicate, SKIP_UNWIRED } from './lib/repl_peers.mjs';

let A;   // source node
let B;   // target node, default limits

before(async () => {
  if (SKIP_UNWIRED) return;
  A = await startServer();
  B = await startServer();
});

after(async () => {
  await A?.stop();
  await B?.stop();
});

/** A JSON value nested `depth` levels deep: {"x":{"x":…1…}}. */
function nested(depth) {
  let v = 1;
  for (let i = 0; i < depth; i++) v = { x: v };
  return v;
}

async function putDoc(url, db, id, body) {
  const r = await request(url, 'PUT', `/${db}/${encodeURIComponent(id)}`, { body });
  assert.equal(r.status, 201, `PUT ${db}/${id}: ${r.text}`);
  return r.json.rev;
}

async function makeDb(url, db) {
  const r = await request(url, 'PUT', `/${db}`);
  assert.equal(r.status, 201, r.text);
}

test('the deepest document PUT accepts replicates mimeo to mimeo over HTTP', { skip: SKIP_UNWIRED }, async () => {
  await makeDb(A.url, 'deep');
  // 256 levels in all (the default max_json_depth): the document object and 255 within it.
  const rev = await putDoc(A.url, 'deep', 'deepest', { v: nested(255) });
  const refused = await request(A.url, 'PUT', '/deep/deeper', { body: { v: nested(256) } });
  assert.equal(refused.status, 400, 'one level more is refused by PUT');
  await putDoc(A.url, 'deep', 'flat', { v: 1 });
  const r = await postReplicate(A.url, {
    source: `${A.url}/deep`, target: `${B.url}/deep`, create_target: true,
  });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.history[0].docs_written, 2, r.text);
  assert.equal(r.json.history[0].doc_write_failures, 0, r.text);
  const got = await request(B.url, 'GET', '/deep/deepest');
  assert.equal(got.status, 200, got.text);
  assert.equal(got.json._rev, rev);
  assert.deepEqual(got.json.v, nested(255));
});

test('a document the target refuses fails alone, counted in doc_write_failures', { skip: SKIP_UNWIRED }, async () => {
  const C = await startServer({ args: ['--set', 'couchdb.max_json_depth=64'] });
  try {
    await makeDb(A.url, 'mixed');
    await putDoc(A.url, 'mixed', 'too-deep-for-c', { v: nested(100) });
    for (let i = 0; i < 5; i++) await putDoc(A.url, 'mixed', `ok${i}`, { i });
    const r = await postReplicate(A.url, {
      source: `${A.url}/mixed`, target: `${C.url}/mixed`, create_target: true,
    });
    assert.equal(r.status, 200, r.text);
    const h = r.json.history[0];
    assert.equal(h.doc_write_failures, 1, r.text);
    assert.equal(h.docs_written, 5, r.text);
    for (let i = 0; i < 5; i++) {
      assert.equal((await request(C.url, 'GET', `/mixed/ok${i}`)).status, 200);
    }
    assert.equal((await request(C.url, 'GET', '/mixed/too-deep-for-c')).status, 404);
  } finally {
    await C.stop();
  }
});

test('replies from peers are capped: a batch over the cap goes doc by doc, a doc over it fails clearly', { skip: SKIP_UNWIRED }, async () => {
  await makeDb(A.url, 'big');
  const filler = 'y'.repeat(150_000);
  for (let i = 0; i < 3; i++) await putDoc(A.url, 'big', `big${i}`, { filler });

  // The three together (~450 KB) are over 200,000 bytes; each alone is not.
  const ok = await postReplicate(A.url, {
    source: `${A.url}/big`, target: `${B.url}/big1`, create_target: true,
    max_response_size: 200_000,
  });
  assert.equal(ok.status, 200, ok.text);
  assert.equal(ok.json.history[0].docs_written, 3, ok.text);

  // One document is over 100,000 bytes: the job fails and says why.
  const bad = await postReplicate(A.url, {
    source: `${A.url}/big`, target: `${B.url}/big2`, create_target: true,
    max_response_size: 100_000,
  });
  assert.equal(bad.status, 500, bad.text);
  assert.equal(bad.json.error, 'response_too_large', bad.text);
  assert.match(bad.json.reason, /max_response_size/);

  const invalid = await postReplicate(A.url, {
    source: `${A.url}/big`, target: `${B.url}/big2`, max_response_size: 'lots',
  });
  assert.equal(invalid.status, 400, invalid.text);

  // The node-wide default comes from [replicator] max_response_size.
  const D = await startServer({ args: ['--set', 'replicator.max_response_size=100K'] });
  try {
    const r = await postReplicate(D.url, {
      source: `${A.url}/big`, target: `${B.url}/big3`, create_target: true,
    });
    assert.equal(r.status, 500, r.text);
    assert.equal(r.json.error, 'response_too_large', r.text);
  } finally {
    await D.stop();
  }
});

/**
 * A peer in front of `base` without _bulk_get whose open_revs answers 404 "missing" (as
 * PouchDB words it for a database that is gone). With gone set, GET /{db}/ answers 404 too
 * once open_revs has been asked: the database vanished mid-replication.
 */
async function startOddPeer(base, { gone }) {
  const upstream = new URL(base);
  let asked = false;
  const srv = http.createServer((req, res) => {
    const notFound = () => {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: 'not_found', reason: 'missing' }));
    };
    if (req.url.includes('/_bulk_get')) return notFound();
    if (req.url.includes('open_revs=')) {
      asked = true;
      return notFound();
    }
    if (gone && asked && req.method === 'GET' && /^\/[^/?]+\/?$/.test(req.url)) return notFound();
    const fwd = http.request({
      host: upstream.hostname, port: upstream.port, method: req.method, path: req.url,
      headers: req.headers,
    }, (up) => {
      res.writeHead(up.statusCode, up.headers);
      up.pipe(res);
    });
    fwd.on('error', () => { res.writeHead(502); res.end(); });
    req.pipe(fwd);
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${srv.address().port}`, close: () => new Promise((r) => srv.close(r)) };
}

test('a 404 from open_revs skips the document only when the source database still answers', { skip: SKIP_UNWIRED }, async () => {
  await makeDb(A.url, 'odd');
  for (let i = 0; i < 3; i++) await putDoc(A.url, 'odd', `d${i}`, { i });

  const purged = await startOddPeer(A.url, { gone: false });
  try {
    const r = await postReplicate(B.url, {
      source: `${purged.url}/odd`, target: `${B.url}/odd1`, create_target: true,
    });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.history[0].docs_written, 0, r.text);
  } finally {
    await purged.close();
  }

  const gone = await startOddPeer(A.url, { gone: true });
  try {
    const r = await postReplicate(B.url, {
      source: `${gone.url}/odd`, target: `${B.url}/odd2`, create_target: true,
    });
    assert.notEqual(r.status, 200, `a vanished source must not complete: ${r.text}`);
    assert.equal(r.json.error, 'db_not_found', r.text);
  } finally {
    await gone.close();
  }
});

async function schedulerDoc(url, id) {
  const r = await request(url, 'GET', `/_scheduler/docs/_replicator/${id}`);
  return r.status === 200 ? r.json : null;
}

test('credentials never reach _scheduler or _active_tasks', { skip: SKIP_UNWIRED }, async () => {
  const port = await freePort();   // nothing listens there
  await makeDb(A.url, 'creds');
  const doc = {
    source: `http://carol:hunter2@127.0.0.1:${A.port}/creds`,
    target: { url: `http://bob:secret@127.0.0.1:${port}/tgt`,
      auth: { basic: { username: 'dave', password: 'pa55' } } },
    continuous: true,
  };
  assert.equal((await request(A.url, 'PUT', '/_replicator/creds', { body: doc })).status, 201);
  const d = await waitFor(async () => {
    const s = await schedulerDoc(A.url, 'creds');
    return s && s.state === 'crashing' ? s : null;
  }, { timeout: 30_000, what: 'the job to crash on its unreachable target' });
  assert.equal(d.source, `http://127.0.0.1:${A.port}/creds/`);
  assert.equal(d.target, `http://127.0.0.1:${port}/tgt/`);
  for (const path of ['/_scheduler/docs', '/_scheduler/jobs', '/_active_tasks',
    '/_scheduler/docs/_replicator/creds']) {
    const r = await request(A.url, 'GET', path);
    assert.equal(r.status, 200, r.text);
    for (const secret of ['hunter2', 'secret', 'pa55', 'carol', 'bob@']) {
      assert.ok(!r.text.includes(secret), `${path} shows ${secret}: ${r.text}`);
    }
  }
  assert.ok(!A.stderr().includes('secret') && !A.stderr().includes('hunter2'), 'logs');
  await request(A.url, 'DELETE', `/_replicator/creds?rev=${(await request(A.url, 'GET', '/_replicator/creds')).json._rev}`);
});

test('a running job whose peer becomes unreachable shows crashing with the error', { skip: SKIP_UNWIRED }, async () => {
  const T = await startServer({ args: ['--port', String(await freePort())] });
  let stopped = false;
  try {
    await makeDb(A.url, 'live');
    await putDoc(A.url, 'live', 'first', { n: 1 });
    const doc = {
      source: `${A.url}/live`, target: `${T.url}/live`, create_target: true, continuous: true,
    };
    assert.equal((await request(A.url, 'PUT', '/_replicator/live', { body: doc })).status, 201);
    await waitFor(async () => (await request(T.url, 'GET', '/live/first')).status === 200,
      { timeout: 30_000, what: 'the first document on the target' });
    const running = await schedulerDoc(A.url, 'live');
    assert.equal(running.state, 'running', JSON.stringify(running));
    assert.equal(running.info.error, undefined);

    await T.stop();
    stopped = true;
    await putDoc(A.url, 'live', 'second', { n: 2 });
    // CouchDB's jobs would have crashed by then; the default retry budget alone is longer.
    const d = await waitFor(async () => {
      const s = await schedulerDoc(A.url, 'live');
      return s && s.state === 'crashing' ? s : null;
    }, { timeout: 15_000, interval: 200, what: '_scheduler/docs to say crashing' });
    assert.match(d.info.error, /could not reach|http_request_failed/, JSON.stringify(d));
    assert.ok(d.error_count >= 1, JSON.stringify(d));
    const jobs = (await request(A.url, 'GET', '/_scheduler/jobs')).json.jobs;
    const job = jobs.find((j) => j.doc_id === 'live');
    assert.ok(job, JSON.stringify(jobs));
    assert.equal(job.history[0].type, 'crashed', JSON.stringify(job));
    assert.equal(typeof job.history[0].reason, 'string');
  } finally {
    const cur = await request(A.url, 'GET', '/_replicator/live');
    if (cur.status === 200) await request(A.url, 'DELETE', `/_replicator/live?rev=${cur.json._rev}`);
    if (!stopped) await T.stop();
  }
});
