// A mesh of real `mimeo serve` processes on loopback for the cluster tests: each node has its
// own data folder and fault-injecting proxies (proxy.mjs): it advertises its UDP relay's URL
// (--advertise), so every datagram for it crosses the relay, and it sends every HTTP request
// through its own egress proxy (http_proxy), so every message between two nodes is seen by
// the harness with its sender and receiver. The test's own requests go straight to a node's
// real port.
//
// Faults are rules per directed link: partition([[0,1],[2,3]]) cuts every link between the
// groups, isolate(i) cuts i from everyone, setLink(src, dst, {drop, delay, cut}) sets one
// link, heal() clears them all. Random choices come from one seeded generator: the seed is
// printed (CLUSTER_SEED=n) and a failing run is rerun with that variable set.

import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startServer } from '../../interop/lib/server.mjs';
import { request } from '../../interop/lib/http.mjs';
import { waitFor } from '../../interop/lib/util.mjs';
import { NodeProxy, pidHolding, udpInode } from './proxy.mjs';

/** mulberry32: a small seeded generator, enough for fault rolls and random choices. */
export function makeRng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The run's seed: $CLUSTER_SEED, or a fresh one; printed either way. */
export function clusterSeed(label) {
  const seed = process.env.CLUSTER_SEED ? Number(process.env.CLUSTER_SEED)
    : Math.floor(Math.random() * 2 ** 31);
  console.log(`# ${label}: CLUSTER_SEED=${seed} (rerun with CLUSTER_SEED=${seed} node --test ...)`);
  return seed;
}

/** Mesh timings shortened so that detection and healing take seconds, not minutes. */
export const FAST_MESH = {
  probe_interval_ms: 200,
  probe_timeout_ms: 100,
  gossip_interval_ms: 100,
  suspicion_mult: 3,
  pushpull_interval_ms: 2000,
};

export class Cluster {
  /**
   * @param {{seed: number, mesh?: object, args?: string[]}} opts
   *   mesh: [mesh] keys (default FAST_MESH); args: more flags for every node.
   */
  constructor(opts) {
    this.rng = makeRng(opts.seed);
    this.meshKeys = { ...FAST_MESH, ...(opts.mesh ?? {}) };
    this.extraArgs = opts.args ?? [];
    this.nodes = [];          // {name, server, proxy, dataDir}
    this.links = new Map();   // "src>dst" → {cut, drop, delay}
    this.pidNode = new Map(); // "pid:starttime" → node index, or null: a child, not a node
    this.udpPortNode = new Map();
  }

  async init() {
    this.dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'mimeo-cluster-'));
    this.secret = path.join(this.dir, 'mesh.secret');
    await fsp.writeFile(this.secret, 'cluster-test-mesh-secret-0123456789\n');
    return this;
  }

  // ---- the proxies' questions ----------------------------------------------------------
  rule(src, dst) { return this.links.get(`${src}>${dst}`) ?? {}; }
  /** The node processes: this process's children that run `serve`, including a node still
   * starting (its pid is not in node.server yet), each mapped to its node by --node-name.
   * Keyed by pid and start time: pids wrap on a busy machine. */
  pids() {
    const out = [];
    this.pidNow = new Map();
    for (const e of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(e)) continue;
      const pid = Number(e);
      let stat;
      try { stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8'); } catch { continue; }
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(f[1]) !== process.pid) continue;
      const key = `${pid}:${f[19]}`;
      if (!this.pidNode.has(key)) {
        let argv;
        try { argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0'); } catch { continue; }
        const k = argv.indexOf('--node-name');
        if (k < 0) continue;   // not exec'd yet, or not a node: ask again next time
        const i = this.nodes.findIndex((n) => n.name === argv[k + 1]);
        this.pidNode.set(key, i < 0 ? null : i);
      }
      const node = this.pidNode.get(key);
      if (node == null) continue;
      this.pidNow.set(pid, node);
      out.push(pid);
    }
    return out;
  }
  /** The node whose advertised or real port this is, or null. */
  nodeByPort(port) {
    const i = this.nodes.findIndex((n) => n.proxy?.port === port ||
      (n.server?.running() && n.server.port === port));
    return i < 0 ? null : i;
  }
  nodeByPid(pid) { return this.pidNow?.get(pid) ?? null; }
  /** The node whose UDP socket has this port: its HTTP port once known, else (a node still
   * starting) the owner of the port's socket in /proc/net/udp. */
  nodeByUdpPort(port) {
    const i = this.nodes.findIndex((n) => n.server?.running() && n.server.port === port);
    if (i >= 0) return i;
    if (this.udpPortNode.has(port)) return this.udpPortNode.get(port);
    const inode = udpInode(port);
    const pid = inode ? pidHolding(inode, this.pids()) : null;
    const node = pid == null ? null : this.nodeByPid(pid);
    if (node != null) this.udpPortNode.set(port, node);
    return node;
  }

  // ---- nodes ------------------------------------------------------------------------------
  /** Adds and starts a node; joins through node `seed` (an index) unless it is the first. */
  async addNode({ seed = this.nodes.length ? 0 : null, name } = {}) {
    const index = this.nodes.length;
    const node = { index, name: name ?? `n${index}`, server: null, proxy: null, dataDir: null };
    this.nodes.push(node);
    node.proxy = new NodeProxy(this, index);
    await node.proxy.listen();
    node.dataDir = path.join(this.dir, node.name);
    await fsp.mkdir(node.dataDir, { recursive: true });
    node.seed = seed;
    await this.launch(node);
    return node;
  }

  args(node) {
    const a = ['--node-name', node.name, '--mesh-secret-file', this.secret,
      '--advertise', node.proxy.url(), ...this.extraArgs];
    if (node.seed != null) a.push('--join', this.nodes[node.seed].proxy.url());
    for (const [k, v] of Object.entries(this.meshKeys)) a.push('--set', `mesh.${k}=${v}`);
    return a;
  }

  async launch(node) {
    this.udpPortNode.clear();   // ports are reused across restarts
    // libcurl sends every request of the node through its egress proxy (proxy.mjs).
    const env = { http_proxy: node.proxy.egressUrl(), no_proxy: '', NO_PROXY: '' };
    node.server = await startServer({ dataDir: node.dataDir, args: this.args(node), env });
    node.proxy.target = node.server.port;
  }

  /** kill -9; the data folder stays. */
  async kill9(i) {
    const node = this.nodes[i];
    node.proxy.target = null;
    await node.server.kill9();
  }

  /** SIGTERM: the node announces it leaves and exits. */
  async stop(i) {
    const node = this.nodes[i];
    const res = await node.server.stop({ keepData: true });
    node.proxy.target = null;
    return res;
  }

  /** Starts a stopped or killed node again on its data folder (a new real port, the same
   * advertised URL). */
  async restart(i) {
    const node = this.nodes[i];
    if (node.server.running()) await this.kill9(i);
    await this.launch(node);
  }

  running() { return this.nodes.filter((n) => n.server?.running()).map((n) => n.index); }
  url(i) { return this.nodes[i].server.url; }

  // ---- faults -----------------------------------------------------------------------------
  setLink(src, dst, rule) {
    this.links.set(`${src}>${dst}`, { ...this.rule(src, dst), ...rule });
    this.nodes[src].proxy.enforce();
  }

  /** Cuts every link between different groups (both directions). */
  partition(groups) {
    const group = new Map();
    groups.forEach((g, gi) => g.forEach((i) => group.set(i, gi)));
    for (const a of group.keys()) {
      for (const b of group.keys()) {
        if (a !== b && group.get(a) !== group.get(b)) this.links.set(`${a}>${b}`, { ...this.rule(a, b), cut: true });
      }
    }
    for (const n of this.nodes) n.proxy.enforce();
  }

  isolate(i) {
    const others = this.nodes.map((n) => n.index).filter((j) => j !== i);
    this.partition([[i], others]);
  }

  /** Drop and delay on every link (cuts kept). */
  degrade({ drop = 0, delay = 0 }) {
    for (const a of this.nodes) {
      for (const b of this.nodes) {
        if (a !== b) this.links.set(`${a.index}>${b.index}`, { ...this.rule(a.index, b.index), drop, delay });
      }
    }
  }

  heal() { this.links.clear(); }

  // ---- views ------------------------------------------------------------------------------
  async mesh(i) {
    const res = await request(this.url(i), 'GET', '/_mesh');
    if (res.status !== 200) throw new Error(`GET /_mesh on ${this.nodes[i].name}: ${res.status} ${res.text}`);
    return res.json;
  }

  /** Waits until every observer sees member `name` in `state`. */
  async waitState(observers, name, state, timeout = 30_000) {
    for (const o of observers) {
      await waitFor(async () => (await this.mesh(o)).members.find((m) => m.name === name)?.state === state, {
        timeout,
        message: `${this.nodes[o].name} sees ${name} ${state}`,
        describe: async () => (await this.mesh(o)).members.map((m) => `${m.name}:${m.state}:${m.incarnation}`),
      });
    }
  }

  /** Waits until every running node sees exactly `expect` ({name: state}) for those names. */
  async waitView(expect, timeout = 30_000, observers = this.running()) {
    for (const o of observers) {
      await waitFor(async () => {
        const v = await this.mesh(o);
        return Object.entries(expect).every(([n, s]) => v.members.find((m) => m.name === n)?.state === s);
      }, {
        timeout,
        message: `${this.nodes[o].name} sees ${JSON.stringify(expect)}`,
        describe: async () => (await this.mesh(o)).members.map((m) => `${m.name}:${m.state}:${m.incarnation}`),
      });
    }
  }

  async close() {
    for (const n of this.nodes) {
      if (n.server) await n.server.stop({ keepData: true });
      if (n.proxy) await n.proxy.close();
    }
    if (this.dir && !process.env.CLUSTER_KEEP) await fsp.rm(this.dir, { recursive: true, force: true });
  }
}
