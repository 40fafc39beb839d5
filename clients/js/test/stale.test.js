import { test } from 'node:test';
import assert from 'node:assert/strict';

import { agent, client, publishN, startSidecar, waitFor } from './harness.js';

test('a stale connection (server stopped with SIGSTOP) is detected by a missing pong and replaced', async (t) => {
  const tid = 'js_stale';
  const sc = await startSidecar(t);
  const nc = await agent(t, sc.nats);
  const c = client(t, sc.wsURL, { pingInterval: 200, pongTimeout: 400 });
  await c.tb.bindThread(tid);
  const before = await publishN(nc, tid, 3);
  await waitFor(() => c.events.length === 3, '3 events');
  const firstConn = c.tb.connectionId;

  sc.pause();
  const stoppedAt = performance.now();
  let resumed = false;
  t.after(() => resumed || sc.resume());
  const stale = await waitFor(() => c.states.find((s) => s.at > stoppedAt && s.state === 'disconnected'), 'the client to give up on the stopped server', 10000);
  assert.equal(stale.reason, 'no pong');
  const detectedIn = stale.at - stoppedAt;
  // While the server stays stopped, attempts time out instead of hanging.
  await waitFor(() => c.states.filter((s) => s.at > stoppedAt && s.reason === 'handshake timeout').length >= 1, 'a timed-out attempt', 10000);

  sc.resume();
  resumed = true;
  await waitFor(() => c.bounds.length >= 2 && c.tb.state === 'connected', 'a new binding after SIGCONT', 20000);
  assert.notEqual(c.tb.connectionId, firstConn);
  const after = await publishN(nc, tid, 3);
  await waitFor(() => c.events.length === 6, '3 more events');
  assert.deepEqual(c.seqs(), [...before, ...after]);
  t.diagnostic(`stale connection detected ${detectedIn.toFixed(0)} ms after SIGSTOP (ping every 200 ms, pong timeout 400 ms)`);
});
