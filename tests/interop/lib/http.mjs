// Plain HTTP helpers for tests that look at status codes, headers and raw bytes.
//
// request() uses node:http (not fetch) so tests control every header and byte of the body, and
// see the reply exactly as sent. rawExchange() writes bytes straight to a TCP socket for inputs
// no HTTP client would produce.

import http from 'node:http';
import net from 'node:net';
import assert from 'node:assert/strict';

const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 16 });

/**
 * Sends one request.
 * @param {string} base   server URL, e.g. http://127.0.0.1:5984
 * @param {string} method
 * @param {string} path   already percent-encoded path and query
 * @param {{body?: any, headers?: object, timeout?: number, agent?: http.Agent|false}} [opts]
 *   body: a Buffer or string is sent as is; anything else is JSON-encoded with
 *   Content-Type application/json (unless headers set one).
 * @returns {Promise<{status:number, headers:object, body:Buffer, text:string, json:any}>}
 *   json is undefined when the body is not JSON.
 */
export function request(base, method, path, opts = {}) {
  const u = new URL(base);
  const headers = { accept: 'application/json', ...(opts.headers ?? {}) };
  let payload = null;
  if (opts.body !== undefined) {
    if (Buffer.isBuffer(opts.body) || typeof opts.body === 'string') {
      payload = Buffer.isBuffer(opts.body) ? opts.body : Buffer.from(opts.body);
    } else {
      payload = Buffer.from(JSON.stringify(opts.body));
    }
    if (!Object.keys(headers).some((h) => h.toLowerCase() === 'content-type')) {
      headers['content-type'] = 'application/json';
    }
    headers['content-length'] = String(payload.length);
  }
  if (!payload && ['POST', 'PUT', 'PATCH'].includes(method)) headers['content-length'] = '0';
  const timeout = opts.timeout ?? 30_000;
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: u.hostname, port: u.port, method, path, headers,
      agent: opts.agent ?? keepAlive,
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        const body = Buffer.concat(chunks);
        const text = body.toString('utf8');
        let json;
        try { json = text.length ? JSON.parse(text) : undefined; } catch { json = undefined; }
        resolve({ status: res.statusCode, headers: res.headers, body, text, json });
      });
      res.on('error', (err) => { clearTimeout(timer); reject(err); });
    });
    const timer = setTimeout(() => {
      req.destroy(new Error(`${method} ${path.slice(0, 200)}: no complete reply within ${timeout} ms`));
    }, timeout);
    req.on('error', (err) => { clearTimeout(timer); reject(err); });
    if (payload) req.end(payload); else req.end();
  });
}

/** A client bound to one server URL: c.get(path), c.put(path, body), … */
export function client(base) {
  const call = (method) => (path, body, opts = {}) =>
    request(base, method, path, { ...opts, body: body === undefined ? opts.body : body });
  return {
    base,
    request: (method, path, opts) => request(base, method, path, opts),
    get: (path, opts = {}) => request(base, 'GET', path, opts),
    head: (path, opts = {}) => request(base, 'HEAD', path, opts),
    delete: (path, opts = {}) => request(base, 'DELETE', path, opts),
    put: call('PUT'),
    post: call('POST'),
  };
}

/** Percent-encodes a document id the way CouchDB clients do (`_design/x` keeps its slash). */
export function docPath(db, id) {
  const d = encodeURIComponent(db);
  for (const prefix of ['_design/', '_local/']) {
    if (id.startsWith(prefix)) return `/${d}/${prefix}${encodeURIComponent(id.slice(prefix.length))}`;
  }
  return `/${d}/${encodeURIComponent(id)}`;
}

/** Builds a query string from an object; values are sent as given (strings) or JSON. */
export function qs(params) {
  const parts = [];
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined) continue;
    const s = typeof v === 'string' ? v : JSON.stringify(v);
    parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(s)}`);
  }
  return parts.length ? `?${parts.join('&')}` : '';
}

/** Asserts a CouchDB-shaped error reply: the status, a JSON body with string error and reason. */
export function assertError(res, status, error, what = '') {
  const label = what ? `${what}: ` : '';
  const statuses = Array.isArray(status) ? status : [status];
  assert.ok(statuses.includes(res.status),
    `${label}expected status ${statuses.join(' or ')}, got ${res.status} ${res.text.slice(0, 300)}`);
  assert.ok(res.json && typeof res.json === 'object' && !Array.isArray(res.json),
    `${label}error body must be a JSON object, got ${JSON.stringify(res.text.slice(0, 300))}`);
  assert.equal(typeof res.json.error, 'string', `${label}"error" must be a string: ${res.text.slice(0, 300)}`);
  assert.equal(typeof res.json.reason, 'string', `${label}"reason" must be a string: ${res.text.slice(0, 300)}`);
  if (error !== undefined) {
    const errors = Array.isArray(error) ? error : [error];
    assert.ok(errors.includes(res.json.error),
      `${label}expected error ${errors.join(' or ')}, got ${res.text.slice(0, 300)}`);
  }
  const ctype = res.headers['content-type'] ?? '';
  assert.match(ctype, /^application\/json/, `${label}error Content-Type must be application/json, got ${ctype}`);
}

/** Asserts a 2xx-or-given status and returns the JSON body. */
export function expectStatus(res, status, what = '') {
  const statuses = Array.isArray(status) ? status : [status];
  assert.ok(statuses.includes(res.status),
    `${what ? what + ': ' : ''}expected status ${statuses.join(' or ')}, got ${res.status} ${res.text.slice(0, 500)}`);
  return res.json;
}

/**
 * Writes raw bytes to a fresh TCP connection and collects what comes back until the server
 * closes the connection or `timeout` ms pass.
 * @param {{host:string, port:number}} addr
 * @param {Buffer|string|Array<Buffer|string>} bytes
 * @param {{timeout?: number, halfClose?: boolean, destroyAfterWrite?: boolean}} [opts]
 *   halfClose: end our side after writing (FIN) and keep reading.
 *   destroyAfterWrite: reset the connection right after writing.
 * @returns {Promise<{data: Buffer, closed: boolean, timedOut: boolean, error?: Error}>}
 */
export function rawExchange(addr, bytes, opts = {}) {
  const timeout = opts.timeout ?? 10_000;
  return new Promise((resolve) => {
    const chunks = [];
    let done = false;
    const sock = net.connect({ host: addr.host, port: addr.port });
    const finish = (result) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve({ data: Buffer.concat(chunks), ...result });
    };
    const timer = setTimeout(() => finish({ closed: false, timedOut: true }), timeout);
    sock.on('data', (c) => chunks.push(c));
    sock.on('end', () => finish({ closed: true, timedOut: false }));
    sock.on('close', () => finish({ closed: true, timedOut: false }));
    sock.on('error', (error) => finish({ closed: true, timedOut: false, error }));
    sock.on('connect', () => {
      for (const b of [].concat(bytes)) sock.write(b);
      if (opts.destroyAfterWrite) {
        sock.resetAndDestroy ? sock.resetAndDestroy() : sock.destroy();
        finish({ closed: true, timedOut: false });
      } else if (opts.halfClose) {
        sock.end();
      }
    });
  });
}

/** Parses the status line of a raw HTTP reply; null when there is none. */
export function rawStatus(data) {
  const m = data.toString('latin1').match(/^HTTP\/1\.[01] (\d{3})/);
  return m ? Number(m[1]) : null;
}

/** The body of a raw HTTP/1.1 reply (handles Content-Length and chunked framing). */
export function rawBody(data) {
  const s = data.toString('latin1');
  const i = s.indexOf('\r\n\r\n');
  if (i < 0) return '';
  const head = s.slice(0, i).toLowerCase();
  let body = s.slice(i + 4);
  if (/transfer-encoding:\s*chunked/.test(head)) {
    let out = '';
    let rest = body;
    for (;;) {
      const j = rest.indexOf('\r\n');
      if (j < 0) break;
      const n = parseInt(rest.slice(0, j), 16);
      if (!n) break;
      out += rest.slice(j + 2, j + 2 + n);
      rest = rest.slice(j + 2 + n + 2);
    }
    body = out;
  }
  return Buffer.from(body, 'latin1').toString('utf8');
}
