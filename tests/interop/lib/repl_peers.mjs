// Helpers for the replication suites: free ports, a pouchdb-server peer, the `mimeo replicate`
// command, a deterministic data set with conflicting branches and deletions written with
// new_edits:false, and a snapshot of a database's full revision state for comparing two peers.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { repoRoot, serverBinary } from './server.mjs';
import { request } from './http.mjs';

/**
 * Whether the binary under test has the replicator wired in (`mimeo replicate` exists). The
 * suites skip, saying so, on a build that predates it.
 */
export function replicationWired() {
  const r = spawnSync(serverBinary(), ['replicate', '--help'], { encoding: 'utf8', timeout: 10_000 });
  return r.status === 0 && /replicate/.test(r.stdout);
}

export const SKIP_UNWIRED = replicationWired() ? false
  : 'this mimeo build has no replicator wired in (mimeo replicate, /_replicate)';

/** A TCP port that was free a moment ago (for peers that must come back on the same port). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Polls fn until it returns a truthy value or the deadline passes (then throws). */
export async function waitFor(fn, { timeout = 20_000, interval = 25, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

/**
 * Starts `pouchdb-server --in-memory` on a free port, in a scratch folder (it writes its
 * config and log into its working directory).
 */
export async function startPouchServer() {
  const bin = path.join(repoRoot, 'tests/interop/node_modules/.bin/pouchdb-server');
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-pouchdb-server-'));
  const port = await freePort();
  const proc = spawn(bin, ['--in-memory', '-p', String(port), '-o', '127.0.0.1'],
    { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  proc.stdout.on('data', (c) => { log += c; });
  proc.stderr.on('data', (c) => { log += c; });
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitFor(async () => {
      if (proc.exitCode !== null) throw new Error(`pouchdb-server exited: ${log}`);
      try { return (await request(url, 'GET', '/', { timeout: 1000 })).status === 200; }
      catch { return false; }
    }, { timeout: 30_000, interval: 100, what: 'pouchdb-server to listen' });
  } catch (err) {
    proc.kill('SIGKILL');
    throw err;
  }
  return {
    url,
    async stop() {
      if (proc.exitCode === null) {
        const gone = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGKILL');
        await gone;
      }
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Runs `mimeo replicate ...args`; resolves {code, stdout, stderr, json} (json: stdout parsed,
 * when it is JSON).
 */
export function runReplicate(args, { timeout = 120_000 } = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn(serverBinary(), ['replicate', '--quiet', ...args],
      { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (c) => { stdout += c; });
    proc.stderr.on('data', (c) => { stderr += c; });
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`mimeo replicate ${args.join(' ')}: no exit within ${timeout} ms`));
    }, timeout);
    proc.on('exit', (code) => {
      clearTimeout(timer);
      let json;
      try { json = JSON.parse(stdout); } catch { json = undefined; }
      resolve({ code, stdout, stderr, json });
    });
  });
}

/** POST /_replicate on server url; resolves the reply ({status, json, ...}). */
export function postReplicate(url, body, { timeout = 120_000 } = {}) {
  return request(url, 'POST', '/_replicate', { body, timeout });
}

// A small seeded generator (mulberry32), so every run writes the same revisions.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function hex32(rand) {
  let s = '';
  while (s.length < 32) s += Math.floor(rand() * 0x100000000).toString(16).padStart(8, '0');
  return s.slice(0, 32);
}

/**
 * Revisions for `count` documents: most have one revision; every 10th has two conflicting
 * branches (one two levels deep); every 20th (offset 5) is deleted; every 50th (offset 7)
 * has a live and a deleted branch. Returns an array of revision objects for
 * _bulk_docs new_edits:false (several per id for conflicts).
 */
export function makeDataset(count, seed = 42) {
  const rand = rng(seed);
  const revs = [];
  for (let i = 0; i < count; i++) {
    const id = `doc${String(i).padStart(6, '0')}`;
    const root = hex32(rand);
    const body = { n: i, name: `document ${i}`, tags: ['x', 'y'], pad: 'p'.repeat(64) };
    if (i % 10 === 0) {
      const a = hex32(rand), b = hex32(rand), c = hex32(rand);
      revs.push({ _id: id, _rev: `3-${c}`, _revisions: { start: 3, ids: [c, a, root] }, ...body, branch: 'a' });
      revs.push({ _id: id, _rev: `2-${b}`, _revisions: { start: 2, ids: [b, root] }, ...body, branch: 'b' });
    } else if (i % 20 === 5) {
      const d = hex32(rand);
      revs.push({ _id: id, _rev: `2-${d}`, _revisions: { start: 2, ids: [d, root] }, _deleted: true });
    } else if (i % 50 === 7) {
      const a = hex32(rand), d = hex32(rand);
      revs.push({ _id: id, _rev: `2-${a}`, _revisions: { start: 2, ids: [a, root] }, ...body });
      revs.push({ _id: id, _rev: `2-${d}`, _revisions: { start: 2, ids: [d, root] }, _deleted: true });
    } else {
      revs.push({ _id: id, _rev: `1-${root}`, _revisions: { start: 1, ids: [root] }, ...body });
    }
  }
  return revs;
}

/** Creates db on url (412 is fine) and writes revs with new_edits:false in chunks. */
export async function loadDataset(url, db, revs, chunk = 2000) {
  const c = await request(url, 'PUT', `/${db}`);
  if (c.status !== 201 && c.status !== 412) throw new Error(`PUT /${db}: ${c.status} ${c.text}`);
  for (let i = 0; i < revs.length; i += chunk) {
    const r = await request(url, 'POST', `/${db}/_bulk_docs`,
      { body: { docs: revs.slice(i, i + chunk), new_edits: false }, timeout: 120_000 });
    if (r.status !== 201) throw new Error(`_bulk_docs: ${r.status} ${r.text.slice(0, 300)}`);
    if (Array.isArray(r.json) && r.json.length) throw new Error(`_bulk_docs errors: ${r.text.slice(0, 300)}`);
  }
}

/**
 * Everything replication must carry, per document id: its leaves (deleted ones included, from
 * _changes style=all_docs), whether the winner is deleted, and for live documents the winning
 * rev, sorted _conflicts and the body. Returns a Map id -> canonical JSON string.
 */
export async function snapshot(url, db) {
  const out = new Map();
  const ch = await request(url, 'GET', `/${db}/_changes?style=all_docs`, { timeout: 120_000 });
  if (ch.status !== 200) throw new Error(`_changes on ${url}/${db}: ${ch.status} ${ch.text.slice(0, 200)}`);
  const state = new Map();
  for (const row of ch.json.results) {
    state.set(row.id, {
      leaves: row.changes.map((c) => c.rev).sort(),
      deleted: !!row.deleted,
    });
  }
  const all = await request(url, 'GET', `/${db}/_all_docs?include_docs=true&conflicts=true`, { timeout: 120_000 });
  if (all.status !== 200) throw new Error(`_all_docs on ${url}/${db}: ${all.status}`);
  for (const row of all.json.rows) {
    const s = state.get(row.id) ?? { leaves: null, deleted: null, missingFromChanges: true };
    const { _id, _rev, _conflicts, ...body } = row.doc;
    s.winner = row.value.rev;
    s.conflicts = (_conflicts ?? []).slice().sort();
    s.body = canonical(body);
    state.set(row.id, s);
  }
  for (const [id, s] of state) out.set(id, JSON.stringify(s));
  return out;
}

function canonical(v) {
  if (Array.isArray(v)) return v.map(canonical);
  if (v && typeof v === 'object') {
    const o = {};
    for (const k of Object.keys(v).sort()) o[k] = canonical(v[k]);
    return o;
  }
  return v;
}

/** Compares two snapshots; returns a list of differences (at most `max`). */
export function diffSnapshots(a, b, max = 5) {
  const diffs = [];
  for (const [id, s] of a) {
    const t = b.get(id);
    if (t !== s) diffs.push(`${id}: ${s} vs ${t}`);
    if (diffs.length >= max) return diffs;
  }
  for (const id of b.keys()) {
    if (!a.has(id)) diffs.push(`${id} only on the second`);
    if (diffs.length >= max) return diffs;
  }
  return diffs;
}

/** open_revs=all of a few ids on both ends, compared (bodies of every leaf, deleted included). */
export async function compareOpenRevs(urlA, dbA, urlB, dbB, ids) {
  const norm = (arr) => arr.filter((x) => x.ok).map((x) => JSON.stringify(canonical(x.ok)))
    .sort();
  for (const id of ids) {
    const p = `/${encodeURIComponent(id)}?open_revs=all&revs=true`;
    const ra = await request(urlA, 'GET', `/${dbA}${p}`);
    const rb = await request(urlB, 'GET', `/${dbB}${p}`);
    if (ra.status !== 200 || rb.status !== 200) return `${id}: statuses ${ra.status}/${rb.status}`;
    const a = norm(ra.json), b = norm(rb.json);
    if (JSON.stringify(a) !== JSON.stringify(b)) return `${id}: ${a} vs ${b}`;
  }
  return null;
}
