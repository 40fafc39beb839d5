import { test } from 'node:test';
import assert from 'node:assert/strict';

import { MemoryStore } from '../threadbus.js';
import { agent, client, publishN, startSidecar, waitFor } from './harness.js';

test('reset fires when retention removed what the client needs', async (t) => {
  const tid = 'js_retention';
  const sc = await startSidecar(t, { args: ['--retention', '2s'] });
  const nc = await agent(t, sc.nats);
  const store = new MemoryStore();

  const c1 = client(t, sc.wsURL, { store });
  await c1.tb.bindThread(tid);
  const seen = await publishN(nc, tid, 3);
  await waitFor(() => c1.events.length === 3, 'the first 3 events');
  c1.tb.close();

  const missed = await publishN(nc, tid, 2);
  await waitFor(async () => (await nc.streamState()).first_seq > missed.at(-1), 'retention to remove the missed events', 20000);
  const fresh = await publishN(nc, tid, 1);

  const c2 = client(t, sc.wsURL, { store });
  const b = await c2.tb.bindThread(tid);
  assert.equal(b.recovered, false);
  assert.deepEqual(c2.resets, [{ threadId: tid, epoch: b.epoch }]);
  await waitFor(() => c2.events.length === 1, 'the event still stored');
  assert.deepEqual(c2.seqs(), fresh);
  assert.ok(seen.at(-1) < fresh[0]);

  // The position starts over from what the reset delivered.
  const live = await publishN(nc, tid, 2);
  await waitFor(() => c2.events.length === 3, 'live events after the reset');
  assert.deepEqual(c2.seqs(), [...fresh, ...live]);
});
