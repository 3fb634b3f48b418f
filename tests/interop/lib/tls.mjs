// What the TLS tests share: a throwaway CA and server certificate made with GnuTLS's certtool
// at test time (no keys in the tree), and a mimeo started with its own flags whose
// "mimeo listening on" lines give its HTTP and HTTPS URLs.

import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { serverBinary, repoRoot } from './server.mjs';

function certtool(args) {
  execFileSync('certtool', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A CA and a server certificate for 127.0.0.1/localhost, valid two days, in dir. */
export async function makeCerts(dir) {
  await fs.writeFile(path.join(dir, 'ca.tmpl'), 'cn = "mimeo test CA"\nca\ncert_signing_key\nexpiration_days = 2\n');
  await fs.writeFile(path.join(dir, 'srv.tmpl'),
    'cn = "127.0.0.1"\nip_address = "127.0.0.1"\ndns_name = "localhost"\ntls_www_server\nsigning_key\nencryption_key\nexpiration_days = 2\n');
  const p = (f) => path.join(dir, f);
  certtool(['--generate-privkey', '--key-type=ecdsa', '--outfile', p('ca.key')]);
  certtool(['--generate-self-signed', '--load-privkey', p('ca.key'), '--template', p('ca.tmpl'), '--outfile', p('ca.crt')]);
  certtool(['--generate-privkey', '--key-type=ecdsa', '--outfile', p('srv.key')]);
  certtool(['--generate-certificate', '--load-privkey', p('srv.key'), '--load-ca-certificate', p('ca.crt'),
    '--load-ca-privkey', p('ca.key'), '--template', p('srv.tmpl'), '--outfile', p('srv.crt')]);
  return { ca: await fs.readFile(p('ca.crt')), caFile: p('ca.crt'), cert: p('srv.crt'), key: p('srv.key') };
}

/** Starts `mimeo serve ...args`; resolves {proc, http?, https?, stderr()} once every scheme
 *  in want ('http', 'https') has its listening line. */
export function startServer(args, want) {
  return new Promise((resolve, reject) => {
    const proc = spawn(serverBinary(), ['serve', ...args], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    const urls = {};
    const t = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`no listening lines: ${out} ${err}`)); }, 20000);
    proc.stderr.on('data', (c) => { err += c; });
    proc.stdout.on('data', (c) => {
      out += c;
      for (const m of out.matchAll(/mimeo listening on (https?):\/\/(\S+)/g)) urls[m[1]] = `${m[1]}://${m[2]}`;
      if (want.every((k) => urls[k])) { clearTimeout(t); resolve({ proc, ...urls, stderr: () => err }); }
    });
    proc.on('exit', (code) => { clearTimeout(t); reject(new Error(`exited ${code}: ${err}`)); });
  });
}

/** SIGTERM, then waits for the exit (a server that already exited is left alone). */
export async function stopServer(s) {
  if (!s || s.proc.exitCode !== null) return;
  s.proc.removeAllListeners('exit');
  const done = new Promise((r) => s.proc.on('exit', r));
  s.proc.kill('SIGTERM');
  await done;
}
