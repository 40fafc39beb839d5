import { test } from 'node:test';
import assert from 'node:assert/strict';

import { agent, assertNoLossNoDup, client, startSidecar, waitFor } from './harness.js';

test('a slow-consumer close (1008) resumes losslessly', async (t) => {
  const tid = 'js_slow';
  // A send queue smaller than one event: any live event that arrives while
  // another is still queued overflows it, so bursts cut the client again
  // and again, and it must resume from its position every time.
  const sc = await startSidecar(t, { args: ['--send-queue-bytes', '1'] });
  const nc = await agent(t, sc.nats);
  const c = client(t, sc.wsURL);
  await c.tb.bindThread(tid);

  const pad = 'x'.repeat(2000);
  const acked = [];
  let bursts = 0;
  while (!c.states.some((s) => s.code === 1008)) {
    assert.ok(bursts < 50, `no 1008 after ${bursts} bursts of 100 events`);
    bursts++;
    const seqs = await Promise.all(Array.from({ length: 100 }, (_, i) => nc.publish(tid, { type: 'tool_completed', payload: { i, pad } })));
    acked.push(...seqs);
  }
  acked.sort((a, b) => a - b);
  await waitFor(() => acked.every((s) => c.seqs(tid).includes(s)), `all ${acked.length} events after the 1008 closes`, 60000);
  assertNoLossNoDup(c.seqs(tid), acked, 'events across slow-consumer closes');
  const cuts = c.states.filter((s) => s.code === 1008).length;
  assert.ok(c.bounds.length > cuts, 'every 1008 was followed by a new thread_bound');
  assert.ok(c.bounds.every((b) => b.recovered));
  t.diagnostic(`${acked.length} events in ${bursts} bursts, ${cuts} slow-consumer closes, ${c.bounds.length} bindings, nothing lost or duplicated`);
});
