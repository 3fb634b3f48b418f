// One server per data directory and per port: a second `mimeo serve` on the same data folder
// must refuse to start with a one-line message (two would silently corrupt each other's
// counters and documents), and a server must not be able to bind a port another live server
// listens on (SO_REUSEPORT would let the kernel split connections between them).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startServer, serverBinary, repoRoot } from './lib/server.mjs';
import { request } from './lib/http.mjs';

let server;

before(async () => {
  server = await startServer();
});

after(async () => {
  await server?.stop();
});

/** Runs `mimeo serve` with args; resolves {code, stderr, listening} once it exits, or kills
 * it if it starts listening (then listening is true). */
function serveOnce(args) {
  return new Promise((resolve, reject) => {
    const proc = spawn(serverBinary(), ['serve', '--bind', '127.0.0.1', ...args],
      { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    let listening = false;
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`mimeo serve neither exited nor listened; stderr: ${stderr}`));
    }, 20_000);
    const onOut = (chunk) => {
      if (/mimeo listening on/.test(String(chunk)) && !listening) {
        listening = true;
        proc.kill('SIGTERM');
      }
    };
    proc.stdout.on('data', onOut);
    proc.stderr.on('data', (chunk) => { stderr += chunk; onOut(chunk); });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr, listening });
    });
  });
}

test('a second server on the same data directory exits with a clear message', async () => {
  const r = await serveOnce(['--data', server.dataDir, '--port', '0']);
  assert.equal(r.listening, false, 'the second server must not start');
  assert.notEqual(r.code, 0);
  const lines = r.stderr.trim().split('\n').filter((l) => !/^=+|AddressSanitizer|LeakSanitizer/.test(l));
  assert.equal(lines.length, 1, `one line expected, got: ${r.stderr}`);
  assert.match(lines[0], /in use by another mimeo \(pid \d+\)/);
  // The first server goes on working.
  const res = await request(server.url, 'PUT', '/still-mine');
  assert.equal(res.status, 201);
});

test('a second server cannot listen on the port of a live one', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-interop-port-'));
  try {
    const r = await serveOnce(['--data', dir, '--port', String(server.port)]);
    assert.equal(r.listening, false, 'the second server must not share the port');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /cannot listen/);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});

test('the data directory is free again once the server stops', async () => {
  const dir = server.dataDir;
  await server.stop({ keepData: true });
  server = await startServer({ dataDir: dir });
  const res = await request(server.url, 'GET', '/still-mine');
  assert.equal(res.status, 200);
  await server.stop();
  await fs.rm(dir, { recursive: true, force: true });
  server = null;
});
