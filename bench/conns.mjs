// Connection workloads for bench/run.sh, on raw sockets (tests/interop/lib/conns.mjs), one
// JSON line each:
//   node conns.mjs feeds URL PID N       N idle continuous feeds on URL/bench_feeds: the
//                                        server's resident memory per feed (PID's VmRSS before
//                                        and after) and how long one write takes to reach all
//   node conns.mjs slowloris URL N       N connections sending a request head one byte a
//                                        second; a normal client's GET / latency meanwhile
//   node conns.mjs upload URL MIB        one streamed attachment PUT of MIB MiB; GET /db
//                                        latency on new connections while it runs
import { rawConnect, rawRequest, openRawFeed, pool, procStatus, percentile }
  from '../tests/interop/lib/conns.mjs';

const [mode, url, ...rest] = process.argv.slice(2);
const port = Number(new URL(url).port);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const out = (o) => console.log(JSON.stringify(o));

async function feeds(pid, n) {
  const db = `bench_feeds_${n}`;
  let r = await rawRequest(port, 'PUT', `/${db}`, { timeout: 60_000 });
  if (r.status !== 201 && r.status !== 412) throw new Error(`PUT /${db}: ${r.status} ${r.body}`);
  // since= the current seq rather than now: a feed the server takes up late still gets the
  // write. pouchdb-server sends a feed's head only with its first row, so the head is not
  // awaited; the feeds count as open once every one has received the first write.
  const info = await rawRequest(port, 'GET', `/${db}`, { timeout: 60_000 });
  const seq = JSON.parse(info.body).update_seq;
  await sleep(200);
  const before = procStatus(pid);
  const t0 = performance.now();
  const socks = await pool(Array.from({ length: n }, (_, i) => i), 256, () =>
    openRawFeed(port, `/${db}/_changes?feed=continuous&since=${encodeURIComponent(seq)}&heartbeat=60000`,
      { waitHead: false }));
  const openMs = performance.now() - t0;
  await sleep(Math.max(2000, n / 2));
  const bad = socks.filter((s) => s.destroyed).length;
  const after = procStatus(pid);
  const rounds = [];
  for (let round = 0; round < 3; round++) {
    const id = `f${round}-${Date.now()}`;
    const seen = [];
    let start = performance.now();
    let done;
    const all = new Promise((res) => { done = res; });
    for (const s of socks) {
      let got = false;
      s.watchers = [(c, tail) => {
        if (!got && (c.includes(id) || (tail + c).includes(id))) {
          got = true;
          seen.push(performance.now() - start);
          if (seen.length === socks.length) done();
        }
      }];
    }
    start = performance.now();
    r = await rawRequest(port, 'PUT', `/${db}/${id}`, { body: '{}', timeout: 60_000 });
    if (r.status !== 201) throw new Error(`PUT doc: ${r.status} ${r.error ?? ''} ${r.body}`);
    await Promise.race([all, sleep(30_000)]);
    rounds.push({ reached: seen.length, p50: percentile(seen, 50), p99: percentile(seen, 99),
      max: Math.max(...seen) });
    await sleep(300);
  }
  for (const s of socks) s.destroy();
  const best = rounds.reduce((a, b) => (b.p99 < a.p99 ? b : a));
  out({ op: 'feeds', feeds: n, opened: n - bad, open_s: +(openMs / 1000).toFixed(2),
    rss_before_kb: Math.round(before.rss / 1024), rss_after_kb: Math.round(after.rss / 1024),
    kb_per_feed: +((after.rss - before.rss) / 1024 / n).toFixed(1),
    threads_before: before.threads, threads_after: after.threads,
    reached: Math.min(...rounds.map((x) => x.reached)),
    write_p50_ms: +best.p50.toFixed(1), write_p99_ms: +best.p99.toFixed(1),
    write_p99_ms_rounds: rounds.map((x) => +x.p99.toFixed(0)),
    ok: bad === 0 && rounds.every((x) => x.reached === n) });
}

async function slowloris(n) {
  const socks = await pool(Array.from({ length: n }, (_, i) => i), 256, () =>
    rawConnect(port, 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: '));
  let closed = 0;
  for (const s of socks) s.on('close', () => { closed++; });
  const drip = setInterval(() => { for (const s of socks) if (!s.destroyed) s.write('a'); }, 1000);
  const lat = [];
  let errors = 0, first;
  for (let i = 0; i < 200; i++) {
    const r = await rawRequest(port, 'GET', '/', { timeout: 5000 });
    if (r.status === 200) lat.push(r.ms);
    else { errors++; first ??= `${r.status} ${r.error ?? ''}`; }
    await sleep(10);
  }
  clearInterval(drip);
  for (const s of socks) s.destroy();
  out({ op: 'slowloris', connections: n, closed_by_server: closed, requests: 200,
    ok_requests: lat.length, errors, first_error: first,
    p50_ms: +percentile(lat, 50).toFixed(2), p99_ms: +percentile(lat, 99).toFixed(2),
    max_ms: +Math.max(...lat).toFixed(2) });
}

async function upload(mib) {
  const db = 'bench_upload_gets';
  await rawRequest(port, 'PUT', `/${db}`, { timeout: 60_000 });
  const doc = await rawRequest(port, 'PUT', `/${db}/d`, { body: '{}', timeout: 60_000 });
  const rev = JSON.parse(doc.body).rev;
  const block = Buffer.alloc(1 << 20);
  for (let i = 0; i < block.length; i += 4) block.writeUInt32LE((Math.random() * 2 ** 32) >>> 0, i);
  const total = mib << 20;
  const sock = await rawConnect(port, `PUT /${db}/d/blob?rev=${rev} HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
    `Content-Type: application/octet-stream\r\nContent-Length: ${total}\r\n\r\n`);
  let reply = '';
  sock.setEncoding('utf8');
  sock.on('data', (c) => { reply += c; });
  const t0 = performance.now();
  let done = false;
  const sent = (async () => {
    for (let off = 0; off < total; off += block.length)
      if (!sock.write(block)) await new Promise((r) => sock.once('drain', r));
    while (!/\r\n\r\n[\s\S]*\}/.test(reply)) await new Promise((r) => sock.once('data', r));
  })().finally(() => { done = true; });
  const lat = [];
  let errors = 0;
  while (!done) {
    const r = await rawRequest(port, 'GET', `/${db}`, { timeout: 10_000 });
    if (r.status === 200) lat.push(r.ms);
    else errors++;
    await sleep(5);
  }
  await sent;
  const secs = (performance.now() - t0) / 1000;
  sock.destroy();
  out({ op: 'upload_gets', mib, status: Number((/^HTTP\/1\.1 (\d+)/.exec(reply) || [])[1] || 0),
    upload_s: +secs.toFixed(2), gets: lat.length, errors,
    p50_ms: +percentile(lat, 50).toFixed(2), p99_ms: +percentile(lat, 99).toFixed(2),
    max_ms: +Math.max(...lat).toFixed(2) });
}

try {
  if (mode === 'upload') await upload(Number(rest[0]));
  else if (mode === 'feeds') await feeds(Number(rest[0]), Number(rest[1]));
  else if (mode === 'slowloris') await slowloris(Number(rest[0]));
  else throw new Error('usage: conns.mjs feeds URL PID N | slowloris URL N | upload URL MIB');
  process.exit(0);
} catch (err) {
  console.error(`conns: ${err.message}`);
  process.exit(1);
}
