// PouchDB (in-memory adapter) pulls one database from a server: the replication a browser or
// Node app does on first sync. Prints one JSON line like loadgen's.
//   node pull.mjs URL/db EXPECTED_DOCS [BATCH_SIZE]
import PouchDB from 'pouchdb';
import memory from 'pouchdb-adapter-memory';

PouchDB.plugin(memory);
const [url, expectArg, batchArg] = process.argv.slice(2);
const expected = Number(expectArg || 0);
// PouchDB's own defaults (100 docs a batch, 10 batches ahead): what an app gets unless it tunes.
const batchSize = Number(batchArg || 100);
const local = new PouchDB(`pull-${process.pid}`, { adapter: 'memory' });
const t0 = performance.now();
const out = { op: 'pull', batch_size: batchSize, docs: expected };
try {
  const r = await PouchDB.replicate(url, local, { batch_size: batchSize, batches_limit: 10 });
  const secs = (performance.now() - t0) / 1000;
  const info = await local.info();
  out.seconds = +secs.toFixed(3);
  out.docs_written = r.docs_written;
  out.local_docs = info.doc_count;
  out.ok = r.ok && info.doc_count === expected;
  out.docs_per_s = out.ok ? +(info.doc_count / secs).toFixed(1) : 0;
  if (!out.ok) out.first_error = `got ${info.doc_count} docs, errors: ${JSON.stringify(r.errors).slice(0, 200)}`;
} catch (e) {
  out.ok = false;
  out.docs_per_s = 0;
  out.first_error = String(e && (e.message || e.reason || e)).slice(0, 200);
}
console.log(JSON.stringify(out));
process.exit(out.ok ? 0 : 1);
