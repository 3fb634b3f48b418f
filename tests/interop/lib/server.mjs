// Spawns `mimeo serve` for a test suite and controls its life cycle.
//
// startServer() runs the binary (build/asan/mimeo, or $MIMEO_BIN relative to the repo root) with
// `--port 0` in a fresh temporary data folder and resolves once the server prints
// `mimeo listening on http://127.0.0.1:PORT`. With $MIMEO_TEST_EXTERNAL_URL set, nothing is
// spawned: the suites talk to that already-running server (used to check the tests themselves
// against a reference implementation); stop() is then a no-op and kill9()/restart() throw.

import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

const STARTUP_DEADLINE_MS = 20_000;
const STOP_DEADLINE_MS = 15_000;
const STDERR_KEEP = 64 * 1024;

/** Whether the suites run against an external server instead of a spawned binary. */
export const externalUrl = process.env.MIMEO_TEST_EXTERNAL_URL
  ? process.env.MIMEO_TEST_EXTERNAL_URL.replace(/\/+$/, '')
  : null;

/** Absolute path of the server binary under test. */
export function serverBinary() {
  return path.resolve(repoRoot, process.env.MIMEO_BIN || 'build/asan/mimeo');
}

function sanitizerEnv() {
  const env = { ...process.env };
  // Keep sanitizer reports readable and make them fail loudly; callers may override.
  if (!env.ASAN_OPTIONS) env.ASAN_OPTIONS = 'abort_on_error=0:detect_leaks=1';
  if (!env.UBSAN_OPTIONS) env.UBSAN_OPTIONS = 'print_stacktrace=1';
  return env;
}

/**
 * Starts a server.
 * @param {{dataDir?: string, args?: string[], env?: object}} [options]
 *   dataDir: reuse this folder (it is then not removed by stop()); otherwise a fresh one is made.
 *   args: extra command-line arguments for `mimeo serve`.
 *   env: extra environment variables for the process.
 *   bin: this binary (relative to the repository) instead of serverBinary().
 * @returns {Promise<Server>}
 */
export async function startServer(options = {}) {
  if (externalUrl) return externalServer();
  const ownsDir = !options.dataDir;
  const dataDir = options.dataDir ??
    await fs.mkdtemp(path.join(os.tmpdir(), 'mimeo-interop-'));
  const server = new Server(dataDir, ownsDir, options.args ?? []);
  server.extraEnv = options.env ?? {};
  if (options.bin) server.bin = path.resolve(repoRoot, options.bin);
  try {
    await server.launch();
  } catch (err) {
    if (ownsDir) await fs.rm(dataDir, { recursive: true, force: true });
    throw err;
  }
  return server;
}

class Server {
  constructor(dataDir, ownsDir, extraArgs) {
    this.dataDir = dataDir;
    this.ownsDir = ownsDir;
    this.extraArgs = extraArgs;
    this.proc = null;
    this.url = null;
    this.port = null;
    this.external = false;
    this.stderrText = '';
    this.exit = null;        // {code, signal} of the last process once it ended
    this.expectingExit = false;
  }

  /** The last 64 KiB of the current process's stderr. */
  stderr() { return this.stderrText; }

  async launch() {
    const bin = this.bin ?? serverBinary();
    if (!existsSync(bin)) {
      throw new Error(`server binary ${bin} does not exist (build it with \`make ${path.relative(repoRoot, bin)}\`)`);
    }
    const args = ['serve', '--data', this.dataDir, '--bind', '127.0.0.1', '--port', '0',
      ...this.extraArgs];
    this.stderrText = '';
    this.exit = null;
    this.expectingExit = false;
    const env = { ...sanitizerEnv(), ...(this.extraEnv ?? {}) };
    const proc = spawn(bin, args, { cwd: repoRoot, env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (chunk) => {
      this.stderrText = (this.stderrText + chunk).slice(-STDERR_KEEP);
    });
    const exited = new Promise((resolve) => {
      proc.on('exit', (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
    });
    this.exited = exited;
    proc.on('exit', (code, signal) => {
      if (!this.expectingExit) {
        // A crash (sanitizer report, assertion) while tests run: show why, it explains
        // the connection errors that follow.
        process.stderr.write(`\n[mimeo ${this.url ?? ''}] exited unexpectedly ` +
          `(code ${code}, signal ${signal}); stderr tail:\n${this.stderrText.slice(-8000)}\n`);
      }
    });

    const url = await new Promise((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => {
        fail(new Error(`mimeo did not print its listening line within ${STARTUP_DEADLINE_MS} ms`));
      }, STARTUP_DEADLINE_MS);
      const onData = (chunk) => {
        out += chunk;
        const m = out.match(/mimeo listening on (http:\/\/[^\s]+)/);
        if (m) {
          cleanup();
          resolve(m[1].replace(/\/+$/, ''));
        }
      };
      const onExit = (code, signal) => {
        fail(new Error(`mimeo exited during start-up (code ${code}, signal ${signal})`));
      };
      const onError = (err) => fail(err);
      const cleanup = () => {
        clearTimeout(timer);
        proc.stdout.off('data', onData);
        proc.off('exit', onExit);
        proc.off('error', onError);
        // Keep draining stdout so the server never blocks on a full pipe.
        proc.stdout.resume();
      };
      const fail = (err) => {
        cleanup();
        this.expectingExit = true;
        if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
        // Give stderr a moment to flush into the message.
        setTimeout(() => {
          err.message += `\nstdout: ${out}\nstderr: ${this.stderrText.slice(-8000)}`;
          reject(err);
        }, 100);
      };
      proc.stdout.setEncoding('utf8');
      proc.stdout.on('data', onData);
      proc.on('exit', onExit);
      proc.on('error', onError);
    });
    this.url = url;
    this.port = Number(new URL(url).port);
  }

  /** Whether the process is running. */
  running() {
    return this.proc !== null && this.exit === null;
  }

  /**
   * SIGTERM, wait for the exit (SIGKILL after a deadline), then remove the data folder unless it
   * was given by the caller or `keepData` is set.
   * @returns {Promise<{code: number|null, signal: string|null, stderr: string, killed: boolean}>}
   */
  async stop({ keepData = false } = {}) {
    let killed = false;
    if (this.running()) {
      this.expectingExit = true;
      this.proc.kill('SIGTERM');
      let timer;
      const deadline = new Promise((resolve) => { timer = setTimeout(resolve, STOP_DEADLINE_MS, 'timeout'); });
      const outcome = await Promise.race([this.exited, deadline]);
      clearTimeout(timer);
      if (outcome === 'timeout') {
        killed = true;
        this.proc.kill('SIGKILL');
        await this.exited;
      }
    }
    if (this.ownsDir && !keepData) {
      await fs.rm(this.dataDir, { recursive: true, force: true });
    }
    return { ...(this.exit ?? { code: null, signal: null }), stderr: this.stderrText, killed };
  }

  /** kill -9 the process and wait until it is gone; the data folder stays. */
  async kill9() {
    if (!this.running()) return;
    this.expectingExit = true;
    this.proc.kill('SIGKILL');
    await this.exited;
  }

  /** Starts the server again on the same data folder (stopping it first if it runs). */
  async restart() {
    if (this.running()) await this.stop({ keepData: true });
    await this.launch();
  }
}

function externalServer() {
  const u = new URL(externalUrl);
  return {
    url: externalUrl,
    port: Number(u.port || 80),
    dataDir: null,
    proc: null,
    external: true,
    stderr: () => '',
    running: () => true,
    stop: async () => ({ code: 0, signal: null, stderr: '', killed: false }),
    kill9: async () => { throw new Error('kill9() needs a spawned server'); },
    restart: async () => { throw new Error('restart() needs a spawned server'); },
  };
}
