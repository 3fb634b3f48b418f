// The embedding example (examples/embed.c, built as build/asan/example): a small program that
// opens a database through libmimeo, writes, reads and follows the changes feed. It takes a data
// folder as its only argument and exits 0 on success.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { repoRoot } from './lib/server.mjs';

const DEADLINE_MS = 60_000;

function run(bin, args) {
  return new Promise((resolve, reject) => {
    const proc = spawn(bin, args, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (d) => { stdout += d; });
    proc.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => proc.kill('SIGKILL'), DEADLINE_MS);
    proc.on('error', (err) => { clearTimeout(timer); reject(err); });
    proc.on('exit', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout, stderr }); });
  });
}

test('the embedding example runs against a fresh data folder and exits 0', async () => {
  const bin = path.resolve(repoRoot, process.env.MIMEO_EXAMPLE || 'build/asan/example');
  assert.ok(existsSync(bin), `${bin} does not exist (build it with \`make ${path.relative(repoRoot, bin)}\`)`);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-example-'));
  try {
    const first = await run(bin, [dir]);
    assert.equal(first.signal, null, `killed by ${first.signal}; stderr:\n${first.stderr}`);
    assert.equal(first.code, 0, `exit code ${first.code}; stderr:\n${first.stderr}`);
    assert.ok(first.stdout.trim().length > 0, 'prints what it did');
    assert.doesNotMatch(first.stderr, /Sanitizer|runtime error:/);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
});
