// The fault-injecting proxies of one node. Faults are rules per directed link (sender →
// receiver), so each message must be attributed to its sender and its receiver:
//
// - UDP (probes and gossip): the node advertises the URL of its proxy (--advertise), and the
//   mesh sends datagrams to the host and port of a member's URL, so every datagram for this
//   node reaches the relay on the proxy's port, which forwards it to the node's real port.
//   The node's UDP socket is bound to its own HTTP port, so a datagram's source port names
//   its sender (for a node still starting, whose HTTP port the harness does not know yet, the
//   owner of that port's socket is found in /proc/net/udp and /proc/PID/fd).
// - HTTP (push-pulls, and the replication that moves the data): each node runs with
//   http_proxy pointing at its own egress proxy here, which libcurl honours for every request
//   the node makes; the sender is the node the egress proxy belongs to, the receiver the node
//   whose advertised (or real) port the request's absolute URL names. The egress proxy
//   forwards the request to the receiver's real port. A TCP listener on the advertised port
//   also forwards anything that did not come through an egress proxy (it counts it; the
//   tests expect none from nodes).
//
// Rules: cut (datagrams dropped; requests answered by a reset connection; exchanges in flight
// torn down), drop (each datagram, and each request, lost with probability p), delay (each
// datagram and each request held d ms), block (a RegExp: the requests whose
// "METHOD /path" it matches are lost as under cut, the rest pass — e.g. only push-pulls).

import net from 'node:net';
import dgram from 'node:dgram';
import http from 'node:http';
import fs from 'node:fs';

/** The inode of the UDP socket bound to local port `port`, or null. */
export function udpInode(port) {
  for (const file of ['/proc/net/udp', '/proc/net/udp6']) {
    let text;
    try { text = fs.readFileSync(file, 'utf8'); } catch { continue; }
    for (const line of text.split('\n')) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || !f[1].includes(':')) continue;
      if (parseInt(f[1].split(':').at(-1), 16) === port) return f[9];
    }
  }
  return null;
}

/** Which of pids holds socket inode `inode`, or null. */
export function pidHolding(inode, pids) {
  const want = `socket:[${inode}]`;
  for (const pid of pids) {
    let fds;
    try { fds = fs.readdirSync(`/proc/${pid}/fd`); } catch { continue; }
    for (const fd of fds) {
      try {
        if (fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === want) return pid;
      } catch { /* closed meanwhile */ }
    }
  }
  return null;
}

const HOP_BY_HOP = new Set(['proxy-connection', 'proxy-authorization', 'connection', 'keep-alive',
  'transfer-encoding', 'upgrade', 'te', 'trailer']);

async function listenBoth() {
  for (let attempt = 0; attempt < 50; attempt++) {
    const server = net.createServer();
    await new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', resolve);
    });
    const port = server.address().port;
    const udp = dgram.createSocket('udp4');
    const ok = await new Promise((resolve) => {
      udp.once('error', () => resolve(false));
      udp.bind(port, '127.0.0.1', () => resolve(true));
    });
    if (ok) return { server, udp, port };
    server.close();
    udp.close();
  }
  throw new Error('no port free for both TCP and UDP');
}

export class NodeProxy {
  /**
   * @param {object} cluster  gives rule(src, dst) → {cut, drop, delay}, rng(),
   *                          nodeByUdpPort(port), nodeByPort(port)
   * @param {number} index    the node behind this proxy
   */
  constructor(cluster, index) {
    this.cluster = cluster;
    this.index = index;
    this.port = null;          // the advertised port (TCP and UDP)
    this.egressPort = null;    // this node's http_proxy
    this.target = null;        // the node's real port, once it runs
    this.exchanges = new Set(); // {dst, req, res, up} in flight through the egress proxy
    this.stats = { udpIn: 0, udpDropped: 0, httpOut: 0, httpDropped: 0, direct: 0 };
    this.resetPeaks();
    this.agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  }

  async listen() {
    const { server, udp, port } = await listenBoth();
    this.ingress = server;
    this.udp = udp;
    this.port = port;
    server.on('connection', (c) => this.onDirect(c));
    udp.on('message', (msg, rinfo) => this.onDatagram(msg, rinfo));
    udp.on('error', () => {});
    this.egress = http.createServer((req, res) => this.onRequest(req, res));
    this.egress.keepAliveTimeout = 60_000;
    // Every connection the node opens to another node arrives here (libcurl sends all of
    // them through http_proxy): the peak number open at once is the node's outgoing total.
    this.egress.on('connection', (sock) => {
      this.openConns++;
      this.peaks.conns = Math.max(this.peaks.conns, this.openConns);
      sock.on('close', () => { this.openConns--; });
    });
    await new Promise((resolve) => this.egress.listen(0, '127.0.0.1', resolve));
    this.egressPort = this.egress.address().port;
    return port;
  }

  /** Forgets the peaks: open connections, and requests in flight to each destination. */
  resetPeaks() {
    this.openConns ??= 0;
    this.peaks = { conns: this.openConns, inflight: {} };
  }

  url() { return `http://127.0.0.1:${this.port}`; }
  egressUrl() { return `http://127.0.0.1:${this.egressPort}`; }

  // ---- UDP ------------------------------------------------------------------------------
  onDatagram(msg, rinfo) {
    this.stats.udpIn++;
    if (!this.target) return;
    const src = this.cluster.nodeByUdpPort(rinfo.port);
    const rule = src == null ? {} : this.cluster.rule(src, this.index);
    if (rule.cut || (rule.drop && this.cluster.rng() < rule.drop)) {
      this.stats.udpDropped++;
      return;
    }
    const send = () => { if (this.target) this.udp.send(msg, this.target, '127.0.0.1'); };
    if (rule.delay) setTimeout(send, rule.delay); else send();
  }

  // ---- HTTP leaving this node -----------------------------------------------------------
  onRequest(req, res) {
    this.stats.httpOut++;
    let u;
    try { u = new URL(req.url); } catch {
      res.writeHead(400);
      res.end();
      return;
    }
    const dst = this.cluster.nodeByPort(Number(u.port));
    const targetPort = dst == null ? Number(u.port) : this.cluster.nodes[dst].proxy.target;
    const rule = dst == null ? {} : this.cluster.rule(this.index, dst);
    const lose = () => {
      this.stats.httpDropped++;
      req.socket.resetAndDestroy();
    };
    if (!targetPort || rule.cut || rule.block?.test(`${req.method} ${u.pathname}`) ||
        (rule.drop && this.cluster.rng() < rule.drop)) {
      lose();
      return;
    }
    const go = () => {
      if (dst != null && this.cluster.rule(this.index, dst).cut) { lose(); return; }
      const headers = {};
      for (const [k, v] of Object.entries(req.headers)) if (!HOP_BY_HOP.has(k)) headers[k] = v;
      const up = http.request({
        host: '127.0.0.1', port: targetPort, method: req.method, path: u.pathname + u.search,
        headers, agent: this.agent,
      });
      const ex = { dst, req, res, up };
      this.exchanges.add(ex);
      if (dst != null) {
        let n = 0;
        for (const e of this.exchanges) n += e.dst === dst;
        this.peaks.inflight[dst] = Math.max(this.peaks.inflight[dst] ?? 0, n);
      }
      const done = () => this.exchanges.delete(ex);
      up.on('response', (ur) => {
        const h = {};
        for (const [k, v] of Object.entries(ur.headers)) if (!HOP_BY_HOP.has(k)) h[k] = v;
        res.writeHead(ur.statusCode, h);
        ur.pipe(res);
        ur.on('end', done);
        ur.on('error', () => { done(); req.socket.destroy(); });
      });
      up.on('error', () => { done(); req.socket.destroy(); });
      res.on('close', () => { done(); up.destroy(); });
      req.pipe(up);
    };
    if (rule.delay) setTimeout(go, rule.delay); else go();
  }

  // ---- TCP that did not come through an egress proxy -----------------------------------
  onDirect(c) {
    this.stats.direct++;
    c.on('error', () => {});
    if (!this.target) { c.destroy(); return; }
    const b = net.connect(this.target, '127.0.0.1');
    b.on('error', () => c.destroy());
    c.pipe(b);
    b.pipe(c);
    c.on('close', () => b.destroy());
    b.on('close', () => c.destroy());
  }

  /** Tears down the exchanges in flight from this node that the current rules cut. */
  enforce() {
    for (const ex of this.exchanges) {
      if (ex.dst != null && this.cluster.rule(this.index, ex.dst).cut) {
        ex.up.destroy();
        ex.req.socket.destroy();
        this.exchanges.delete(ex);
      }
    }
  }

  async close() {
    for (const ex of this.exchanges) {
      ex.up.destroy();
      ex.req.socket.destroy();
    }
    this.exchanges.clear();
    this.agent.destroy();
    this.egress.closeAllConnections?.();
    await new Promise((r) => this.egress.close(r));
    await new Promise((r) => this.ingress.close(r));
    this.udp.close();
  }
}
