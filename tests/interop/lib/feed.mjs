// A streaming reader for long-lived _changes responses (longpoll, continuous, eventsource):
// it keeps the bytes as they arrive, with timestamps, so tests can wait for a line and measure
// how long after a write it came.

import http from 'node:http';
import { performance } from 'node:perf_hooks';

/**
 * Opens a request and resolves once the request has been fully written (the reply may not have
 * started). feed.response resolves with the status and headers; feed.ended when the body ends.
 * @param {string} base server URL
 * @param {string} path percent-encoded path and query
 * @param {{method?: string, body?: any, headers?: object}} [opts]
 */
export function openFeed(base, path, opts = {}) {
  const u = new URL(base);
  const headers = { accept: 'application/json', ...(opts.headers ?? {}) };
  let payload = null;
  if (opts.body !== undefined) {
    payload = Buffer.from(typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body));
    headers['content-type'] = headers['content-type'] ?? 'application/json';
    headers['content-length'] = String(payload.length);
  }
  const feed = new Feed();
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, method: opts.method ?? 'GET', path, headers, agent: false });
    feed.req = req;
    feed.response = new Promise((resolveRes, rejectRes) => {
      req.on('response', (res) => {
        feed.res = res;
        feed.status = res.statusCode;
        feed.headers = res.headers;
        feed.headersAt = performance.now();
        res.on('data', (chunk) => feed.push(chunk));
        res.on('end', () => feed.finish(null));
        res.on('error', (err) => feed.finish(err));
        res.on('close', () => feed.finish(null));
        resolveRes(res);
      });
      req.on('error', (err) => { feed.finish(err); rejectRes(err); });
    });
    feed.response.catch(() => {});
    req.on('error', reject);
    req.on('finish', () => resolve(feed));
    if (payload) req.end(payload); else req.end();
  });
}

class Feed {
  constructor() {
    this.chunks = [];          // {at, text}
    this.text = '';
    this.done = false;
    this.endedAt = null;
    this.error = null;
    this.waiters = [];
    this.ended = new Promise((resolve) => { this.resolveEnded = resolve; });
  }

  push(chunk) {
    const text = chunk.toString('utf8');
    this.chunks.push({ at: performance.now(), text });
    this.text += text;
    this.wake();
  }

  finish(err) {
    if (this.done) return;
    this.done = true;
    this.error = err;
    this.endedAt = performance.now();
    this.resolveEnded(this);
    this.wake();
  }

  wake() {
    for (const w of [...this.waiters]) w();
  }

  /** Non-empty lines received so far (continuous feeds: one JSON object per line). */
  lines() {
    return this.text.split('\n').filter((l) => l.trim() !== '');
  }

  /** Rows of a continuous feed parsed as JSON (a partial last line is left out). */
  rows() {
    const parts = this.text.split('\n');
    if (!this.done) parts.pop();
    return parts.filter((l) => l.trim() !== '').map((l) => JSON.parse(l));
  }

  /**
   * Resolves with performance.now() of the moment `predicate(this)` first held (checked after each
   * chunk), or rejects after `timeout` ms.
   */
  waitFor(predicate, timeout = 10_000, what = 'feed condition') {
    if (predicate(this)) return Promise.resolve(this.chunks.at(-1)?.at ?? performance.now());
    return new Promise((resolve, reject) => {
      const check = () => {
        if (predicate(this)) {
          cleanup();
          resolve(this.chunks.at(-1)?.at ?? this.endedAt ?? performance.now());
        } else if (this.done) {
          cleanup();
          reject(new Error(`${what}: the response ended first; received ${JSON.stringify(this.text.slice(-2000))}`));
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`${what}: not met within ${timeout} ms; received ${JSON.stringify(this.text.slice(-2000))}`));
      }, timeout);
      const cleanup = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== check);
      };
      this.waiters.push(check);
    });
  }

  /** Resolves when the response ends, or rejects after `timeout` ms. */
  async waitEnd(timeout = 10_000, what = 'response end') {
    let timer;
    const t = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: the response did not end within ${timeout} ms; received ${JSON.stringify(this.text.slice(-2000))}`)), timeout);
    });
    try {
      await Promise.race([this.ended, t]);
    } finally {
      clearTimeout(timer);
    }
    if (this.error) throw this.error;
    return this.endedAt;
  }

  /** Aborts the request. */
  close() {
    this.req?.destroy();
    this.finish(null);
  }
}
