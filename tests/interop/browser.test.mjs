// The offline-first web app: PouchDB in a real headless browser (Debian's chromium driven by
// puppeteer-core), on a page served from its own origin, logs in to mimeo by cookie across
// origins (CORS with credentials) and syncs live both ways. If chromium cannot start the test
// is skipped with the reason (tests/run.sh counts a skip here as a failure). A second test
// moves attachments both ways through the browser's PouchDB.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { startServer } from './lib/server.mjs';
import { uniqueDbName } from './lib/util.mjs';

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const here = path.dirname(new URL(import.meta.url).pathname);
const POUCH_JS = path.join(here, 'node_modules/pouchdb/dist/pouchdb.min.js');

function basic(name, password) {
  return 'Basic ' + Buffer.from(`${name}:${password}`).toString('base64');
}

async function call(base, method, p, body, auth) {
  const res = await fetch(base + p, { method, headers: { 'content-type': 'application/json', authorization: auth },
    body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: res.status, json: await res.json().catch(() => undefined) };
}

/** A static origin: the app page and PouchDB's browser build. */
function startPageServer() {
  const page = `<!doctype html><meta charset="utf-8"><title>app</title>
<script src="/pouchdb.min.js"></script><body>app</body>`;
  const srv = http.createServer((req, res) => {
    if (req.url === '/pouchdb.min.js') {
      res.writeHead(200, { 'content-type': 'application/javascript' });
      fs.createReadStream(POUCH_JS).pipe(res);
    } else {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(page);
    }
  });
  return new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve(srv)));
}

describe('PouchDB in chromium: cookie login across origins and live sync', () => {
  let puppeteer, browser, pageSrv, s, origin, launchError;
  const admin = { name: 'root', password: 'r00t' };

  before(async () => {
    pageSrv = await startPageServer();
    // Another port is another origin: the page's fetches to mimeo are cross-origin.
    origin = `http://127.0.0.1:${pageSrv.address().port}`;
    s = await startServer({ args: ['--set', `admins.root=${admin.password}`, '--set', 'chttpd_auth.iterations=1000',
      '--set', 'cors.enable=true', '--set', `cors.origins=${origin}`, '--set', 'cors.credentials=true'] });
    try {
      puppeteer = (await import('puppeteer-core')).default;
      browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true,
        args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
    } catch (err) {
      launchError = err;
    }
  });
  after(async () => {
    await browser?.close();
    await s?.stop();
    pageSrv?.close();
  });

  test('log in, sync, then changes flow live in both directions', async (t) => {
    if (!browser) {
      t.skip(`chromium could not start (${CHROMIUM}): ${launchError?.message?.split('\n')[0]}`);
      return;
    }
    const db = uniqueDbName('webapp');
    assert.equal((await call(s.url, 'PUT', '/_users/org.couchdb.user:wendy',
      { name: 'wendy', password: 'w3ndy', roles: [], type: 'user' })).status, 201);
    const auth = basic(admin.name, admin.password);
    assert.equal((await call(s.url, 'PUT', `/${db}`, undefined, auth)).status, 201);
    assert.equal((await call(s.url, 'PUT', `/${db}/_security`,
      { admins: { names: ['wendy'] }, members: { names: ['wendy'] } }, auth)).status, 200);
    await call(s.url, 'PUT', `/${db}/from-server-1`, { n: 1 }, auth);

    const page = await browser.newPage();
    page.on('pageerror', (e) => process.stderr.write(`[page] ${e.message}\n`));
    await page.goto(origin + '/', { waitUntil: 'load' });
    assert.equal(await page.evaluate(() => location.origin), origin);

    // In the page: anonymous access is refused; login sets an HttpOnly cookie that the
    // browser then sends cross-origin; PouchDB syncs live with credentials:'include'.
    const first = await page.evaluate(async (remote, base) => {
      const anon = await fetch(remote, { credentials: 'include' });
      const login = await fetch(base + '/_session', { method: 'POST', credentials: 'include',
        headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'wendy', password: 'w3ndy' }) });
      const session = await (await fetch(base + '/_session', { credentials: 'include' })).json();
      window.remote = new PouchDB(remote, { skip_setup: true,
        fetch: (url, opts) => { opts.credentials = 'include'; return PouchDB.fetch(url, opts); } });
      window.local = new PouchDB('app-' + Date.now());
      await window.local.bulkDocs([{ _id: 'from-browser-1', n: 1 }, { _id: 'from-browser-2', n: 2 }]);
      window.sync = window.local.sync(window.remote, { live: true, retry: true });
      window.synced = 0;
      window.sync.on('change', () => { window.synced++; });
      return { anon: anon.status, login: login.status, cookieVisible: document.cookie.includes('AuthSession'),
        session };
    }, `${s.url}/${db}`, s.url);
    assert.equal(first.anon, 401);
    assert.equal(first.login, 200);
    assert.equal(first.cookieVisible, false, 'the session cookie is HttpOnly');
    assert.equal(first.session.userCtx.name, 'wendy');
    assert.equal(first.session.info.authenticated, 'cookie');

    const waitIn = async (fn, arg, what) => {
      const deadline = Date.now() + 30000;
      for (;;) {
        if (await page.evaluate(fn, arg)) return;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    };
    const serverHas = async (id) => (await call(s.url, 'GET', `/${db}/${id}`, undefined, auth)).status === 200;
    const deadline = Date.now() + 30000;
    while (!(await serverHas('from-browser-2'))) {
      if (Date.now() > deadline) throw new Error('browser docs never reached mimeo');
      await new Promise((r) => setTimeout(r, 200));
    }
    await waitIn((id) => window.local.get(id).then(() => true, () => false), 'from-server-1', 'the first pull');

    // Live: a write on mimeo shows up in the browser, and a browser write on mimeo.
    await call(s.url, 'PUT', `/${db}/from-server-2`, { n: 2 }, auth);
    await waitIn((id) => window.local.get(id).then(() => true, () => false), 'from-server-2', 'a live pull');
    await page.evaluate(() => window.local.put({ _id: 'from-browser-3', n: 3 }));
    const d2 = Date.now() + 30000;
    while (!(await serverHas('from-browser-3'))) {
      if (Date.now() > d2) throw new Error('a live push never reached mimeo');
      await new Promise((r) => setTimeout(r, 200));
    }
    // Logging out ends the session for PouchDB as well.
    const after = await page.evaluate(async (remote, base) => {
      window.sync.cancel();
      await fetch(base + '/_session', { method: 'DELETE', credentials: 'include' });
      return (await fetch(remote, { credentials: 'include' })).status;
    }, `${s.url}/${db}`, s.url);
    assert.equal(after, 401);
    await page.close();
  });

  // Attachments through the browser's PouchDB (issue 10): it pushes them inline in _bulk_docs
  // and pulls them with per-attachment GETs, cross-origin with the session cookie.
  test('attachments both ways: 0 B, 1 B, 1 MiB binary and text, and a conflict on one', async (t) => {
    if (!browser) {
      t.skip(`chromium could not start (${CHROMIUM}): ${launchError?.message?.split('\n')[0]}`);
      return;
    }
    const db = uniqueDbName('webatt');
    const auth = basic(admin.name, admin.password);
    await call(s.url, 'PUT', '/_users/org.couchdb.user:ada', { name: 'ada', password: 'ad4', roles: [], type: 'user' }, auth);
    assert.equal((await call(s.url, 'PUT', `/${db}`, undefined, auth)).status, 201);
    assert.equal((await call(s.url, 'PUT', `/${db}/_security`,
      { admins: { names: ['ada'] }, members: { names: ['ada'] } }, auth)).status, 200);
    const pattern = (n, k) => Buffer.from(Array.from({ length: n }, (_, i) => (i * k + (i >> 8)) & 255));
    const big = pattern(1 << 20, 7);
    const text = 'mimeo attachment text line\n'.repeat(40000);   // ~1 MiB, stored gzip-encoded
    assert.equal((await call(s.url, 'PUT', `/${db}/from-server`, { _attachments: {
      'big.bin': { content_type: 'application/octet-stream', data: pattern(1 << 20, 13).toString('base64') },
      'empty.txt': { content_type: 'text/plain', data: '' } } }, auth)).status, 201);

    const page = await browser.newPage();
    page.on('pageerror', (e) => process.stderr.write(`[page] ${e.message}\n`));
    await page.goto(origin + '/', { waitUntil: 'load' });
    const pulled = await page.evaluate(async (remote, base, text) => {
      await fetch(base + '/_session', { method: 'POST', credentials: 'include',
        headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'ada', password: 'ad4' }) });
      window.remote = new PouchDB(remote, { skip_setup: true,
        fetch: (url, opts) => { opts.credentials = 'include'; return PouchDB.fetch(url, opts); } });
      window.local = new PouchDB('att-' + Date.now());
      const bytes = (n, k) => { const b = new Uint8Array(n); for (let i = 0; i < n; i++) b[i] = (i * k + (i >> 8)) & 255; return b; };
      const blob = (b, type) => new Blob([b], { type });
      await window.local.bulkDocs([
        { _id: 'b0', _attachments: { 'a.bin': { content_type: 'application/octet-stream', data: blob(new Uint8Array(0), 'application/octet-stream') } } },
        { _id: 'b1', _attachments: { 'a.bin': { content_type: 'application/octet-stream', data: blob(new Uint8Array([42]), 'application/octet-stream') } } },
        { _id: 'big', _attachments: { 'a.bin': { content_type: 'application/octet-stream', data: blob(bytes(1 << 20, 7), 'application/octet-stream') } } },
        { _id: 'txt', _attachments: { 'a.txt': { content_type: 'text/plain', data: blob(new TextEncoder().encode(text), 'text/plain') } } },
        { _id: 'c', _attachments: { 'a.txt': { content_type: 'text/plain', data: blob(new TextEncoder().encode('first'), 'text/plain') } } },
      ]);
      const push = await window.local.replicate.to(window.remote);
      const pull = await window.local.replicate.from(window.remote);
      const got = await window.local.getAttachment('from-server', 'big.bin');
      const buf = new Uint8Array(await got.arrayBuffer());
      let same = buf.length === 1 << 20;
      const want = bytes(1 << 20, 13);
      for (let i = 0; same && i < buf.length; i++) same = buf[i] === want[i];
      const empty = await window.local.getAttachment('from-server', 'empty.txt');
      const cdoc = await window.local.get('c');
      return { pushed: push.docs_written, pullOk: pull.ok, bigSame: same, emptySize: empty.size, cRev: cdoc._rev };
    }, `${s.url}/${db}`, s.url, text);
    assert.equal(pulled.pushed, 5);
    assert.equal(pulled.pullOk, true);
    assert.equal(pulled.bigSame, true, 'the 1 MiB attachment pulled into the browser is byte for byte');
    assert.equal(pulled.emptySize, 0);

    const raw = async (p) => {
      const r = await fetch(s.url + p, { headers: { authorization: auth } });
      return { status: r.status, body: Buffer.from(await r.arrayBuffer()) };
    };
    assert.equal((await raw(`/${db}/b0/a.bin`)).body.length, 0);
    assert.deepEqual([...(await raw(`/${db}/b1/a.bin`)).body], [42]);
    assert.equal(Buffer.compare((await raw(`/${db}/big/a.bin`)).body, big), 0, 'the 1 MiB push is byte for byte');
    assert.equal((await raw(`/${db}/txt/a.txt`)).body.toString(), text);

    // Both sides change the attachment of c from the same revision: after syncing both ways
    // each side holds the conflict, and both revisions keep their own attachment.
    const cur = (await call(s.url, 'GET', `/${db}/c`, undefined, auth)).json;
    assert.equal(cur._rev, pulled.cRev);
    assert.equal((await call(s.url, 'PUT', `/${db}/c`, { _rev: cur._rev, _attachments: {
      'a.txt': { content_type: 'text/plain', data: Buffer.from('server side').toString('base64') } } }, auth)).status, 201);
    const conflict = await page.evaluate(async () => {
      const c = await window.local.get('c');
      await window.local.putAttachment('c', 'a.txt', c._rev, new Blob(['browser side'], { type: 'text/plain' }), 'text/plain');
      await window.local.replicate.to(window.remote);
      await window.local.replicate.from(window.remote);
      const back = await window.local.get('c', { conflicts: true });
      return { conflicts: (back._conflicts || []).length };
    });
    assert.equal(conflict.conflicts, 1, 'the browser holds the conflict');
    const sc = (await call(s.url, 'GET', `/${db}/c?conflicts=true`, undefined, auth)).json;
    assert.equal(sc._conflicts?.length, 1, 'mimeo holds the conflict');
    const texts = new Set();
    for (const rev of [sc._rev, sc._conflicts[0]])
      texts.add((await raw(`/${db}/c/a.txt?rev=${rev}`)).body.toString());
    assert.deepEqual([...texts].sort(), ['browser side', 'server side']);
    await page.close();
  });
});
