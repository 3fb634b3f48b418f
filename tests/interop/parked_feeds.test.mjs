// Parked feeds: a waiting changes feed leaves libmicrohttpd and writes its own HTTP/1.1 chunks
// (src/http/park.c, server.c's http_park). What a client must not notice: the chunked framing
// is exact, a longpoll's keep-alive connection serves the next request, a request pipelined
// behind a feed is answered, `Connection: close` closes, a client that reads slowly still gets
// every row in order, parked feeds still count against the caps, and what an operator sees
// (mimeo_http_parked_replies) says how many are parked.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';

import { startServer } from './lib/server.mjs';
import { request } from './lib/http.mjs';
import { rawRequest, openRawFeed, pool, procStatus } from './lib/conns.mjs';

let server;
let port;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  server = await startServer();
  port = Number(new URL(server.url).port);
});
after(async () => { await server?.stop(); });

/**
 * A raw HTTP/1.1 client on one socket that parses replies strictly: the status line, the
 * headers, and a chunked body whose every size line and CRLF must be where they belong.
 * `next()` resolves with the next whole reply; `chunks` of the current reply grow as they come.
 */
function rawClient(to = port) {
  const sock = net.connect({ host: '127.0.0.1', port: to });
  let data = Buffer.alloc(0);
  const replies = [];
  let waiter = null;
  let current = null;   // { status, headers, body: Buffer[], chunks: string[] }
  let closed = false;
  const parse = () => {
    for (;;) {
      if (!current) {
        const end = data.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = data.subarray(0, end).toString('latin1').split('\r\n');
        data = data.subarray(end + 4);
        const m = /^HTTP\/1\.1 (\d{3}) /.exec(head[0]);
        if (!m) throw new Error(`bad status line ${JSON.stringify(head[0])}`);
        const headers = {};
        for (const h of head.slice(1)) {
          const i = h.indexOf(':');
          headers[h.slice(0, i).toLowerCase()] = h.slice(i + 1).trim();
        }
        current = { status: Number(m[1]), headers, body: [], chunks: [] };
        if (headers['content-length'] !== undefined) current.left = Number(headers['content-length']);
        else if (headers['transfer-encoding'] !== 'chunked') throw new Error('neither sized nor chunked');
      }
      if (current.left !== undefined) {
        if (data.length < current.left) return;
        current.body.push(data.subarray(0, current.left));
        data = data.subarray(current.left);
        finish();
        continue;
      }
      const eol = data.indexOf('\r\n');
      if (eol < 0) return;
      const sizeLine = data.subarray(0, eol).toString('latin1');
      if (!/^[0-9a-fA-F]+$/.test(sizeLine)) throw new Error(`bad chunk size line ${JSON.stringify(sizeLine)}`);
      const size = parseInt(sizeLine, 16);
      if (data.length < eol + 2 + size + 2) return;
      const payload = data.subarray(eol + 2, eol + 2 + size);
      if (data.subarray(eol + 2 + size, eol + 4 + size).toString('latin1') !== '\r\n')
        throw new Error('chunk not followed by CRLF');
      data = data.subarray(eol + 4 + size);
      if (size === 0) { finish(); continue; }
      current.body.push(payload);
      current.chunks.push(payload.toString('utf8'));
    }
  };
  const finish = () => {
    const r = current;
    current = null;
    r.text = Buffer.concat(r.body).toString('utf8');
    replies.push(r);
    if (waiter) { const w = waiter; waiter = null; w(); }
  };
  sock.on('data', (c) => {
    data = Buffer.concat([data, c]);
    try { parse(); } catch (e) { sock.destroy(e); }
  });
  sock.on('close', () => { closed = true; if (waiter) { const w = waiter; waiter = null; w(); } });
  sock.on('error', () => {});
  return {
    sock,
    get closed() { return closed; },
    get current() { return current; },
    send(text) { sock.write(text); },
    async next(ms = 10_000) {
      const deadline = Date.now() + ms;
      while (replies.length === 0) {
        if (closed) throw new Error('the server closed the connection');
        if (Date.now() > deadline) throw new Error('no reply in time');
        await new Promise((r) => { waiter = r; setTimeout(r, 50); });
      }
      return replies.shift();
    },
  };
}

async function parked() {
  const res = await request(server.url, 'GET', '/_node/_local/_prometheus');
  assert.equal(res.status, 200, res.text);
  const m = /^mimeo_http_parked_replies (\d+)$/m.exec(res.text);
  assert.ok(m, 'mimeo_http_parked_replies in the metrics');
  return Number(m[1]);
}

async function waitParked(n) {
  for (let i = 0; i < 100; i++) {
    if (await parked() >= n) return;
    await sleep(20);
  }
  assert.fail(`fewer than ${n} replies parked`);
}

// Feeds on a fresh, empty database start at since=0 where the test cannot wait for them to
// park first (a request pipelined or sent with Connection: close does not park): a write that
// lands before the feed is routed is still its first row.
const get = (path, extra = '') => `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n${extra}\r\n`;

test('a parked longpoll answers in exact chunks, and its connection serves the next request', async () => {
  assert.equal((await request(server.url, 'PUT', '/park_keep')).status, 201);
  const before0 = await parked();
  const c = rawClient();
  c.send(get('/park_keep/_changes?feed=longpoll&since=now'));
  await waitParked(before0 + 1);
  assert.equal((await request(server.url, 'PUT', '/park_keep/one', { body: { v: 1 } })).status, 201);
  const r = await c.next();
  assert.equal(r.status, 200);
  const body = JSON.parse(r.text);
  assert.deepEqual(body.results.map((x) => x.id), ['one']);
  assert.ok('last_seq' in body);
  // The same socket: the server took it back for the next request.
  c.send(get('/park_keep'));
  const info = await c.next();
  assert.equal(info.status, 200);
  assert.equal(JSON.parse(info.text).doc_count, 1);
  assert.equal(await parked(), before0);
  c.sock.destroy();
});

test('a request pipelined behind a feed is answered after it', async () => {
  assert.equal((await request(server.url, 'PUT', '/park_pipe')).status, 201);
  const c = rawClient();
  c.send(get('/park_pipe/_changes?feed=longpoll&since=0') + get('/park_pipe'));
  await sleep(200);
  assert.equal((await request(server.url, 'PUT', '/park_pipe/a', { body: {} })).status, 201);
  const feed = await c.next();
  assert.deepEqual(JSON.parse(feed.text).results.map((x) => x.id), ['a']);
  const info = await c.next();
  assert.equal(info.status, 200);
  assert.equal(JSON.parse(info.text).db_name, 'park_pipe');
  c.sock.destroy();
});

test('a longpoll sent with Connection: close is closed once it has answered', async () => {
  assert.equal((await request(server.url, 'PUT', '/park_close')).status, 201);
  const c = rawClient();
  c.send(get('/park_close/_changes?feed=longpoll&since=0', 'Connection: close\r\n'));
  await sleep(200);
  assert.equal((await request(server.url, 'PUT', '/park_close/a', { body: {} })).status, 201);
  const feed = await c.next();
  assert.deepEqual(JSON.parse(feed.text).results.map((x) => x.id), ['a']);
  for (let i = 0; i < 100 && !c.closed; i++) await sleep(20);
  assert.ok(c.closed, 'the server closed the connection');
});

test('continuous and eventsource feeds keep streaming from the park; the timeout ends them whole', async () => {
  const db = 'park_stream';
  assert.equal((await request(server.url, 'PUT', `/${db}`)).status, 201);
  const before0 = await parked();
  const cont = rawClient();
  cont.send(get(`/${db}/_changes?feed=continuous&since=now&timeout=1500`));
  const es = rawClient();
  es.send(get(`/${db}/_changes?feed=eventsource&since=now&heartbeat=200`));
  await waitParked(before0 + 2);
  for (const id of ['x1', 'x2', 'x3']) {
    assert.equal((await request(server.url, 'PUT', `/${db}/${id}`, { body: {} })).status, 201);
    await sleep(50);
  }
  await sleep(400);   // heartbeats, too, come from the park
  const r = await cont.next(5000);   // the timeout ends the continuous feed, whole
  const lines = r.text.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l));
  assert.deepEqual(lines.slice(0, 3).map((x) => x.id), ['x1', 'x2', 'x3']);
  assert.ok('last_seq' in lines[3]);
  const esText = es.current.chunks.join('');
  const ids = [...esText.matchAll(/^data: (\{.*\})$/gm)].map((m) => JSON.parse(m[1]).id);
  assert.deepEqual(ids, ['x1', 'x2', 'x3']);
  assert.match(esText, /event: heartbeat\ndata: \n\n/);
  es.sock.destroy();
  cont.sock.destroy();
});

test('filtered feeds park too: a JavaScript filter, and a selector sent in a POST body', async () => {
  const db = 'park_filter';
  assert.equal((await request(server.url, 'PUT', `/${db}`)).status, 201);
  assert.equal((await request(server.url, 'PUT', `/${db}/_design/app`, {
    body: { filters: { even: 'function (doc) { return doc.n % 2 === 0; }' } },
  })).status, 201);
  const before0 = await parked();
  const js = rawClient();
  js.send(get(`/${db}/_changes?feed=continuous&since=now&filter=app/even&heartbeat=10000`));
  const body = JSON.stringify({ selector: { n: { $gt: 2 } } });
  const sel = rawClient();
  sel.send(`POST /${db}/_changes?feed=continuous&since=now&filter=_selector&heartbeat=10000 HTTP/1.1\r\n` +
    `Host: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  await waitParked(before0 + 2);
  const docs = [1, 2, 3, 4].map((n) => ({ _id: `n${n}`, n }));
  assert.equal((await request(server.url, 'POST', `/${db}/_bulk_docs`, { body: { docs } })).status, 201);
  const rows = async (c, want) => {
    let ids = [];
    for (let i = 0; i < 200 && ids.length < want; i++) {
      await sleep(25);
      ids = (c.current?.chunks ?? []).join('').split('\n').filter((l) => l.trim() !== '')
        .map((l) => JSON.parse(l).id);
    }
    return ids;
  };
  assert.deepEqual(await rows(js, 2), ['n2', 'n4']);
  assert.deepEqual(await rows(sel, 2), ['n3', 'n4']);
  js.sock.destroy();
  sel.sock.destroy();
});

test('a client that reads slowly gets every row, in order, once it reads again', async () => {
  const db = 'park_slow';
  assert.equal((await request(server.url, 'PUT', `/${db}`)).status, 201);
  const c = rawClient();
  c.send(get(`/${db}/_changes?feed=continuous&since=0&include_docs=true&heartbeat=10000`));
  await sleep(200);
  c.sock.pause();
  // ~12 MB of rows: far more than the socket buffers hold, so the feed has to wait for the
  // client to take more (the park thread's writable wait).
  const pad = 'p'.repeat(60_000);
  const N = 200;
  for (let b = 0; b < N; b += 50) {
    const docs = Array.from({ length: 50 }, (_, i) => ({ _id: `s${String(b + i).padStart(4, '0')}`, pad }));
    const res = await request(server.url, 'POST', `/${db}/_bulk_docs`, { body: { docs } });
    assert.equal(res.status, 201);
  }
  await sleep(500);
  c.sock.resume();
  const want = Array.from({ length: N }, (_, i) => `s${String(i).padStart(4, '0')}`);
  let got = [];
  for (let i = 0; i < 300; i++) {
    const text = (c.current?.chunks ?? []).join('');
    got = text.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l).id);
    if (got.length >= N) break;
    await sleep(50);
  }
  assert.deepEqual(got, want);
  // And it is still live afterwards.
  assert.equal((await request(server.url, 'PUT', `/${db}/after`, { body: {} })).status, 201);
  for (let i = 0; i < 100; i++) {
    if ((c.current?.chunks ?? []).join('').includes('"after"')) break;
    await sleep(20);
  }
  assert.ok((c.current?.chunks ?? []).join('').includes('"after"'));
  c.sock.destroy();
});

test('parked feeds still count against the per-address cap, and free it when they leave', async () => {
  // A server of its own, where only this test's connections come from 127.0.0.1; the checks
  // come from 127.0.0.2, another address on the loopback.
  const capped = await startServer({ args: ['--set', 'chttpd.max_connections_per_address=10'] });
  try {
    const cport = Number(new URL(capped.url).port);
    const other = { localAddress: '127.0.0.2' };
    const parkedThere = async () => {
      const r = await rawRequest(cport, 'GET', '/_node/_local/_prometheus', other);
      assert.equal(r.status, 200, r.body);
      return Number(/^mimeo_http_parked_replies (\d+)$/m.exec(r.body)[1]);
    };
    assert.equal((await rawRequest(cport, 'PUT', '/park_cap', other)).status, 201);
    const feeds = [];
    for (let i = 0; i < 10; i++) {
      const c = rawClient(cport);
      c.send(get('/park_cap/_changes?feed=continuous&since=now&heartbeat=30000'));
      feeds.push(c);
    }
    let n = 0;
    for (let i = 0; i < 200 && n < 10; i++) {
      await sleep(25);
      n = await parkedThere();
    }
    assert.equal(n, 10, 'ten feeds parked');
    const over = await rawRequest(cport, 'GET', '/');
    assert.equal(over.status, 503, over.body);
    for (const c of feeds) c.sock.destroy();
    // The hang-up check runs every few seconds.
    let ok = false;
    let seen;
    for (let i = 0; i < 100 && !ok; i++) {
      await sleep(100);
      seen = [(await rawRequest(cport, 'GET', '/')).status, await parkedThere()];
      ok = seen[0] === 200 && seen[1] === 0;
    }
    assert.ok(ok, `the slots came back (GET / ${seen[0]}, parked ${seen[1]})`);
  } finally {
    await capped.stop();
  }
});

test('an idle feed costs a few KB (release build, 2,000 continuous feeds)', async () => {
  // The sanitizers' allocator keeps freed memory in quarantine and adds its own per
  // allocation: the figure is the release build's (connections.test.mjs bounds the ASan one).
  const rel = await startServer({ bin: 'build/mimeo' });
  const socks = [];
  try {
    const rport = Number(new URL(rel.url).port);
    assert.equal((await rawRequest(rport, 'PUT', '/idle')).status, 201);
    const pid = rel.proc.pid;
    await sleep(300);
    const before0 = procStatus(pid).rss;
    const n = 2000;
    socks.push(...await pool(Array.from({ length: n }, (_, i) => i), 256, () =>
      openRawFeed(rport, '/idle/_changes?feed=continuous&since=now&heartbeat=60000')));
    assert.ok(socks.every((s) => s.status === 200));
    // libmicrohttpd lets go of each parked connection within a second, and freed memory goes
    // back to the kernel once the parking has settled: the lowest of a few readings.
    let low = Infinity;
    for (let i = 0; i < 8; i++) {
      await sleep(500);
      low = Math.min(low, procStatus(pid).rss);
    }
    const perFeed = (low - before0) / n;
    console.log(`# ${n} idle feeds: ${(perFeed / 1024).toFixed(1)} KiB each (release build)`);
    assert.ok(perFeed < 8 * 1024, `${(perFeed / 1024).toFixed(1)} KiB per idle feed`);
    // All still live.
    const id = `w${Date.now()}`;
    let left = n;
    const all = new Promise((resolve) => {
      for (const s of socks) {
        let got = false;
        s.watchers = [(c, tail) => {
          if (!got && (tail + c).includes(id)) { got = true; if (--left === 0) resolve(); }
        }];
      }
    });
    assert.equal((await rawRequest(rport, 'PUT', `/idle/${id}`, { body: '{}' })).status, 201);
    await Promise.race([all, sleep(10_000)]);
    assert.equal(left, 0, 'every feed got the write');
  } finally {
    for (const s of socks) s.destroy();
    await rel.stop();
  }
});
