// Limits against hostile clients: request bodies over the cap (413), bodies held by many
// connections at once (a server-wide budget, 503 past it), long URLs and headers, and the
// peak RSS of the worst requests measured from /proc (figures printed, bounds asserted; see
// docs/security.md for the recorded numbers).

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { startServer } from './lib/server.mjs';
import { uniqueDbName } from './lib/util.mjs';

const MB = 1 << 20;

function vm(pid) {
  const st = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const get = (k) => Number(st.match(new RegExp(`${k}:\\s+(\\d+) kB`))[1]) * 1024;
  return { rss: get('VmRSS'), hwm: get('VmHWM') };
}

/** Opens a connection that starts a chunked PUT and sends `total` bytes, never finishing. */
function slowChunked(port, path, total) {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    let sent = 0;
    let reply = '';
    const chunk = Buffer.alloc(256 * 1024, 'a');
    sock.on('data', (d) => { reply += d.toString(); });
    sock.on('error', () => resolve({ sock, sent, reply }));
    sock.on('close', () => resolve({ sock, sent, reply }));
    sock.write(`POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n`);
    const pump = () => {
      while (sent < total) {
        sent += chunk.length;
        const ok = sock.write(chunk.length.toString(16) + '\r\n') && sock.write(chunk) && sock.write('\r\n');
        if (!ok) { sock.once('drain', pump); return; }
      }
      resolve({ sock, sent, reply });   // the body is never terminated
    };
    sock.on('connect', pump);
  });
}

async function status(url, method, p, headers = {}, body) {
  const res = await fetch(url + p, { method, headers, body });
  return { status: res.status, json: await res.json().catch(() => undefined) };
}

describe('request limits and memory', () => {
  let s;
  before(async () => { s = await startServer(); });
  after(async () => { await s?.stop(); });

  test('bodies over [httpd] max_request_size get 413 too_large', async () => {
    const s2 = await startServer({ args: ['--set', 'httpd.max_request_size=1M'] });
    try {
      const db = uniqueDbName('cap');
      await status(s2.url, 'PUT', `/${db}`);
      const r = await status(s2.url, 'POST', `/${db}/_bulk_docs`, { 'content-type': 'application/json' },
        JSON.stringify({ docs: [{ big: 'x'.repeat(2 * MB) }] }));
      assert.equal(r.status, 413);
      assert.equal(r.json.error, 'too_large');
      assert.equal((await status(s2.url, 'GET', '/_up')).status, 200);
    } finally { await s2.stop(); }
  });

  test('URLs and headers past the connection\'s room are refused, the server goes on', async () => {
    const longUrl = await status(s.url, 'GET', '/' + 'a'.repeat(200 * 1024));
    assert.ok([414, 431, 400].includes(longUrl.status), `long URL: ${longUrl.status}`);
    const longHeader = await status(s.url, 'GET', '/', { 'x-big': 'h'.repeat(200 * 1024) });
    assert.ok([431, 400, 413].includes(longHeader.status), `long header: ${longHeader.status}`);
    assert.equal((await status(s.url, 'GET', '/_up')).status, 200);
  });

  test('20 connections each holding an unfinished 40 MB body: bounded by the budget', async () => {
    const db = uniqueDbName('budget');
    await status(s.url, 'PUT', `/${db}`);
    const before = vm(s.proc.pid);
    const conns = await Promise.all(Array.from({ length: 20 },
      () => slowChunked(s.port, `/${db}/_bulk_docs`, 40 * MB)));
    await new Promise((r) => setTimeout(r, 1500));   // let the server read what is in flight
    const peak = vm(s.proc.pid);
    const grew = peak.hwm - before.hwm;
    process.stdout.write(`# 20 x 40 MB unfinished bodies: peak RSS ${Math.round(peak.hwm / MB)} MB ` +
      `(+${Math.round(grew / MB)} MB; ${20 * 40} MB sent; budget 256 MB)\n`);
    for (const c of conns) c.sock.destroy();
    // Without the budget this was 800 MB+ of bodies (plus allocator slack); with it the bodies
    // stay under [httpd] max_buffered_bytes (256 MB) plus the sanitizer build's overhead.
    assert.ok(grew < 480 * MB, `peak RSS grew by ${Math.round(grew / MB)} MB`);
    assert.equal((await status(s.url, 'GET', '/_up')).status, 200);
    // Memory is given back to the budget: a normal request still gets through.
    const ok = await status(s.url, 'POST', `/${db}/_bulk_docs`, { 'content-type': 'application/json' },
      JSON.stringify({ docs: [{ _id: 'after' }] }));
    assert.equal(ok.status, 201);
  });

  test('peak RSS of the largest request the server accepts (a 60 MB _bulk_docs)', async () => {
    const db = uniqueDbName('worst');
    await status(s.url, 'PUT', `/${db}`);
    const before = vm(s.proc.pid);
    const docs = Array.from({ length: 60 }, (_, i) => ({ _id: `big${i}`, v: 'x'.repeat(MB - 100) }));
    const r = await status(s.url, 'POST', `/${db}/_bulk_docs`, { 'content-type': 'application/json' },
      JSON.stringify({ docs }));
    assert.equal(r.status, 201);
    const peak = vm(s.proc.pid);
    process.stdout.write(`# one 60 MB _bulk_docs: peak RSS ${Math.round(peak.hwm / MB)} MB ` +
      `(was ${Math.round(before.hwm / MB)} MB)\n`);
    // Body + parsed documents + the write batch: a small multiple of the body, not GBs.
    assert.ok(peak.hwm - before.rss < 600 * MB, `grew by ${Math.round((peak.hwm - before.rss) / MB)} MB`);
  });
});
