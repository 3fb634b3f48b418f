// The mesh with real processes: four nodes join through one seed and all see each other
// alive in GET /_mesh; a database created on one node appears on all and its deletion goes
// everywhere; kill -9 of a node makes it dead everywhere; a SIGTERM makes it left; a node with
// another secret never gets in; a node without a secret refuses to start; the killed node
// restarts (on another port) and is alive again with a higher incarnation.
// Timings are shortened with [mesh] keys so the suite runs in seconds.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startServer, serverBinary, repoRoot } from './lib/server.mjs';
import { request } from './lib/http.mjs';
import { waitFor } from './lib/util.mjs';

const FAST = [
  '--set', 'mesh.probe_interval_ms=300',
  '--set', 'mesh.probe_timeout_ms=150',
  '--set', 'mesh.gossip_interval_ms=100',
  '--set', 'mesh.suspicion_mult=3',
  '--set', 'mesh.pushpull_interval_ms=3000',
];

let dir;
let secretFile;
let otherSecretFile;
const nodes = {};

async function meshOf(server) {
  const res = await request(server.url, 'GET', '/_mesh');
  assert.equal(res.status, 200, res.text);
  return res.json;
}

function stateOf(view, name) {
  return view.members.find((m) => m.name === name);
}

async function waitState(observers, name, state, timeout = 30_000) {
  for (const o of observers) {
    await waitFor(async () => stateOf(await meshOf(nodes[o]), name)?.state === state, {
      timeout,
      message: `${o} sees ${name} ${state}`,
      describe: async () => (await meshOf(nodes[o])).members,
    });
  }
}

function startNode(name, extra = [], secret = secretFile) {
  return startServer({ args: ['--node-name', name, '--mesh-secret-file', secret, ...FAST, ...extra] });
}

before(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-mesh-'));
  secretFile = path.join(dir, 'secret');
  otherSecretFile = path.join(dir, 'other');
  await fs.writeFile(secretFile, 'the-mesh-test-secret-0123456789\n');
  await fs.writeFile(otherSecretFile, 'a-different-secret-9876543210\n');
  nodes.a = await startNode('a');
  for (const n of ['b', 'c', 'd']) nodes[n] = await startNode(n, ['--join', nodes.a.url]);
});

after(async () => {
  for (const s of Object.values(nodes)) await s.stop();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});

test('four nodes joined through one seed all see each other alive', async () => {
  for (const o of ['a', 'b', 'c', 'd']) {
    await waitFor(async () => {
      const v = await meshOf(nodes[o]);
      return v.name === o && ['a', 'b', 'c', 'd'].every((n) => stateOf(v, n)?.state === 'alive');
    }, { timeout: 30_000, message: `${o} sees all alive`, describe: () => meshOf(nodes[o]) });
  }
  const v = await meshOf(nodes.b);
  const a = stateOf(v, 'a');
  assert.equal(a.url, nodes.a.url);
  assert.equal(typeof a.incarnation, 'number');
  assert.equal(typeof a.last_heard_ms, 'number');
  assert.ok(a.last_heard_ms < 10_000);
});

test('a database created on one node is created on all; deleted on one, deleted on all', async () => {
  assert.equal((await request(nodes.c.url, 'PUT', '/meshed')).status, 201);
  for (const o of ['a', 'b', 'd']) {
    await waitFor(async () => (await request(nodes[o].url, 'GET', '/meshed')).status === 200,
      { timeout: 20_000, message: `meshed on ${o}` });
  }
  assert.equal((await request(nodes.b.url, 'DELETE', '/meshed')).status, 200);
  for (const o of ['a', 'c', 'd']) {
    await waitFor(async () => (await request(nodes[o].url, 'GET', '/meshed')).status === 404,
      { timeout: 20_000, message: `meshed gone from ${o}` });
  }
  const entry = (await meshOf(nodes.a)).databases.find((d) => d.name === 'meshed');
  assert.equal(entry.deleted, true);
  assert.equal(entry.version, 2);
});

test('a node with another secret cannot join', async () => {
  const evil = await startNode('evil', ['--join', nodes.a.url], otherSecretFile);
  try {
    await waitFor(async () => (await meshOf(nodes.a)).stats.bad_mac > 0,
      { timeout: 20_000, message: 'a rejected the outsider' });
    await new Promise((r) => setTimeout(r, 1500));
    for (const o of ['a', 'b', 'c', 'd']) assert.equal(stateOf(await meshOf(nodes[o]), 'evil'), undefined);
    const ev = await meshOf(evil);
    assert.deepEqual(ev.members.map((m) => m.name), ['evil']);
  } finally {
    await evil.stop();
  }
});

test('without a secret the mesh refuses to start', async () => {
  const data = await fs.mkdtemp(path.join(dir, 'nosecret-'));
  const proc = spawn(serverBinary(), ['serve', '--data', data, '--port', '0', '--join', nodes.a.url],
    { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout.on('data', (c) => { out += c; });
  proc.stderr.on('data', (c) => { err += c; });
  const code = await new Promise((resolve) => proc.on('exit', resolve));
  assert.equal(code, 1);
  assert.match(err, /secret/);
  assert.doesNotMatch(out, /listening/);
});

test('kill -9 makes a node dead everywhere; a restart brings it back', async () => {
  await nodes.d.kill9();
  await waitState(['a', 'b', 'c'], 'd', 'dead');
  await nodes.d.restart();      // same data, new port: a new URL under the same name
  await waitState(['a', 'b', 'c'], 'd', 'alive');
  const d = stateOf(await meshOf(nodes.a), 'd');
  assert.ok(d.incarnation > 0, 'the restarted node refuted its death with a higher incarnation');
  assert.equal(d.url, nodes.d.url);
});

test('SIGTERM announces that a node leaves: left, not dead', async () => {
  const res = await nodes.c.stop();
  assert.equal(res.code, 0);
  delete nodes.c;
  await waitState(['a', 'b', 'd'], 'c', 'left', 20_000);
});
