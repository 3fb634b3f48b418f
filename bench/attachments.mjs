// Attachment workloads for bench/run.sh. Prints one JSON line like loadgen's.
//   node attachments.mjs up     URL/db SIZE_MB   PUT /db/big/blob.bin, streamed from memory
//   node attachments.mjs down   URL/db SIZE_MB   GET it back, streamed to a hash
//   node attachments.mjs dedupe URL/db DOCS      DOCS documents carrying the same 1 MiB blob
import http from 'node:http';
import crypto from 'node:crypto';

const [mode, dbUrl, nArg] = process.argv.slice(2);
const n = Number(nArg);
const MiB = 1 << 20;

function piece(seed) {
  const b = Buffer.alloc(MiB);
  let x = seed >>> 0;
  for (let i = 0; i < MiB; i += 4) {
    x = (x * 1103515245 + 12345) >>> 0;
    b.writeUInt32LE(x, i);
  }
  return b;
}

function send(method, url, { body, size, headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const auth = u.username ? { auth: `${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}` } : {};
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname + u.search, method,
      ...auth, headers: { ...headers, ...(size !== undefined ? { 'content-length': String(size) } : {}) } },
    (res) => {
      const h = crypto.createHash('md5');
      let got = 0;
      const keep = [];
      res.on('data', (d) => { got += d.length; h.update(d); if (got < 4096) keep.push(d); });
      res.on('end', () => resolve({ status: res.statusCode, bytes: got, md5: h.digest('base64'),
        text: Buffer.concat(keep).toString().slice(0, 300) }));
    });
    req.on('error', reject);
    if (typeof body === 'function') body(req);
    else req.end(body);
  });
}

// The upload: SIZE_MB distinct MiB (so nothing dedupes), written as the socket drains.
function streamBody(sizeMb, hash) {
  return (req) => {
    let i = 0;
    const base = piece(7);
    const pump = () => {
      while (i < sizeMb) {
        const p = Buffer.from(base);
        p.writeUInt32LE(i, 0);
        hash.update(p);
        i++;
        if (!req.write(p)) { req.once('drain', pump); return; }
      }
      req.end();
    };
    pump();
  };
}

const out = { op: `att_${mode}`, ...(mode === 'dedupe' ? {} : { size_mb: n }) };
try {
  const t0 = performance.now();
  if (mode === 'up' || mode === 'down') {
    await send('PUT', dbUrl, {});   // the database (201, or 412 when it exists)
    if (mode === 'up') {
      const hash = crypto.createHash('md5');
      const r = await send('PUT', `${dbUrl}/big/blob.bin`, { size: n * MiB, body: streamBody(n, hash),
        headers: { 'content-type': 'application/octet-stream' } });
      out.ok = r.status === 201;
      if (!out.ok) out.first_error = `HTTP ${r.status} ${r.text}`;
    } else {
      const r = await send('GET', `${dbUrl}/big/blob.bin`);
      out.ok = r.status === 200 && r.bytes === n * MiB;
      if (!out.ok) out.first_error = `HTTP ${r.status}, ${r.bytes} bytes ${r.text}`;
    }
    const secs = (performance.now() - t0) / 1000;
    out.seconds = +secs.toFixed(3);
    out.mb_per_s = out.ok ? +((n * MiB) / 1e6 / secs).toFixed(1) : 0;
  } else if (mode === 'dedupe') {
    await send('PUT', dbUrl, {});
    const blob = piece(99);
    let next = 0, failed = 0, firstError;
    const worker = async () => {
      while (next < n) {
        const i = next++;
        const r = await send('PUT', `${dbUrl}/d${i}/same.bin`, { body: blob, size: blob.length,
          headers: { 'content-type': 'application/octet-stream' } });
        if (r.status !== 201) { failed++; firstError ??= `HTTP ${r.status} ${r.text}`; }
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    const secs = (performance.now() - t0) / 1000;
    out.docs = n;
    out.seconds = +secs.toFixed(3);
    out.ok = failed === 0;
    if (failed) out.first_error = `${failed} failed: ${firstError}`;
    out.docs_per_s = out.ok ? +(n / secs).toFixed(1) : 0;
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
} catch (e) {
  out.ok = false;
  out.first_error = String(e && (e.message || e)).slice(0, 200);
}
console.log(JSON.stringify(out));
process.exit(out.ok ? 0 : 1);
