// Replication of documents with attachments through a server's own /_replicate (full URLs,
// so its HTTP replicator runs): DOCS documents with a SIZE-byte binary attachment each, from
// att_src to att_dst; then every document's body changes (the attachments do not) and the
// replication runs again, so each blob is already on the target and only stubs should cross.
// Prints one JSON line like loadgen's.
//   node att_repl.mjs URL [DOCS] [SIZE]
import http from 'node:http';
import crypto from 'node:crypto';

const [base, docsArg, sizeArg] = process.argv.slice(2);
const DOCS = Number(docsArg || 1000);
const SIZE = Number(sizeArg || 100 * 1024);
const agent = new http.Agent({ keepAlive: false });

function req(method, path, body, timeout = 600_000) {
  const u = new URL(base);
  const payload = body === undefined ? null : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const r = http.request({ host: u.hostname, port: u.port, method, path, agent,
      headers: { 'content-type': 'application/json', accept: 'application/json',
        ...(payload ? { 'content-length': payload.length } : {}) } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        resolve({ status: res.statusCode, json, text });
      });
    });
    r.setTimeout(timeout, () => r.destroy(new Error(`${method} ${path}: timeout`)));
    r.on('error', reject);
    r.end(payload);
  });
}

const out = { op: 'att_repl', docs: DOCS, att_bytes: SIZE };
try {
  for (const db of ['att_src', 'att_dst']) await req('DELETE', `/${db}`);
  await req('PUT', '/att_src');
  const revs = new Map();
  for (let i = 0; i < DOCS; i += 50) {
    const docs = [];
    for (let k = i; k < Math.min(DOCS, i + 50); k++) {
      docs.push({ _id: `a${String(k).padStart(6, '0')}`, n: k,
        _attachments: { 'blob.bin': { content_type: 'application/octet-stream',
          data: crypto.randomBytes(SIZE).toString('base64') } } });
    }
    const r = await req('POST', '/att_src/_bulk_docs', { docs });
    if (r.status !== 201) throw new Error(`load: ${r.status} ${r.text.slice(0, 200)}`);
    for (const row of r.json) revs.set(row.id, row.rev);
  }
  const rep = async () => {
    const t0 = performance.now();
    const r = await req('POST', '/_replicate', { source: `${base}/att_src`, target: `${base}/att_dst`,
      create_target: true });
    const s = (performance.now() - t0) / 1000;
    if (r.status !== 200 || !r.json?.ok) throw new Error(`_replicate: ${r.status} ${r.text.slice(0, 200)}`);
    const h = r.json.history?.[0] ?? {};
    if ((h.doc_write_failures ?? 0) > 0) throw new Error(`${h.doc_write_failures} write failures`);
    return s;
  };
  const first = await rep();
  // new revisions of every document, attachments kept as the stubs the server gave
  const ids = [...revs.keys()];
  for (let i = 0; i < ids.length; i += 100) {
    const got = await req('POST', '/att_src/_all_docs?include_docs=true', { keys: ids.slice(i, i + 100) });
    if (got.status !== 200) throw new Error(`read: ${got.status} ${got.text.slice(0, 200)}`);
    const docs = got.json.rows.map((row) => ({ ...row.doc, n: -1 }));
    const r = await req('POST', '/att_src/_bulk_docs', { docs });
    if (r.status !== 201) throw new Error(`update: ${r.status} ${r.text.slice(0, 200)}`);
  }
  const second = await rep();
  const check = await req('GET', `/att_dst/${ids[ids.length - 1]}`);
  if (check.json?.n !== -1) throw new Error(`target not updated: ${check.text.slice(0, 200)}`);
  out.first_s = +first.toFixed(3);
  out.second_s = +second.toFixed(3);
  out.docs_per_s = +(DOCS / first).toFixed(1);
  out.mb_per_s = +((DOCS * SIZE) / first / 1e6).toFixed(1);
  out.second_docs_per_s = +(DOCS / second).toFixed(1);
  out.speedup = +(first / second).toFixed(2);
  out.ok = true;
} catch (e) {
  out.ok = false;
  out.docs_per_s = 0;
  out.first_error = String(e && (e.message || e)).slice(0, 200);
}
console.log(JSON.stringify(out));
