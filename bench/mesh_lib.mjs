// The pieces every mesh benchmark uses: JSON over HTTP with a keep-alive agent, polling with a
// deadline, starting a `mimeo serve` node on loopback, a seeded generator, percentiles and a
// process's CPU ticks. One module so the benchmarks measure the same way.

import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const bin = path.resolve(root, process.env.MIMEO_BIN || 'build/mimeo');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** call(base, method, path, body?, timeout?) → {status, json, text}, over one shared agent. */
export function makeCall(maxSockets = 64) {
  const agent = new http.Agent({ keepAlive: true, maxSockets });
  const call = (base, method, p, body, timeout = 120_000) => {
    const u = new URL(base);
    const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const req = http.request({
        host: u.hostname, port: u.port, method, path: p, agent,
        headers: { accept: 'application/json', ...(data ? { 'content-type': 'application/json', 'content-length': data.length } : {}) },
      }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          let json; try { json = JSON.parse(text); } catch {}
          resolve({ status: res.statusCode, json, text });
        });
        // A connection closed in the middle of the body ends neither in 'end' nor in an
        // error on the request: without this the caller would wait forever.
        res.on('error', reject);
        res.on('close', () => { if (!res.complete) reject(new Error('response cut short')); });
      });
      req.setTimeout(timeout, () => req.destroy(new Error('timeout')));
      req.on('error', reject);
      if (data) req.write(data);
      req.end();
    });
  };
  call.destroy = () => agent.destroy();
  return call;
}

/** Polls check() until it is true; throws after timeout ms. Errors count as "not yet". */
export async function until(check, timeout, what, interval = 100) {
  const end = Date.now() + timeout;
  for (;;) {
    try { if (await check()) return; } catch {}
    if (Date.now() > end) throw new Error(`${what}: not within ${timeout} ms`);
    await sleep(interval);
  }
}

// Every node still running when the benchmark exits (an error, ^C) is killed with it.
const running = new Set();
process.on('exit', () => { for (const p of running) p.kill('SIGKILL'); });
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

/** Starts `mimeo serve` with its data in dir/name, a mesh member named name unless
 * opts.mesh is false; resolves to {name, url, port, proc, data}. */
export async function startNode(dir, name, args, opts = {}) {
  const data = path.join(dir, name);
  await fs.mkdir(data, { recursive: true });
  const proc = spawn(bin, ['serve', '--data', data, '--bind', '127.0.0.1', '--port', '0',
    ...(opts.mesh === false ? [] : ['--node-name', name]), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(proc);
  proc.on('exit', () => running.delete(proc));
  proc.stderr.resume();
  const url = await new Promise((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (c) => {
      out += c;
      const m = out.match(/mimeo listening on (http:\/\/\S+)/);
      if (m) resolve(m[1]);
    });
    proc.on('exit', (code) => reject(new Error(`${name} exited ${code}`)));
  });
  return { name, url, proc, data, port: Number(new URL(url).port) };
}

/** A seeded xorshift32: rnd(n) in [0, n). The seed comes from SEED or the clock; printed. */
export function seeded(label) {
  let seed = Number(process.env.SEED || Date.now() % 1e6) || 1;
  console.error(`${label} SEED=${seed}`);
  return (n) => {
    seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0;
    return seed % n;
  };
}

/** The p-th percentile of an ascending array (nearest rank). */
export function pct(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/** utime + stime of a process, in clock ticks (100 per second on Linux). */
export function cpuTicks(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const c = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return Number(c[11]) + Number(c[12]);
}
