// Test harness: the real threadbus binary, started per test, and helpers
// that wait on conditions (never on time alone).
//
// Environment:
//   THREADBUS_BIN       the binary to run; without it, `go build` makes one
//   THREADBUS_TEST_LOG  print every sidecar's log when its test ends

import { spawn, execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Threadbus } from '../threadbus.js';
import { connectNATS } from './nats.js';

const here = path.dirname(fileURLToPath(import.meta.url));
let builtBin = null;

function binary() {
  if (process.env.THREADBUS_BIN) return process.env.THREADBUS_BIN;
  if (!builtBin) {
    const dir = mkdtempSync(path.join(tmpdir(), 'threadbus-js-bin-'));
    builtBin = path.join(dir, 'threadbus');
    execFileSync('go', ['build', '-o', builtBin, './cmd/threadbus'], { cwd: path.join(here, '..', '..', '..'), stdio: 'inherit' });
    process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  }
  return builtBin;
}

/** A fresh directory removed when the test ends. */
export function tempDir(t) {
  const dir = mkdtempSync(path.join(tmpdir(), 'threadbus-js-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * Starts `threadbus serve` and resolves once it logged its ready line.
 * listen and natsListen default to ports the OS picks; restart() starts the
 * same sidecar again on the same ports and data dir. Killed when the test ends.
 */
export async function startSidecar(t, { args = [], dataDir = tempDir(t), listen = '127.0.0.1:0', natsListen = '127.0.0.1:0' } = {}) {
  const logs = [];
  const proc = spawn(binary(), ['serve', '--listen', listen, '--nats-listen', natsListen, '--data-dir', dataDir, ...args], {
    env: hermeticEnv(),
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const ready = new Promise((resolve, reject) => {
    let rest = '';
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (chunk) => {
      const lines = (rest + chunk).split('\n');
      rest = lines.pop();
      for (const line of lines) {
        logs.push(line);
        if (/msg="?threadbus ready/.test(line)) {
          const http = /\shttp="?([^"\s]+)/.exec(line)?.[1];
          const nats = /\snats="?([^"\s]+)/.exec(line)?.[1];
          resolve({ http, nats });
        }
      }
    });
    exited.then(({ code, signal }) => reject(new Error(`threadbus exited before it was ready (${code ?? signal}):\n${logs.join('\n')}`)));
  });
  t.after(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGCONT');
      proc.kill('SIGKILL');
      await exited;
    }
    if (process.env.THREADBUS_TEST_LOG) t.diagnostic(`sidecar log:\n${logs.join('\n')}`);
  });
  const { http, nats } = await withTimeout(ready, 30000, 'sidecar ready');
  const sc = {
    http,
    nats,
    dataDir,
    args,
    wsURL: `ws://${http}/ws`,
    logs,
    logTail: (n = 60) => logs.slice(-n).join('\n'),
    /** SIGTERM, and resolves once the process exited (with status 0). */
    async stop() {
      proc.kill('SIGTERM');
      const { code, signal } = await withTimeout(exited, 20000, 'sidecar exit after SIGTERM');
      if (code !== 0) throw new Error(`threadbus exited with ${code ?? signal} after SIGTERM:\n${sc.logTail()}`);
    },
    pause: () => proc.kill('SIGSTOP'),
    resume: () => proc.kill('SIGCONT'),
    /** A new process on the same ports and data dir. */
    restart: () => startSidecar(t, { args, dataDir, listen: http, natsListen: new URL(nats).host }),
  };
  return sc;
}

/**
 * Starts a sidecar with --auth jwt (HS256 secret in a fresh file, every
 * authenticated user may bind every thread) and returns it with token(user,
 * ttl), which mints a token with `threadbus token`.
 */
export async function startAuthSidecar(t, { args = [], ...opts } = {}) {
  const secretFile = path.join(tempDir(t), 'jwt.secret');
  writeFileSync(secretFile, randomBytes(32).toString('base64') + '\n', { mode: 0o600 });
  const sc = await startSidecar(t, { ...opts, args: ['--auth', 'jwt', '--jwt-secret-file', secretFile, '--authz', 'none', ...args] });
  sc.secretFile = secretFile;
  sc.token = async (user, ttl = '1h', file = secretFile) => {
    const { stdout } = await promisify(execFile)(binary(), ['token', '--secret-file', file, '--user', user, '--ttl', ttl], { env: hermeticEnv() });
    return stdout.trim();
  };
  return sc;
}

function hermeticEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('THREADBUS_') && !k.startsWith('NATS_')) env[k] = v;
  }
  return env;
}

export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Polls cond every 10 ms until it returns a truthy value, which it resolves with. */
export async function waitFor(cond, what, ms = 20000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * A Threadbus whose every emission is recorded, closed when the test ends.
 * Short delays by default, so tests do not wait for production backoffs.
 */
export function client(t, url, options = {}) {
  const tb = new Threadbus(url, { minReconnectDelay: 20, maxReconnectDelay: 500, ...options });
  const rec = { tb, states: [], bounds: [], events: [], resets: [], errors: [] };
  tb.on('state', (s) => rec.states.push({ ...s, at: performance.now() }));
  tb.on('bound', (b) => rec.bounds.push({ ...b, at: performance.now() }));
  tb.on('event', (e) => rec.events.push(e));
  tb.on('reset', (r) => rec.resets.push(r));
  tb.on('error', (e) => rec.errors.push(e));
  rec.seqs = (tid) => rec.events.filter((e) => tid === undefined || e.thread_id === tid).map((e) => e.seq);
  t.after(() => tb.close());
  return rec;
}

/** Connects an agent to the sidecar's NATS server; closed when the test ends. */
export async function agent(t, natsURL) {
  const nc = await connectNATS(natsURL);
  t.after(() => nc.close());
  return nc;
}

/** Publishes n events to tid one after the other; resolves with their seqs. */
export async function publishN(nc, tid, n, extra = {}) {
  const seqs = [];
  for (let i = 0; i < n; i++) seqs.push(await nc.publish(tid, { type: 'agent_thinking', payload: { step_number: i, ...extra } }));
  return seqs;
}

/**
 * An agent that keeps publishing to tid until stop() and survives restarts
 * of the NATS server: it reconnects to natsURL and goes on. A publish that
 * got no ack may or may not be stored; acked() holds the seqs that were
 * acknowledged, attempted() the step numbers of every try.
 */
export function publishLoop(t, natsURL, tid, { pause = 2 } = {}) {
  let stopped = false;
  const acked = [];
  let tries = 0;
  let errors = 0;
  const done = (async () => {
    let nc = null;
    while (!stopped) {
      try {
        nc ??= await connectNATS(natsURL, { timeout: 2000 });
        acked.push(await nc.publish(tid, { type: 'agent_thinking', payload: { step_number: tries++ } }));
      } catch {
        errors++;
        nc?.close();
        nc = null;
        await new Promise((r) => setTimeout(r, 50));
        continue;
      }
      await new Promise((r) => setTimeout(r, pause));
    }
    nc?.close();
  })();
  const loop = {
    acked: () => acked.slice(),
    tries: () => tries,
    errors: () => errors,
    async stop() {
      stopped = true;
      await done;
      return acked.slice();
    },
  };
  t.after(() => loop.stop());
  return loop;
}

/** Asserts that got is strictly increasing and contains every seq of want. */
export function assertNoLossNoDup(got, want, what) {
  for (let i = 1; i < got.length; i++) {
    if (got[i] <= got[i - 1]) throw new Error(`${what}: seq ${got[i]} after ${got[i - 1]} (duplicate or out of order)`);
  }
  const have = new Set(got);
  const missing = want.filter((s) => !have.has(s));
  if (missing.length) throw new Error(`${what}: ${missing.length} of ${want.length} events lost, first ${missing.slice(0, 10)}`);
}
