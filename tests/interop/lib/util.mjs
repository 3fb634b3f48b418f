// Small helpers shared by the suites: polling with a deadline, names, rev ids.

import crypto from 'node:crypto';

/**
 * Calls `check` until it returns a truthy value (which is returned) or the deadline passes.
 * `check` may throw; the last error (or `describe()`) explains a timeout.
 * @param {() => any | Promise<any>} check
 * @param {{timeout?: number, interval?: number, message?: string, describe?: () => any}} [opts]
 */
export async function waitFor(check, opts = {}) {
  const timeout = opts.timeout ?? 20_000;
  const interval = opts.interval ?? 50;
  const deadline = Date.now() + timeout;
  let lastError;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      let detail = '';
      if (opts.describe) {
        try { detail = `\nlast state: ${JSON.stringify(await opts.describe()).slice(0, 4000)}`; } catch {}
      }
      const msg = `${opts.message ?? 'condition'} not met within ${timeout} ms` +
        (lastError ? `; last error: ${lastError.stack ?? lastError}` : '') + detail;
      throw new Error(msg);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

/** A database name that is legal and unique to this run (suites may share one server). */
export function uniqueDbName(prefix) {
  return `${prefix}_${Date.now().toString(36)}_${crypto.randomBytes(3).toString('hex')}`;
}

/** 32 lowercase hex characters: the hash part of a rev id. */
export function randomHash() {
  return crypto.randomBytes(16).toString('hex');
}

/** Deterministic 32-hex hash of a string, for revision trees that tests build by hand. */
export function hashOf(text) {
  return crypto.createHash('md5').update(text).digest('hex');
}

/** Splits "N-h" into {gen, hash}. */
export function parseRev(rev) {
  const i = rev.indexOf('-');
  return { gen: Number(rev.slice(0, i)), hash: rev.slice(i + 1) };
}

/** CouchDB's winner order: non-deleted first, then higher generation, then greater hash. */
export function compareLeaves(a, b) {
  if (!!a.deleted !== !!b.deleted) return a.deleted ? -1 : 1;
  const ra = parseRev(a.rev);
  const rb = parseRev(b.rev);
  if (ra.gen !== rb.gen) return ra.gen - rb.gen;
  return ra.hash < rb.hash ? -1 : ra.hash > rb.hash ? 1 : 0;
}

/** Sorted copy, for comparing lists as sets. */
export function sorted(list) {
  return [...list].sort();
}

/** Resolves when `emitter` emits `event`, rejects on `error` or after `timeout` ms. */
export function once(emitter, event, timeout = 20_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`no '${event}' event within ${timeout} ms`));
    }, timeout);
    const onEvent = (v) => { cleanup(); resolve(v); };
    const onError = (e) => { cleanup(); reject(e); };
    const cleanup = () => {
      clearTimeout(timer);
      emitter.removeListener(event, onEvent);
      if (event !== 'error') emitter.removeListener('error', onError);
    };
    emitter.on(event, onEvent);
    if (event !== 'error') emitter.on('error', onError);
  });
}
