// Many meshed databases over few connections: 4 nodes share 100 meshed databases (300
// (database, peer) pairs per node), a burst writes one document to every database on random
// nodes, and the proxies record the peaks: connections a node holds open to the others at once
// (every one crosses its egress proxy) and requests in flight from one node to one peer. Both
// stay bounded by the replication pool (replication_workers, at most half of them with one
// peer) plus the summary and push-pull channels, not by databases × peers; every write reaches
// every node.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request } from '../interop/lib/http.mjs';
import { waitFor } from '../interop/lib/util.mjs';
import { Cluster, clusterSeed } from './lib/cluster.mjs';

const N = 4;
const DBS = 100;
const WORKERS = 4;
let c;
let rng;

before(async () => {
  const seed = clusterSeed('scale');
  c = await new Cluster({ seed, mesh: { anti_entropy_interval_ms: 2000, replication_workers: WORKERS } }).init();
  rng = c.rng;
  for (let i = 0; i < N; i++) await c.addNode();
  await c.waitView(Object.fromEntries(c.nodes.map((n) => [n.name, 'alive'])));
});

after(async () => {
  if (c) await c.close();
});

async function inParallel(items, width, fn) {
  const queue = [...items];
  await Promise.all(Array.from({ length: width }, async () => {
    for (let x; (x = queue.shift()) !== undefined;) await fn(x);
  }));
}

test(`${DBS} databases, a write to each: bounded connections per node and per peer`, async () => {
  const names = Array.from({ length: DBS }, (_, i) => `s${String(i).padStart(3, '0')}`);
  await inParallel(names, 8, async (db) => {
    const r = await request(c.url(names.indexOf(db) % N), 'PUT', `/${db}`);
    assert.equal(r.status, 201, r.text);
  });
  for (const i of c.running()) {
    await waitFor(async () => (await request(c.url(i), 'GET', '/_all_dbs')).json
      .filter((d) => d[0] === 's').length === DBS, { timeout: 60_000, message: `${DBS} dbs on ${c.nodes[i].name}` });
  }
  for (const n of c.nodes) n.proxy.resetPeaks();
  const t0 = Date.now();
  await inParallel(names, 8, async (db) => {
    const on = Math.floor(rng() * N);
    const r = await request(c.url(on), 'PUT', `/${db}/doc`, { body: { on } });
    assert.equal(r.status, 201, r.text);
  });
  for (const i of c.running()) {
    let have = 0;
    await waitFor(async () => {
      have = 0;
      await inParallel(names, 8, async (db) => {
        const ok = (await request(c.url(i), 'GET', `/${db}/doc`)).status === 200;
        have += ok;             // after the await: `have += await …` would read it before
      });
      return have === DBS;
    }, { timeout: 120_000, interval: 500, message: `every write on ${c.nodes[i].name}`,
      describe: async () => ({ have, replication: (await c.mesh(i)).replication }) });
  }
  const peaks = c.nodes.map((n) => ({ name: n.name, conns: n.proxy.peaks.conns,
    inflight: Object.fromEntries(Object.entries(n.proxy.peaks.inflight).map(([d, k]) => [c.nodes[d].name, k])) }));
  console.log(`# ${DBS} writes everywhere in ${Date.now() - t0} ms; peaks: ${JSON.stringify(peaks)}`);
  // Per peer: at most half of the workers replicate with it, plus one summary request and
  // one push-pull. Per node: every worker's connection, the summaries' and the push-pull
  // sender's kept-alive ones (up to 5), and a little slack for connections closing as new
  // ones open; either way a small constant, against 300 (database, peer) pairs.
  const perPeer = WORKERS / 2 + 2;
  const perNode = WORKERS + (N - 1) + 5 + 2;
  for (const p of peaks) {
    assert.ok(p.conns <= perNode, `${p.name} held ${p.conns} connections at once (bound ${perNode})`);
    for (const [peer, k] of Object.entries(p.inflight)) {
      assert.ok(k <= perPeer, `${p.name} → ${peer}: ${k} requests in flight (bound ${perPeer})`);
    }
  }
});
