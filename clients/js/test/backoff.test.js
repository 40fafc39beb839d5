import { test } from 'node:test';
import assert from 'node:assert/strict';

import { backoffDelay, closePolicy } from '../threadbus.js';
import { client, startSidecar, waitFor } from './harness.js';

test('backoffDelay is full jitter below a cap that doubles up to the maximum', () => {
  const top = () => 0.999999;
  const caps = [1, 2, 3, 4, 5, 6, 7, 8, 9].map((n) => backoffDelay(n, 100, 5000, top) + 1);
  assert.deepEqual(caps, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
  assert.equal(backoffDelay(3, 100, 5000, () => 0), 0);
  for (let i = 0; i < 1000; i++) {
    const d = backoffDelay(4, 100, 5000);
    assert.ok(d >= 0 && d < 800);
  }
});

test('the close-code table of the contract', () => {
  for (const code of [1006, 1008, 1011, 1012, 1013, 4429]) assert.equal(closePolicy[code], 'retry', `code ${code}`);
  assert.equal(closePolicy[4001], 'refresh');
  for (const code of [1009, 4401, 4403]) assert.equal(closePolicy[code], 'terminal', `code ${code}`);
});

test('backoff grows while the server is away and is reset after thread_bound', async (t) => {
  const min = 10;
  const max = 10000;
  const sc = await startSidecar(t);
  const c = client(t, sc.wsURL, { minReconnectDelay: min, maxReconnectDelay: max });
  await c.tb.bindThread('js_backoff');

  await sc.stop();
  const away = await waitFor(() => {
    const d = c.states.filter((s) => s.state === 'disconnected');
    return d.length >= 6 && d;
  }, '6 failed attempts');
  assert.equal(away[0].code, 1012);
  assert.deepEqual(away.map((s) => s.attempt), [1, 2, 3, 4, 5, 6], 'attempts count up while nothing binds');
  for (const s of away) assert.ok(s.delay < Math.min(max, min * 2 ** (s.attempt - 1)), `attempt ${s.attempt}: delay ${s.delay} over its cap`);

  const sc2 = await sc.restart();
  await waitFor(() => c.bounds.length === 2, 'thread_bound after the restart', 30000);
  const n = c.states.length;
  await sc2.stop();
  const next = await waitFor(() => c.states.slice(n).find((s) => s.state === 'disconnected'), 'the next disconnect');
  assert.equal(next.attempt, 1, 'the backoff starts over after thread_bound');
  assert.ok(next.delay < min);
});
