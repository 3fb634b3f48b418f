// Failure detection of the mesh against Serf, same machine, same run, same probe settings,
// and the idle cost of a mimeo mesh.
//
//   node bench/mesh_detect.mjs [--sizes 4,8,16,32] [--trials 3] [--idle 32] [--idle-secs 30]
//
// Detection: N `mimeo serve` processes (build/mimeo, or $MIMEO_BIN) join through one seed
// with the mesh's default timings (memberlist's LAN profile: probe 1 s, probe timeout 500 ms,
// 3 indirect probes, gossip 200 ms, suspicion multiplier 4); once all see all alive, one
// random non-seed node is killed with SIGKILL and every other node's GET /_mesh is polled
// every 50 ms until it says `dead`. The figure is the time until the last node says so (the
// first is printed too). The victim is restarted and rejoins before the next trial. Then the
// same with N `serf agent` processes (Serf's default LAN profile: the same memberlist
// timings), each recording its `member-failed` event with a timestamp through an event
// handler, so Serf's figure has no polling delay at all.
//
// Idle cost: --idle N mimeo nodes, all alive, nothing written: mesh bytes sent and received
// per node per second (from the nodes' own counters, GET /_mesh stats) and CPU per node
// (utime + stime from /proc/PID/stat) over --idle-secs; and the CPU of N idle Serf agents.
//
// Prints a Markdown table; raw JSON lines go to build/bench/mesh_detect.jsonl.

import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BIN = path.resolve(ROOT, process.env.MIMEO_BIN || 'build/mimeo');
const OUT = path.join(ROOT, 'build/bench');

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
}
const SIZES = arg('sizes', '4,8,16,32').split(',').map(Number);
const TRIALS = Number(arg('trials', '3'));
const IDLE_N = Number(arg('idle', '32'));
const IDLE_SECS = Number(arg('idle-secs', '30'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.error('mesh-bench:', ...a);

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'mimeo-meshbench-'));
const procs = new Set();
function cleanup() {
  for (const p of procs) { try { p.kill('SIGKILL'); } catch {} }
  fs.rmSync(TMP, { recursive: true, force: true });
}
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

function get(url, timeout = 5000) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false, timeout }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => {
        try { resolve(JSON.parse(body)); } catch (e) { reject(e); }
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

function cpuTicks(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]);   // utime, stime (fields 14 and 15)
  } catch { return 0; }
}
const HZ = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;

// ---- mimeo ----------------------------------------------------------------------------------
const SECRET = path.join(TMP, 'mesh.secret');
fs.writeFileSync(SECRET, 'mesh-benchmark-secret-0123456789abcdef\n');

function startMimeo(name, dataDir, join) {
  return new Promise((resolve, reject) => {
    const args = ['serve', '--data', dataDir, '--bind', '127.0.0.1', '--port', '0',
      '--node-name', name, '--mesh-secret-file', SECRET];
    if (join) args.push('--join', join);
    const p = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    procs.add(p);
    p.on('exit', () => procs.delete(p));
    p.stderr.resume();
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${name}: no listening line`)), 30_000);
    p.stdout.setEncoding('utf8');
    p.stdout.on('data', (c) => {
      out += c;
      const m = out.match(/mimeo listening on (http:\/\/\S+)/);
      if (m) {
        clearTimeout(timer);
        p.stdout.resume();
        resolve({ name, url: m[1], proc: p, dataDir });
      }
    });
    p.on('exit', (code) => { clearTimeout(timer); reject(new Error(`${name} exited (${code})`)); });
  });
}

async function mimeoCluster(n) {
  const nodes = [];
  for (let i = 0; i < n; i++) {
    const dir = path.join(TMP, `m${n}-${i}`);
    nodes.push(await startMimeo(`m${i}`, dir, i ? nodes[0].url : null));
  }
  await waitAllAlive(nodes, n, 120_000);
  return nodes;
}

async function aliveCount(node) {
  const v = await get(`${node.url}/_mesh`);
  return v.members.filter((m) => m.state === 'alive').length;
}

async function waitAllAlive(nodes, n, timeout) {
  const deadline = Date.now() + timeout;
  for (const node of nodes) {
    for (;;) {
      try { if (await aliveCount(node) === n) break; } catch {}
      if (Date.now() > deadline) throw new Error(`${node.name} does not see ${n} alive`);
      await sleep(200);
    }
  }
}

async function stopAll(list) {
  for (const x of list) {
    if (x.proc.exitCode === null && x.proc.signalCode === null) {
      x.proc.kill('SIGKILL');
      await new Promise((r) => x.proc.once('exit', r));
    }
  }
}

async function mimeoTrial(nodes, n) {
  const vi = 1 + Math.floor(Math.random() * (n - 1));
  const victim = nodes[vi];
  const others = nodes.filter((x) => x !== victim);
  victim.proc.kill('SIGKILL');
  const t0 = Date.now();
  await new Promise((r) => victim.proc.once('exit', r));
  const seen = new Map();
  while (seen.size < others.length && Date.now() - t0 < 120_000) {
    await Promise.all(others.filter((o) => !seen.has(o.name)).map(async (o) => {
      try {
        const v = await get(`${o.url}/_mesh`, 2000);
        if (v.members.find((m) => m.name === victim.name)?.state === 'dead') seen.set(o.name, Date.now() - t0);
      } catch {}
    }));
    await sleep(50);
  }
  const times = [...seen.values()];
  // Back for the next trial: the same name and data, a new port.
  nodes[vi] = await startMimeo(victim.name, victim.dataDir, nodes[0].url);
  await waitAllAlive(nodes, n, 120_000);
  return { complete: seen.size === others.length, first: Math.min(...times), last: Math.max(...times) };
}

// ---- serf -----------------------------------------------------------------------------------
const SERF_KEY = execFileSync('serf', ['keygen']).toString().trim();

async function startSerf(name, join, logFile) {
  const bind = await freePort();
  const rpc = await freePort();
  const handler = path.join(TMP, 'serf-handler.sh');
  if (!fs.existsSync(handler)) {
    fs.writeFileSync(handler, '#!/bin/sh\nwhile read line; do echo "$SERF_SELF_NAME $(date +%s%N) $line" >> "$SERF_BENCH_LOG"; done\n');
    fs.chmodSync(handler, 0o755);
  }
  const args = ['agent', `-bind=127.0.0.1:${bind}`, `-rpc-addr=127.0.0.1:${rpc}`, `-node=${name}`,
    `-encrypt=${SERF_KEY}`, '-log-level=err', `-event-handler=member-failed=${handler}`];
  if (join) args.push(`-join=${join}`);
  const p = spawn('serf', args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, SERF_BENCH_LOG: logFile } });
  procs.add(p);
  p.on('exit', () => procs.delete(p));
  p.stderr.resume();
  return { name, bind: `127.0.0.1:${bind}`, rpc: `127.0.0.1:${rpc}`, proc: p };
}

function serfAlive(agent) {
  return new Promise((resolve) => {
    const p = spawn('serf', ['members', `-rpc-addr=${agent.rpc}`, '-status=alive', '-format=json'],
      { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    p.stdout.on('data', (c) => { out += c; });
    p.on('exit', () => {
      try { resolve(JSON.parse(out).members.length); } catch { resolve(-1); }
    });
  });
}

async function waitSerfAlive(agents, n, timeout) {
  const deadline = Date.now() + timeout;
  for (const a of agents) {
    while ((await serfAlive(a)) !== n) {
      if (Date.now() > deadline) throw new Error(`serf ${a.name} does not see ${n} alive`);
      await sleep(300);
    }
  }
}

async function serfCluster(n, logFile) {
  const agents = [];
  for (let i = 0; i < n; i++) {
    agents.push(await startSerf(`s${i}`, i ? agents[0].bind : null, logFile));
    if (i === 0) await sleep(300);
  }
  await waitSerfAlive(agents, n, 120_000);
  return agents;
}

async function serfTrial(agents, n, logFile) {
  const vi = 1 + Math.floor(Math.random() * (n - 1));
  const victim = agents[vi];
  fs.writeFileSync(logFile, '');
  victim.proc.kill('SIGKILL');
  const t0 = Date.now();
  await new Promise((r) => victim.proc.once('exit', r));
  const seen = new Map();
  while (seen.size < n - 1 && Date.now() - t0 < 120_000) {
    await sleep(100);
    for (const line of fs.readFileSync(logFile, 'utf8').split('\n')) {
      const f = line.split(/\s+/);
      if (f.length >= 3 && f[2] === victim.name && !seen.has(f[0])) {
        seen.set(f[0], Math.round(Number(f[1]) / 1e6) - t0);
      }
    }
  }
  const times = [...seen.values()];
  agents[vi] = await startSerf(victim.name, agents[0].bind, logFile);
  await waitSerfAlive(agents, n, 120_000);
  return { complete: seen.size === n - 1, first: Math.min(...times), last: Math.max(...times) };
}

// ---- idle -----------------------------------------------------------------------------------
async function idleMimeo(n) {
  const nodes = await mimeoCluster(n);
  await sleep(5000);   // past the join's burst
  const stats0 = await Promise.all(nodes.map((x) => get(`${x.url}/_mesh`).then((v) => v.stats)));
  const cpu0 = nodes.map((x) => cpuTicks(x.proc.pid));
  const t0 = Date.now();
  await sleep(IDLE_SECS * 1000);
  const stats1 = await Promise.all(nodes.map((x) => get(`${x.url}/_mesh`).then((v) => v.stats)));
  const cpu1 = nodes.map((x) => cpuTicks(x.proc.pid));
  const secs = (Date.now() - t0) / 1000;
  const sent = stats1.map((s, i) => (s.bytes_sent - stats0[i].bytes_sent) / secs);
  const recv = stats1.map((s, i) => (s.bytes_recv - stats0[i].bytes_recv) / secs);
  const cpu = cpu1.map((c, i) => (c - cpu0[i]) / HZ / secs * 100);
  await stopAll(nodes);
  const mean = (a) => a.reduce((x, y) => x + y, 0) / a.length;
  return { n, secs, sent_Bps: mean(sent), sent_max_Bps: Math.max(...sent), recv_Bps: mean(recv),
    cpu_pct: mean(cpu), cpu_max_pct: Math.max(...cpu) };
}

async function idleSerf(n) {
  const logFile = path.join(TMP, 'serf-idle.log');
  const agents = await serfCluster(n, logFile);
  await sleep(5000);
  const cpu0 = agents.map((a) => cpuTicks(a.proc.pid));
  const t0 = Date.now();
  await sleep(IDLE_SECS * 1000);
  const cpu1 = agents.map((a) => cpuTicks(a.proc.pid));
  const secs = (Date.now() - t0) / 1000;
  const cpu = cpu1.map((c, i) => (c - cpu0[i]) / HZ / secs * 100);
  await stopAll(agents);
  return { n, secs, cpu_pct: cpu.reduce((x, y) => x + y, 0) / n, cpu_max_pct: Math.max(...cpu) };
}

// ---- the run --------------------------------------------------------------------------------
function median(a) {
  const s = [...a].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}
const fmt = (ms) => (Number.isFinite(ms) ? `${(ms / 1000).toFixed(1)} s` : 'n/a');

async function main() {
  if (!fs.existsSync(BIN)) throw new Error(`${BIN} is missing: make build/mimeo`);
  fs.mkdirSync(OUT, { recursive: true });
  const jsonl = path.join(OUT, 'mesh_detect.jsonl');
  fs.writeFileSync(jsonl, '');
  const rows = [];
  for (const n of SIZES) {
    for (const system of ['mimeo', 'serf']) {
      log(`${system} N=${n}: starting`);
      const logFile = path.join(TMP, `serf-${n}.log`);
      const nodes = system === 'mimeo' ? await mimeoCluster(n) : await serfCluster(n, logFile);
      const trials = [];
      for (let t = 0; t < TRIALS; t++) {
        const r = system === 'mimeo' ? await mimeoTrial(nodes, n) : await serfTrial(nodes, n, logFile);
        log(`${system} N=${n} trial ${t + 1}: first ${fmt(r.first)}, all ${fmt(r.last)}${r.complete ? '' : ' (incomplete)'}`);
        trials.push(r);
        fs.appendFileSync(jsonl, JSON.stringify({ kind: 'detect', system, n, trial: t + 1, ...r }) + '\n');
      }
      await stopAll(nodes);
      rows.push({ system, n, trials });
    }
  }
  const idle = IDLE_N > 0 ? [await idleMimeo(IDLE_N), await idleSerf(IDLE_N)] : [];
  for (const r of idle) fs.appendFileSync(jsonl, JSON.stringify({ kind: 'idle', ...r }) + '\n');

  const lines = [];
  lines.push(`Failure detection (kill -9 → \`dead\`/\`failed\` on every other node), ${TRIALS} trials each, LAN timings (probe 1 s):`);
  lines.push('');
  lines.push('| N | mimeo median (min–max) | mimeo first node, median | Serf median (min–max) | Serf first node, median |');
  lines.push('| --- | --- | --- | --- | --- |');
  for (const n of SIZES) {
    const m = rows.find((r) => r.system === 'mimeo' && r.n === n).trials;
    const s = rows.find((r) => r.system === 'serf' && r.n === n).trials;
    const cell = (t) => `${fmt(median(t.map((x) => x.last)))} (${fmt(Math.min(...t.map((x) => x.last)))}–${fmt(Math.max(...t.map((x) => x.last)))})${t.every((x) => x.complete) ? '' : ' incomplete'}`;
    lines.push(`| ${n} | ${cell(m)} | ${fmt(median(m.map((x) => x.first)))} | ${cell(s)} | ${fmt(median(s.map((x) => x.first)))} |`);
  }
  if (idle.length) {
    const [mi, si] = idle;
    lines.push('');
    lines.push(`Idle cost per node, N = ${IDLE_N}, nothing written, over ${mi.secs.toFixed(0)} s:`);
    lines.push('');
    lines.push('| | mesh bytes sent/s (mean, max) | received/s (mean) | CPU (mean, max) |');
    lines.push('| --- | --- | --- | --- |');
    lines.push(`| mimeo | ${mi.sent_Bps.toFixed(0)} B/s, ${mi.sent_max_Bps.toFixed(0)} B/s | ${mi.recv_Bps.toFixed(0)} B/s | ${mi.cpu_pct.toFixed(2)} %, ${mi.cpu_max_pct.toFixed(2)} % |`);
    lines.push(`| Serf | (no counters) | | ${si.cpu_pct.toFixed(2)} %, ${si.cpu_max_pct.toFixed(2)} % |`);
  }
  console.log(lines.join('\n'));
  fs.writeFileSync(path.join(OUT, 'mesh_detect.md'), lines.join('\n') + '\n');
}

main().then(() => process.exit(0), (err) => {
  console.error('mesh-bench: failed:', err.stack ?? err);
  process.exit(1);
});
