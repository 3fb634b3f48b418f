// The fault-injecting proxy in front of one node: a TCP proxy (HTTP: push-pulls, replication)
// and a UDP relay (probes and gossip) on the same port number, which is the port of the URL
// the node advertises (--advertise), so every message another node sends it passes here.
//
// Who is sending. Faults apply per link (sender → this node), so the proxy must know the
// sender of each datagram and connection. A node's UDP socket is bound to its own HTTP port,
// so a datagram's source port names its sender. A TCP connection comes from an ephemeral
// port: the proxy finds the socket with that port in /proc/net/tcp and the node process
// holding its inode in /proc/PID/fd (Linux; once per connection); a node still starting, whose
// HTTP port is not known yet, is found the same way from /proc/net/udp. Traffic from anything
// else (the test's own clients) passes unharmed.
//
// Faults, per link, from the cluster's rule(src, dst): cut (everything dropped, open
// connections reset), drop (each datagram, and each new connection, lost with probability p),
// delay (each datagram and each chunk of a connection held d ms).

import net from 'node:net';
import dgram from 'node:dgram';
import fs from 'node:fs';

/** The inode of the TCP socket whose local port is `port` and remote port `peer`, or null. */
function tcpInode(port, peer) {
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text;
    try { text = fs.readFileSync(file, 'utf8'); } catch { continue; }
    for (const line of text.split('\n')) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || !f[1].includes(':')) continue;
      const lp = parseInt(f[1].split(':').at(-1), 16);
      const rp = parseInt(f[2].split(':').at(-1), 16);
      if (lp === port && rp === peer) return f[9];
    }
  }
  return null;
}

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

export class NodeProxy {
  /**
   * @param {object} cluster  gives rule(src, dst) → {cut, drop, delay}, rng(), nodeByPid(pid),
   *                          nodeByUdpPort(port)
   * @param {number} index    the node behind this proxy
   */
  constructor(cluster, index) {
    this.cluster = cluster;
    this.index = index;
    this.port = null;        // the advertised port (TCP and UDP)
    this.target = null;      // the node's real port, once it runs
    this.conns = new Set();  // {src, a, b}
    this.stats = { udpIn: 0, udpDropped: 0, tcpIn: 0, tcpDropped: 0, unknownTcp: 0 };
  }

  /** Binds TCP and UDP on one free port number. */
  async listen() {
    for (let attempt = 0; attempt < 50; attempt++) {
      const server = net.createServer((c) => this.onConnection(c));
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
      if (!ok) {
        server.close();
        udp.close();
        continue;
      }
      udp.on('message', (msg, rinfo) => this.onDatagram(msg, rinfo));
      udp.on('error', () => {});
      this.server = server;
      this.udp = udp;
      this.port = port;
      return port;
    }
    throw new Error('no port free for both TCP and UDP');
  }

  url() { return `http://127.0.0.1:${this.port}`; }

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

  onConnection(c) {
    this.stats.tcpIn++;
    c.on('error', () => {});
    c.pause();
    const inode = tcpInode(c.remotePort, this.port);
    const pid = inode ? pidHolding(inode, this.cluster.pids()) : null;
    const src = pid == null ? null : this.cluster.nodeByPid(pid);
    if (src == null) { this.stats.unknownTcp++; if (process.env.PROXY_DEBUG) console.log(`# unknown tcp to ${this.index}: port ${c.remotePort} inode ${inode} pid ${pid}`); }
    const rule = src == null ? {} : this.cluster.rule(src, this.index);
    if (!this.target || rule.cut || (rule.drop && this.cluster.rng() < rule.drop)) {
      this.stats.tcpDropped++;
      c.resetAndDestroy();
      return;
    }
    const b = net.connect(this.target, '127.0.0.1');
    b.on('error', () => {});
    const conn = { src, a: c, b };
    this.conns.add(conn);
    const forward = (from, to) => {
      from.on('data', (chunk) => {
        const d = src == null ? 0 : this.cluster.rule(src, this.index).delay;
        if (d) {
          from.pause();
          setTimeout(() => { to.write(chunk); from.resume(); }, d);
        } else if (!to.write(chunk)) {
          from.pause();
          to.once('drain', () => from.resume());
        }
      });
      from.on('end', () => to.end());
      from.on('close', () => { to.destroy(); this.conns.delete(conn); });
    };
    forward(c, b);
    forward(b, c);
    c.resume();
  }

  /** Resets the open connections the current rules cut. */
  enforce() {
    for (const conn of this.conns) {
      if (conn.src != null && this.cluster.rule(conn.src, this.index).cut) {
        conn.a.resetAndDestroy();
        conn.b.destroy();
        this.conns.delete(conn);
      }
    }
  }

  async close() {
    for (const conn of this.conns) {
      conn.a.destroy();
      conn.b.destroy();
    }
    this.conns.clear();
    await new Promise((r) => this.server.close(r));
    this.udp.close();
  }
}
