// Raw-socket clients for tests (and the benchmark) that hold thousands of connections: a
// feed is one `net` socket with a written request and a running tail of what came back, so
// ten thousand of them fit in one test process. Also the server's resident memory and thread
// count, read from /proc.

import net from 'node:net';
import fs from 'node:fs';

/** Opens a connection and sends `head` (a full request head, CRLFs included). */
export function rawConnect(port, head, { localAddress } = {}) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port, localAddress });
    sock.setNoDelay(true);
    const fail = (err) => reject(err);
    sock.once('error', fail);
    sock.once('connect', () => {
      sock.off('error', fail);
      sock.on('error', () => {});
      if (head) sock.write(head);
      resolve(sock);
    });
  });
}

/**
 * One request on a new connection (Connection: close); resolves with the status, the body
 * text and the milliseconds from connect to the end of the reply.
 */
export function rawRequest(port, method, path, { localAddress, body, timeout = 10_000 } = {}) {
  const t0 = performance.now();
  return new Promise((resolve) => {
    let data = '';
    const sock = net.connect({ host: '127.0.0.1', port, localAddress });
    const timer = setTimeout(() => { sock.destroy(); finish('timeout'); }, timeout);
    let done = false;
    const finish = (error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      const m = /^HTTP\/1\.1 (\d{3})/.exec(data);
      const i = data.indexOf('\r\n\r\n');
      resolve({ status: m ? Number(m[1]) : 0, head: i < 0 ? data : data.slice(0, i),
        body: i < 0 ? '' : data.slice(i + 4), ms: performance.now() - t0, error });
    };
    sock.setEncoding('utf8');
    sock.on('connect', () => {
      const b = body ?? '';
      sock.write(`${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n` +
        (body !== undefined ? `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(b)}\r\n` : '') +
        `\r\n${b}`);
    });
    sock.on('data', (c) => { data += c; });
    sock.on('end', () => finish());
    sock.on('close', () => finish());
    sock.on('error', (e) => finish(e.code || String(e)));
  });
}

/**
 * Opens a feed (GET path, kept alive). Resolves once the reply's head has come (or, with
 * waitHead false, once the request is sent: some servers send the head with the first row),
 * with the socket; `sock.tail` holds the last bytes received; each of `sock.watchers` is called with
 * every chunk and the tail before it.
 */
export function openRawFeed(port, path, { waitHead = true } = {}) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    let head = '';
    let headDone = false;
    sock.tail = '';
    sock.watchers = [];
    const timer = setTimeout(() => { sock.destroy(); reject(new Error(`no reply head for ${path}`)); }, 60_000);
    sock.setEncoding('utf8');
    sock.on('connect', () => {
      sock.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
      if (!waitHead) { clearTimeout(timer); resolve(sock); }
    });
    sock.on('data', (c) => {
      if (!headDone) {
        head += c;
        const i = head.indexOf('\r\n\r\n');
        if (i < 0) return;
        headDone = true;
        clearTimeout(timer);
        sock.status = Number((/^HTTP\/1\.[01] (\d{3})/.exec(head) || [])[1] || 0);
        c = head.slice(i + 4);
        head = '';
        resolve(sock);
      }
      for (const w of sock.watchers) w(c, sock.tail);
      sock.tail = (sock.tail + c).slice(-256);
    });
    sock.on('error', (e) => { clearTimeout(timer); if (!headDone) reject(e); });
  });
}

/** Runs fn over items with at most `width` promises in flight; resolves with the results. */
export async function pool(items, width, fn) {
  const out = new Array(items.length);
  let next = 0;
  const lanes = Array.from({ length: Math.min(width, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  });
  await Promise.all(lanes);
  return out;
}

/** Resident memory (bytes) and thread count of a process. */
export function procStatus(pid) {
  const text = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const rss = Number((/VmRSS:\s+(\d+) kB/.exec(text) || [])[1] || 0) * 1024;
  const threads = Number((/Threads:\s+(\d+)/.exec(text) || [])[1] || 0);
  return { rss, threads };
}

/** The soft open-file limit of a process. */
export function openFileLimit(pid = 'self') {
  const text = fs.readFileSync(`/proc/${pid}/limits`, 'utf8');
  const m = /Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/.exec(text);
  const n = (v) => (v === 'unlimited' ? Infinity : Number(v));
  return m ? { soft: n(m[1]), hard: n(m[2]) } : { soft: 1024, hard: 1024 };
}

/** The p-th percentile (0..100) of numbers. */
export function percentile(values, p) {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}
