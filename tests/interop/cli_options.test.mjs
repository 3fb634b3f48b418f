// The command line: options parsed by getopt_long in any order, and numbers checked against
// their range, so that a mistyped number is a one-line error and exit status 2, never a
// silent 0 or a value cut to fit.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { serverBinary, repoRoot } from './lib/server.mjs';

function run(args) {
  const r = spawnSync(serverBinary(), args, { cwd: repoRoot, encoding: 'utf8', timeout: 20_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function assertUsageError(r, pattern) {
  assert.equal(r.code, 2, `exit status: ${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  assert.match(lines[0], pattern);
}

test('mimeo replicate refuses bad numbers with one line', () => {
  assertUsageError(run(['replicate', 'a', 'b', '--retries', 'x']), /--retries: 'x' is not/);
  assertUsageError(run(['replicate', 'a', 'b', '--retries=-1']), /--retries: '-1' is not/);
  assertUsageError(run(['replicate', 'a', 'b', '--checkpoint-interval', '12ms']),
    /--checkpoint-interval: '12ms' is not/);
  assertUsageError(run(['replicate', 'a', 'b', '--checkpoint-interval', '0']),
    /--checkpoint-interval: '0' is not/);
  assertUsageError(run(['replicate', 'a', 'b', '--max-response-size', '1']),
    /--max-response-size: '1' is not/);
});

test('mimeo replicate takes options before, between and after its operands', () => {
  assertUsageError(run(['replicate', '--bogus', 'a', 'b']), /unrecognized option '--bogus'/);
  assertUsageError(run(['replicate', 'a', 'b', 'c']), /too many arguments/);
  assertUsageError(run(['replicate', 'a']), /SOURCE and TARGET/);
  // Parsed fine (the replication itself then fails: bare names need --data).
  for (const args of [['--quiet', 'a', 'b'], ['a', '--quiet', 'b'], ['a', 'b', '--quiet']]) {
    const r = run(['replicate', ...args]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /local data directory/);
  }
  assert.equal(run(['replicate', '--help']).code, 0);
});

test('mimeo serve refuses numbers out of range, from flags and --set', () => {
  assertUsageError(run(['serve', '--port', '70000']), /port: 70000 is out of range/);
  assertUsageError(run(['serve', '--port=abc']), /port: 'abc' is not/);
  assertUsageError(run(['serve', '--port', ' 5']), /port: ' 5' is not/);
  assertUsageError(run(['serve', '--set', 'couchdb.max_json_depth=0']),
    /max_json_depth: 0 is out of range/);
  assertUsageError(run(['serve', '--set', 'replicator.max_response_size=10']),
    /max_response_size: 10 is out of range/);
  assertUsageError(run(['serve', '--bogus']), /unrecognized option '--bogus'/);
  assertUsageError(run(['serve', 'extra']), /unexpected argument 'extra'/);
  assertUsageError(run(['serve', '--port']), /requires an argument/);
});

test('mimeo answers --version, -V, --help and refuses unknown commands', () => {
  for (const a of ['--version', '-V', 'version']) {
    const r = run([a]);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^mimeo \d+\.\d+\.\d+ \(CouchDB API/);
  }
  assert.equal(run(['--help']).code, 0);
  assert.equal(run(['nosuch']).code, 2);
  assert.equal(run([]).code, 2);
});
