// Malformed input: each request in the table must get a CouchDB-shaped JSON error with the right
// status, and the server must keep serving (GET /_up) after every one of them. Then the cases no
// table can express: huge bodies, bodies cut short, garbage on the wire, many bad requests at once.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startServer } from './lib/server.mjs';
import { client, assertError, rawExchange, rawStatus, rawBody } from './lib/http.mjs';
import { uniqueDbName, waitFor } from './lib/util.mjs';

let server;
let c;
let db;
let docRev;

before(async () => {
  // A 160 KiB connection buffer, so that the 100 KB id below reaches the router's id-length
  // check through its URL (the default 16K pool has libmicrohttpd refuse it itself with an
  // HTML 414 first: connections.test.mjs, "long request lines").
  server = await startServer({ args: ['--set', 'chttpd.connection_memory=160K'] });
  c = client(server.url);
  db = uniqueDbName('bad');
  const res = await c.put(`/${db}`);
  assert.equal(res.status, 201, res.text);
  const doc = await c.put(`/${db}/existing`, { v: 1 });
  assert.equal(doc.status, 201, doc.text);
  docRev = doc.json.rev;
});

after(async () => {
  await server?.stop();
});

async function assertServing(what) {
  const up = await c.get('/_up', { timeout: 10_000 }).catch((err) => ({ status: 0, text: String(err) }));
  assert.equal(up.status, 200, `server stopped answering GET /_up after ${what}: ${up.text}`);
}

const json = 'application/json';
// A malformed query parameter: CouchDB answers 400 with bad_request for most parameters and
// query_parse_error for view-style ones; clients branch on the status.
const QUERY = ['bad_request', 'query_parse_error'];
const deepArray = (n) => '['.repeat(n) + ']'.repeat(n);
const deepObject = (n) => '{"a":'.repeat(n) + '1' + '}'.repeat(n);
const bytes = (...parts) => Buffer.concat(parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p))));

/**
 * The table. body: string/Buffer sent verbatim (Content-Type application/json unless `ctype`).
 * status: expected status (or a list when CouchDB's choice depends on a configured limit).
 * error: expected error name(s), when CouchDB defines one.
 */
function cases() {
  const d = () => `/${db}`;
  return [
    // Unparsable or invalid JSON bodies.
    { name: 'truncated JSON doc body', method: 'PUT', path: () => `${d()}/t1`, body: '{"a":1,"b":[1,2', status: 400, error: 'bad_request' },
    { name: 'truncated _bulk_docs body', method: 'POST', path: () => `${d()}/_bulk_docs`, body: '{"docs":[{"_id":"x"},', status: 400, error: 'bad_request' },
    { name: 'empty doc body', method: 'PUT', path: () => `${d()}/t2`, body: '', status: 400, error: 'bad_request' },
    { name: 'trailing garbage after the JSON', method: 'PUT', path: () => `${d()}/t3`, body: '{"a":1} x', status: 400, error: 'bad_request' },
    { name: 'two JSON values', method: 'PUT', path: () => `${d()}/t4`, body: '{"a":1}{"b":2}', status: 400, error: 'bad_request' },
    { name: 'duplicate keys at the top level', method: 'PUT', path: () => `${d()}/dup1`, body: '{"a":1,"a":2}', status: 400, error: 'bad_request' },
    { name: 'duplicate keys nested', method: 'PUT', path: () => `${d()}/dup2`, body: '{"a":{"b":[{"c":1,"c":1}]}}', status: 400, error: 'bad_request' },
    { name: 'duplicate _id keys', method: 'PUT', path: () => `${d()}/dup3`, body: '{"_id":"dup3","_id":"other"}', status: 400, error: 'bad_request' },
    { name: 'duplicate keys in a _bulk_docs doc', method: 'POST', path: () => `${d()}/_bulk_docs`, body: '{"docs":[{"_id":"dup4","x":1,"x":2}]}', status: 400, error: 'bad_request' },
    { name: 'duplicate keys in _revs_diff', method: 'POST', path: () => `${d()}/_revs_diff`, body: '{"a":["1-x"],"a":["1-y"]}', status: 400, error: 'bad_request' },
    { name: '100k-deep arrays', method: 'PUT', path: () => `${d()}/deep1`, body: `{"a":${deepArray(100_000)}}`, status: [400, 413] },
    { name: '100k-deep objects', method: 'PUT', path: () => `${d()}/deep2`, body: deepObject(100_000), status: [400, 413] },
    { name: '100k-deep unterminated arrays', method: 'PUT', path: () => `${d()}/deep3`, body: `{"a":${'['.repeat(100_000)}`, status: [400, 413] },
    { name: '100k-deep nesting in _bulk_docs', method: 'POST', path: () => `${d()}/_bulk_docs`, body: `{"docs":[{"a":${deepArray(100_000)}}]}`, status: [400, 413] },
    { name: '100k-deep nesting in _changes POST', method: 'POST', path: () => `${d()}/_changes?filter=_doc_ids`, body: `{"doc_ids":${deepArray(100_000)}}`, status: [400, 413] },
    { name: 'a 10 MB id in the body', method: 'POST', path: d, body: () => `{"_id":"${'i'.repeat(10 * 1024 * 1024)}"}`, status: [400, 413] },
    { name: 'a 100 KB id in the URL', method: 'PUT', path: () => `${d()}/${'u'.repeat(100 * 1024)}`, body: '{}', status: [400, 413, 414] },
    { name: 'invalid UTF-8 in a string value', method: 'PUT', path: () => `${d()}/utf1`, body: bytes('{"a":"', Buffer.from([0xff, 0xfe]), '"}'), status: 400, error: 'bad_request' },
    { name: 'invalid UTF-8 in a key', method: 'PUT', path: () => `${d()}/utf2`, body: bytes('{"', Buffer.from([0xc3, 0x28]), '":1}'), status: 400, error: 'bad_request' },
    { name: 'overlong UTF-8 encoding', method: 'PUT', path: () => `${d()}/utf3`, body: bytes('{"a":"', Buffer.from([0xc0, 0xaf]), '"}'), status: 400, error: 'bad_request' },
    { name: 'UTF-8-encoded surrogate', method: 'PUT', path: () => `${d()}/utf4`, body: bytes('{"a":"', Buffer.from([0xed, 0xa0, 0x80]), '"}'), status: 400, error: 'bad_request' },
    { name: 'truncated UTF-8 sequence at the end of a string', method: 'PUT', path: () => `${d()}/utf5`, body: bytes('{"a":"', Buffer.from([0xe2, 0x82]), '"}'), status: 400, error: 'bad_request' },
    { name: 'invalid UTF-8 in a URL id', method: 'PUT', path: () => `${d()}/%FF%FEid`, body: '{}', status: 400, error: ['bad_request', 'illegal_docid'] },
    { name: 'invalid UTF-8 in a body _id', method: 'POST', path: d, body: bytes('{"_id":"', Buffer.from([0xff]), '"}'), status: 400, error: ['bad_request', 'illegal_docid'] },
    { name: 'a lone high surrogate escape', method: 'PUT', path: () => `${d()}/sur1`, body: '{"a":"\\ud800"}', status: 400, error: 'bad_request' },
    { name: 'a lone low surrogate escape', method: 'PUT', path: () => `${d()}/sur2`, body: '{"a":"x\\udc00y"}', status: 400, error: 'bad_request' },
    { name: 'a reversed surrogate pair', method: 'PUT', path: () => `${d()}/sur3`, body: '{"a":"\\udc00\\ud800"}', status: 400, error: 'bad_request' },
    { name: 'a lone surrogate in an id', method: 'POST', path: d, body: '{"_id":"\\ud83d"}', status: 400, error: ['bad_request', 'illegal_docid'] },
    { name: 'a bad escape', method: 'PUT', path: () => `${d()}/esc`, body: '{"a":"\\x41"}', status: 400, error: 'bad_request' },
    { name: 'a raw control character in a string', method: 'PUT', path: () => `${d()}/ctl`, body: '{"a":"x\u0001y"}', status: 400, error: 'bad_request' },
    { name: 'NaN as a number', method: 'PUT', path: () => `${d()}/nan`, body: '{"a":NaN}', status: 400, error: 'bad_request' },
    { name: 'single-quoted strings', method: 'PUT', path: () => `${d()}/sq`, body: "{'a':1}", status: 400, error: 'bad_request' },

    // Valid JSON, invalid documents.
    { name: 'a doc body that is an array', method: 'PUT', path: () => `${d()}/arr`, body: '[1,2]', status: 400, error: 'bad_request' },
    { name: 'a doc body that is a string', method: 'PUT', path: () => `${d()}/str`, body: '"doc"', status: 400, error: 'bad_request' },
    { name: 'a doc body that is null', method: 'PUT', path: () => `${d()}/nul`, body: 'null', status: 400, error: 'bad_request' },
    { name: 'a POST /db body that is a number', method: 'POST', path: d, body: '42', status: 400, error: 'bad_request' },
    { name: 'a non-object doc inside _bulk_docs', method: 'POST', path: () => `${d()}/_bulk_docs`, body: '{"docs":[{"_id":"ok1"},7]}', status: 400, error: 'bad_request' },
    { name: 'an unknown _field', method: 'PUT', path: () => `${d()}/field`, body: '{"_foo":1}', status: 400, error: 'doc_validation' },
    { name: 'an unknown _field in _bulk_docs', method: 'POST', path: () => `${d()}/_bulk_docs`, body: '{"docs":[{"_id":"f2","_bar":true}]}', status: 400, error: 'doc_validation' },
    { name: 'a doc id starting with _ in the URL', method: 'PUT', path: () => `${d()}/_foo`, body: '{}', status: 400, error: 'illegal_docid' },
    { name: 'a doc id starting with _ in a POST body', method: 'POST', path: d, body: '{"_id":"_foo"}', status: 400, error: 'illegal_docid' },
    { name: 'a doc id starting with _ in _bulk_docs', method: 'POST', path: () => `${d()}/_bulk_docs`, body: '{"docs":[{"_id":"_bad"}]}', status: 400, error: 'illegal_docid' },
    { name: 'an empty _id', method: 'POST', path: d, body: '{"_id":""}', status: 400, error: 'illegal_docid' },
    { name: 'a non-string _id', method: 'POST', path: d, body: '{"_id":12}', status: 400, error: 'illegal_docid' },
    { name: 'the bare id _design/', method: 'PUT', path: () => `${d()}/_design/`, body: '{}', status: 400, error: ['illegal_docid', 'bad_request'] },
    { name: '_local without a name', method: 'PUT', path: () => `${d()}/_local`, body: '{}', status: 400, error: ['illegal_docid', 'bad_request'] },
    { name: 'a non-object _local body', method: 'PUT', path: () => `${d()}/_local/x`, body: '[]', status: 400, error: 'bad_request' },
    { name: 'rev without a dash', method: 'PUT', path: () => `${d()}/existing`, body: '{"_rev":"abc"}', status: 400, error: 'bad_request' },
    { name: 'rev with a non-numeric generation', method: 'PUT', path: () => `${d()}/existing`, body: '{"_rev":"x-abc"}', status: 400, error: 'bad_request' },
    { name: 'rev with a negative generation', method: 'PUT', path: () => `${d()}/existing`, body: '{"_rev":"-1-abc"}', status: 400, error: 'bad_request' },
    { name: 'rev that is a number', method: 'PUT', path: () => `${d()}/existing`, body: '{"_rev":12}', status: 400, error: 'bad_request' },
    { name: '32-char rev hash that is not hex', method: 'PUT', path: () => `${d()}/existing`, body: `{"_rev":"1-${'z'.repeat(32)}"}`, status: 400, error: 'bad_request' },
    { name: 'garbage ?rev= on GET', method: 'GET', path: () => `${d()}/existing?rev=garbage`, status: 400, error: QUERY },
    { name: 'garbage ?rev= on DELETE', method: 'DELETE', path: () => `${d()}/existing?rev=nope`, status: 400, error: QUERY },
    { name: 'malformed revs in _revs_diff', method: 'POST', path: () => `${d()}/_revs_diff`, body: '{"existing":["garbage"]}', status: 400, error: 'bad_request' },
    { name: '_revs_diff with a non-array value', method: 'POST', path: () => `${d()}/_revs_diff`, body: '{"existing":"1-abc"}', status: 400, error: 'bad_request' },
    { name: '_revs_diff with a non-object body', method: 'POST', path: () => `${d()}/_revs_diff`, body: '[]', status: 400, error: 'bad_request' },
    { name: 'malformed _revisions with new_edits=false', method: 'POST', path: () => `${d()}/_bulk_docs`, body: '{"new_edits":false,"docs":[{"_id":"r1","_rev":"2-aa","_revisions":{"start":"two","ids":["aa"]}}]}', status: 400, error: ['doc_validation', 'bad_request'] },
    { name: 'new_edits=false doc without _rev or _revisions', method: 'POST', path: () => `${d()}/_bulk_docs`, body: '{"new_edits":false,"docs":[{"_id":"r2","v":1}]}', status: 400, error: 'bad_request' },
    { name: 'PUT ?new_edits=false without _rev', method: 'PUT', path: () => `${d()}/r3?new_edits=false`, body: '{"v":1}', status: 400, error: 'bad_request' },

    // _bulk_docs / _bulk_get / _all_docs structure.
    { name: '_bulk_docs without docs', method: 'POST', path: () => `${d()}/_bulk_docs`, body: '{}', status: 400, error: 'bad_request' },
    { name: '_bulk_docs with docs not an array', method: 'POST', path: () => `${d()}/_bulk_docs`, body: '{"docs":{"_id":"x"}}', status: 400, error: 'bad_request' },
    { name: '_bulk_docs with a string for docs', method: 'POST', path: () => `${d()}/_bulk_docs`, body: '{"docs":"x"}', status: 400, error: 'bad_request' },
    { name: '_bulk_docs body that is an array', method: 'POST', path: () => `${d()}/_bulk_docs`, body: '[{"_id":"x"}]', status: 400, error: 'bad_request' },
    { name: 'new_edits given as the string "false"', method: 'POST', path: () => `${d()}/_bulk_docs`, body: '{"new_edits":"false","docs":[{"_id":"s1","_rev":"1-abc"}]}', status: 400, error: 'bad_request' },
    { name: '_bulk_docs with Content-Type text/plain', method: 'POST', path: () => `${d()}/_bulk_docs`, body: '{"docs":[]}', ctype: 'text/plain', status: 415, error: 'bad_content_type' },
    { name: '_bulk_docs with a form Content-Type', method: 'POST', path: () => `${d()}/_bulk_docs`, body: 'docs=1', ctype: 'application/x-www-form-urlencoded', status: 415, error: 'bad_content_type' },
    { name: '_bulk_get without docs', method: 'POST', path: () => `${d()}/_bulk_get`, body: '{}', status: 400, error: 'bad_request' },
    { name: '_bulk_get with docs not an array', method: 'POST', path: () => `${d()}/_bulk_get`, body: '{"docs":1}', status: 400, error: 'bad_request' },
    { name: '_all_docs POST with keys not an array', method: 'POST', path: () => `${d()}/_all_docs`, body: '{"keys":"a"}', status: 400, error: QUERY },
    { name: '_revs_limit that is not a number', method: 'PUT', path: () => `${d()}/_revs_limit`, body: '"many"', status: 400, error: 'bad_request' },
    { name: '_revs_limit that is negative', method: 'PUT', path: () => `${d()}/_revs_limit`, body: '-3', status: 400, error: 'bad_request' },

    // Garbage query parameters.
    { name: '_all_docs limit=abc', method: 'GET', path: () => `${d()}/_all_docs?limit=abc`, status: 400, error: QUERY },
    { name: '_all_docs limit=-1', method: 'GET', path: () => `${d()}/_all_docs?limit=-1`, status: 400, error: QUERY },
    { name: '_all_docs skip=x', method: 'GET', path: () => `${d()}/_all_docs?skip=x`, status: 400, error: QUERY },
    { name: '_all_docs startkey=not-json', method: 'GET', path: () => `${d()}/_all_docs?startkey=not-json`, status: 400, error: QUERY },
    { name: '_all_docs keys=not-json', method: 'GET', path: () => `${d()}/_all_docs?keys=[1,`, status: 400, error: QUERY },
    { name: '_all_docs descending=maybe', method: 'GET', path: () => `${d()}/_all_docs?descending=maybe`, status: 400, error: QUERY },
    { name: 'open_revs=garbage', method: 'GET', path: () => `${d()}/existing?open_revs=garbage`, status: 400, error: QUERY },
    { name: 'open_revs=[not-a-rev]', method: 'GET', path: () => `${d()}/existing?open_revs=${encodeURIComponent('["nope"]')}`, status: 400, error: QUERY },
    { name: '_changes since=x', method: 'GET', path: () => `${d()}/_changes?since=x`, status: 400, error: QUERY },
    { name: '_changes feed=bogus', method: 'GET', path: () => `${d()}/_changes?feed=bogus`, status: 400, error: QUERY },
    { name: '_changes heartbeat=-5', method: 'GET', path: () => `${d()}/_changes?feed=continuous&heartbeat=-5`, status: 400, error: QUERY },
    { name: '_changes heartbeat=abc', method: 'GET', path: () => `${d()}/_changes?feed=longpoll&heartbeat=abc`, status: 400, error: QUERY },
    { name: '_changes limit=abc', method: 'GET', path: () => `${d()}/_changes?limit=abc`, status: 400, error: QUERY },
    { name: '_changes timeout=soon', method: 'GET', path: () => `${d()}/_changes?feed=longpoll&timeout=soon`, status: 400, error: QUERY },
    { name: '_changes style=fancy', method: 'GET', path: () => `${d()}/_changes?style=fancy`, status: 400, error: QUERY },
    { name: '_changes doc_ids=not-json', method: 'GET', path: () => `${d()}/_changes?filter=_doc_ids&doc_ids=nope`, status: 400, error: QUERY },
    { name: '_changes POST with doc_ids not an array', method: 'POST', path: () => `${d()}/_changes?filter=_doc_ids`, body: '{"doc_ids":"a"}', status: 400, error: 'bad_request' },
    { name: '_uuids count=abc', method: 'GET', path: () => '/_uuids?count=abc', status: 400, error: QUERY },

    // Wrong methods.
    { name: 'PATCH /db', method: 'PATCH', path: d, body: '{}', status: 405, error: 'method_not_allowed' },
    { name: 'PATCH a doc', method: 'PATCH', path: () => `${d()}/existing`, body: '{}', status: 405, error: 'method_not_allowed' },
    { name: 'PUT /_all_dbs', method: 'PUT', path: () => '/_all_dbs', body: '{}', status: 405, error: 'method_not_allowed' },
    { name: 'POST /_up', method: 'POST', path: () => '/_up', body: '{}', status: 405, error: 'method_not_allowed' },
    { name: 'DELETE /_uuids', method: 'DELETE', path: () => '/_uuids', status: 405, error: 'method_not_allowed' },
    { name: 'GET _bulk_docs', method: 'GET', path: () => `${d()}/_bulk_docs`, status: 405, error: 'method_not_allowed' },
    { name: 'GET _revs_diff', method: 'GET', path: () => `${d()}/_revs_diff`, status: 405, error: 'method_not_allowed' },
    { name: 'GET _bulk_get', method: 'GET', path: () => `${d()}/_bulk_get`, status: 405, error: 'method_not_allowed' },
    { name: 'GET _ensure_full_commit', method: 'GET', path: () => `${d()}/_ensure_full_commit`, status: 405, error: 'method_not_allowed' },
    { name: 'GET _compact', method: 'GET', path: () => `${d()}/_compact`, status: 405, error: 'method_not_allowed' },
    { name: 'DELETE _all_docs', method: 'DELETE', path: () => `${d()}/_all_docs`, status: 405, error: 'method_not_allowed' },
    { name: 'POST _revs_limit', method: 'POST', path: () => `${d()}/_revs_limit`, body: '5', status: 405, error: 'method_not_allowed' },

    // Missing things.
    { name: 'a missing database', method: 'GET', path: () => '/no_such_db_here', status: 404, error: 'not_found' },
    { name: 'a doc in a missing database', method: 'GET', path: () => '/no_such_db_here/doc', status: 404, error: 'not_found' },
    { name: '_bulk_docs on a missing database', method: 'POST', path: () => '/no_such_db_here/_bulk_docs', body: '{"docs":[]}', status: 404, error: 'not_found' },
    { name: 'a missing doc', method: 'GET', path: () => `${d()}/no-such-doc`, status: 404, error: 'not_found' },
    { name: 'a missing design doc', method: 'GET', path: () => `${d()}/_design/none`, status: 404, error: 'not_found' },
    { name: 'a missing _local doc', method: 'GET', path: () => `${d()}/_local/none`, status: 404, error: 'not_found' },
  ];
}

describe('malformed requests get JSON errors and the server keeps serving', () => {
  for (const cse of cases()) {
    test(`${cse.name} → ${[].concat(cse.status).join('/')}`, async () => {
      const body = typeof cse.body === 'function' ? cse.body() : cse.body;
      const headers = {};
      if (body !== undefined) headers['content-type'] = cse.ctype ?? json;
      const res = await c.request(cse.method, cse.path(), { body, headers, timeout: 60_000 });
      assertError(res, cse.status, cse.error, `${cse.method} ${cse.name}`);
      await assertServing(cse.name);
    });
  }

  test('nothing from the bad requests was written', async () => {
    const all = await c.get(`/${db}/_all_docs`);
    assert.deepEqual(all.json.rows.map((r) => r.id), ['existing']);
    const doc = await c.get(`/${db}/existing`);
    assert.equal(doc.json._rev, docRev);
  });

  test('a _bulk_docs batch with one invalid doc writes none of its docs', async () => {
    const res = await c.post(`/${db}/_bulk_docs`, { docs: [{ _id: 'good-1' }, { _id: '_illegal' }, { _id: 'good-2' }] });
    assertError(res, 400, 'illegal_docid');
    for (const id of ['good-1', 'good-2']) {
      assert.equal((await c.get(`/${db}/${id}`)).status, 404, `${id} must not be written`);
    }
  });
});

describe('oversized and cut-short requests', () => {
  test('a document over max_document_size is refused with 413', async () => {
    const big = JSON.stringify({ blob: 'b'.repeat(9 * 1024 * 1024) });
    const res = await c.put(`/${db}/too-big`, big, { timeout: 60_000 });
    assertError(res, 413, ['document_too_large', 'too_large']);
    assert.equal((await c.get(`/${db}/too-big`)).status, 404);
    await assertServing('an oversized document');
  });

  /**
   * Streams a request body until the server answers (or `cap` bytes are sent; a chunked body is
   * then terminated) and returns the status and body of the reply. Declared length or chunked
   * framing, as asked.
   */
  function streamHuge({ chunked, declared, cap = 1024 * 1024 * 1024, timeout = 60_000 }) {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host: '127.0.0.1', port: server.port });
      const chunk = Buffer.alloc(1024 * 1024, 'a'.charCodeAt(0));
      let sent = 0;
      let reply = Buffer.alloc(0);
      let finished = false;
      const timer = setTimeout(() => done(new Error(`no reply after sending ${sent} bytes in ${timeout} ms`)), timeout);
      const done = (err) => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        sock.destroy();
        if (err && reply.length === 0) {
          return reject(new Error(`${err.code ?? err.message} after sending ${sent} bytes and before any reply ` +
            '(the server closed or reset the connection without a readable answer)'));
        }
        resolve({ status: rawStatus(reply), body: rawBody(reply), sent });
      };
      let terminated = false;
      // One chunk per turn of the event loop, so a reply that arrives early is read at once.
      const pump = () => {
        if (!finished && sent < cap) {
          const piece = chunked ? Buffer.concat([Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from('\r\n')]) : chunk;
          sent += chunk.length;
          if (sock.write(piece)) setImmediate(pump); // else wait for 'drain'
          return;
        }
        if (chunked && !finished && !terminated) {
          // A chunked body ends: the server may answer as soon as the limit is crossed, or
          // once it has read (and dropped) the whole body.
          terminated = true;
          sock.write('0\r\n\r\n');
        }
      };
      sock.on('connect', () => {
        const head = [`POST /${db}/_bulk_docs HTTP/1.1`, 'Host: 127.0.0.1', 'Content-Type: application/json',
          chunked ? 'Transfer-Encoding: chunked' : `Content-Length: ${declared}`, '', ''].join('\r\n');
        sock.write(head);
        sock.write(chunked ? '9\r\n{"docs":[\r\n' : '{"docs":[');
        pump();
      });
      sock.on('drain', pump);
      sock.on('data', (d) => {
        reply = Buffer.concat([reply, d]);
        const s = reply.toString('latin1');
        const i = s.indexOf('\r\n\r\n');
        if (i >= 0) {
          const m = s.slice(0, i).match(/content-length:\s*(\d+)/i);
          if (m && reply.length >= i + 4 + Number(m[1])) done(null);
        }
      });
      sock.on('end', () => done(null));
      sock.on('close', () => done(null));
      sock.on('error', (err) => done(err));
    });
  }

  // The client keeps sending while the server refuses: the 413 must still reach it (the server
  // has to drain for a while before closing, or the reset discards the reply). CouchDB's
  // replicator relies on this 413 to halve its _bulk_docs batch.
  test('an over-size request body with Content-Length is refused with 413', async () => {
    const r = await streamHuge({ chunked: false, declared: 4 * 1024 * 1024 * 1024 });
    assert.equal(r.status, 413, `status ${r.status} after ${r.sent} bytes: ${r.body.slice(0, 300)}`);
    const parsed = JSON.parse(r.body);
    assert.equal(typeof parsed.error, 'string');
    assert.equal(typeof parsed.reason, 'string');
    await assertServing('an over-size request');
  });

  test('an over-size chunked request body is refused with 413', async () => {
    const r = await streamHuge({ chunked: true, cap: 256 * 1024 * 1024 });
    assert.equal(r.status, 413, `status ${r.status} after ${r.sent} bytes: ${r.body.slice(0, 300)}`);
    const parsed = JSON.parse(r.body);
    assert.equal(typeof parsed.error, 'string');
    await assertServing('an over-size chunked request');
  });

  test('a body shorter than its Content-Length, then closed, does not hang the server', async () => {
    const head = `PUT /${db}/cut-short HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n`;
    const r = await rawExchange({ host: '127.0.0.1', port: server.port }, [head, '{"a":"only part of'], { halfClose: true, timeout: 15_000 });
    assert.equal(r.timedOut, false, 'the server closed the connection');
    await assertServing('a body cut short');
    const reset = await rawExchange({ host: '127.0.0.1', port: server.port }, [head, '{"a":'], { destroyAfterWrite: true });
    assert.ok(reset.closed);
    await assertServing('a body cut short by a reset');
    assert.equal((await c.get(`/${db}/cut-short`)).status, 404, 'nothing half-written');
  });

  test('a body cut short by an end of stream in the same packet is closed within seconds', async () => {
    // Head, part of the body and the FIN reach the server together (one write, then end):
    // under load the server used to take them in one wake-up and then wait for the body
    // timeout (60 s). One in four runs of the test above failed that way on a loaded machine.
    for (let i = 0; i < 5; i++) {
      const sock = net.connect({ host: '127.0.0.1', port: server.port });
      await new Promise((r) => sock.on('connect', r));
      const t0 = Date.now();
      const closed = new Promise((r) => { sock.on('close', r); sock.on('error', () => {}); });
      sock.on('data', () => {});
      sock.end(`PUT /${db}/cut-fin-${i} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
        'Content-Length: 1000\r\n\r\n{"a":"only part of');
      const timedOut = await Promise.race([closed.then(() => false),
        new Promise((r) => setTimeout(() => r(true), 10_000))]);
      sock.destroy();
      assert.equal(timedOut, false, `still open ${Date.now() - t0} ms after the client ended its stream`);
      assert.equal((await c.get(`/${db}/cut-fin-${i}`)).status, 404, 'nothing half-written');
    }
    await assertServing('bodies cut short by an end of stream');
  });

  test('a stalled upload does not block other clients', async () => {
    const sock = net.connect({ host: '127.0.0.1', port: server.port });
    await new Promise((r) => sock.on('connect', r));
    sock.write(`PUT /${db}/stalled HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"a":`);
    try {
      for (let i = 0; i < 5; i++) {
        const res = await c.put(`/${db}/while-stalled-${i}`, { i }, { timeout: 5_000 });
        assert.equal(res.status, 201, res.text);
      }
    } finally {
      sock.destroy();
    }
    await assertServing('a stalled upload');
  });

  test('garbage on the wire does not affect other clients', async () => {
    const addr = { host: '127.0.0.1', port: server.port };
    const garbage = [
      'HELLO\r\n\r\n',
      'GET\r\n\r\n',
      'GET / HTTP/9.9\r\n\r\n',
      Buffer.from([0, 1, 2, 3, 0xff, 0xfe, 13, 10, 13, 10]),
      `GET /${'x'.repeat(100_000)} HTTP/1.1\r\nHost: x\r\n\r\n`,
      `GET / HTTP/1.1\r\nHost: x\r\n${'X-Big: ' + 'h'.repeat(200_000)}\r\n\r\n`,
      'POST /x/_bulk_docs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nnot hex\r\n',
      'POST /x/_bulk_docs HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n',
      'POST /x/_bulk_docs HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nabcde',
    ];
    for (const g of garbage) {
      const r = await rawExchange(addr, g, { halfClose: true, timeout: 15_000 });
      assert.equal(r.timedOut, false, `the server answered or closed after ${JSON.stringify(String(g).slice(0, 60))}`);
      const status = rawStatus(r.data);
      if (status !== null) assert.ok(status >= 400, `garbage got status ${status}`);
      await assertServing(`garbage ${JSON.stringify(String(g).slice(0, 40))}`);
    }
  });

  test('many concurrent bad requests each get their error and the server keeps serving', async () => {
    const table = cases().filter((x) => typeof x.body !== 'function' && !/100k|100 KB/.test(x.name));
    const jobs = [];
    for (let i = 0; i < 300; i++) {
      const cse = table[i % table.length];
      const body = cse.body;
      const headers = body !== undefined ? { 'content-type': cse.ctype ?? json } : {};
      jobs.push(c.request(cse.method, cse.path(), { body, headers, timeout: 60_000 })
        .then((res) => { assertError(res, cse.status, cse.error, `concurrent ${cse.name}`); }));
    }
    const results = await Promise.allSettled(jobs);
    const failed = results.filter((r) => r.status === 'rejected');
    assert.deepEqual(failed.map((f) => f.reason.message).slice(0, 5), [], `${failed.length} of ${jobs.length} failed`);
    await assertServing('many concurrent bad requests');
    await waitFor(async () => (await c.get(`/${db}`)).status === 200, { message: 'database still readable' });
  });
});
