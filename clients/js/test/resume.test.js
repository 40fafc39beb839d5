import { test } from 'node:test';
import assert from 'node:assert/strict';

import { MemoryStore } from '../threadbus.js';
import { agent, assertNoLossNoDup, client, publishLoop, publishN, startSidecar, waitFor } from './harness.js';

test('a sidecar restart (1012) while an agent publishes loses and duplicates nothing', async (t) => {
  const tid = 'js_restart';
  const sc = await startSidecar(t);
  const urls = [];
  const c = client(t, sc.wsURL, {
    WebSocket: class extends WebSocket {
      constructor(url, protocols) {
        urls.push(url);
        super(url, protocols);
      }
    },
  });
  const first = await c.tb.bindThread(tid);
  assert.equal(first.recovered, true);

  const loop = publishLoop(t, sc.nats, tid);
  await waitFor(() => c.events.length >= 20, '20 events before the restart');

  const lastBefore = c.seqs(tid).at(-1);
  const stopAt = performance.now();
  await sc.stop();
  await waitFor(() => c.states.some((s) => s.state === 'disconnected' && s.code === 1012), 'the client to see 1012');
  const closedAt = c.states.find((s) => s.code === 1012).at;
  const sc2 = await sc.restart();
  const readyAt = performance.now();
  const bound = await waitFor(() => c.bounds[1], 'thread_bound after the restart');
  assert.equal(bound.threadId, tid);
  assert.equal(bound.recovered, true, 'the resume after a restart with the same data dir recovers');
  assert.equal(bound.epoch, first.epoch, 'same stream, same epoch');

  // Keep publishing for a while on the new sidecar, then check everything.
  const ackedAtResume = loop.acked().length;
  await waitFor(() => loop.acked().length >= ackedAtResume + 20, '20 more events after the restart');
  const acked = await loop.stop();
  await waitFor(() => new Set(c.seqs(tid)).size >= new Set(acked).size && acked.every((s) => c.seqs(tid).includes(s)), `all ${acked.length} acked events`);
  assertNoLossNoDup(c.seqs(tid), acked, 'events across the restart');
  assert.ok(c.events.every((e) => e.thread_id === tid));
  // Every reconnect asked for what came after the last delivered seq, not
  // for the replay grace's worth (deduplicated, that would pass the above).
  const resumes = urls.slice(1).map((u) => new URL(u).searchParams);
  assert.ok(resumes.length >= 1);
  for (const q of resumes) {
    assert.deepEqual([q.get('thread_id'), q.get('since'), q.get('epoch')], [tid, String(lastBefore), first.epoch]);
  }
  const msg =
    `resume after a sidecar restart: 1012 -> thread_bound on the new process ${(bound.at - closedAt).toFixed(0)} ms ` +
    `(restart of the process itself ${(readyAt - stopAt).toFixed(0)} ms; ready line -> thread_bound ${(bound.at - readyAt).toFixed(0)} ms; ` +
    `${acked.length} events acked, ${loop.errors()} publish errors during the restart, ${c.bounds[1].replayed} replayed on resume)`;
  t.diagnostic(msg);
  void sc2;
});

test('a new client with the same store resumes where the last one stopped (page reload)', async (t) => {
  const tid = 'js_reload';
  const sc = await startSidecar(t);
  const nc = await agent(t, sc.nats);
  const store = new MemoryStore(); // what sessionStorage is to a page
  const before = await publishN(nc, tid, 5);

  const c1 = client(t, sc.wsURL, { store });
  await c1.tb.bindThread(tid);
  await waitFor(() => c1.events.length === 5, 'the first page to get 5 events');
  assert.deepEqual(c1.seqs(), before);
  c1.tb.close();

  const missed = await publishN(nc, tid, 7);
  const c2 = client(t, sc.wsURL, { store });
  const b = await c2.tb.bindThread(tid);
  assert.equal(b.recovered, true);
  assert.equal(b.replayed, 7, 'only what the first page did not see is replayed');
  const live = await publishN(nc, tid, 3);
  await waitFor(() => c2.events.length === 10, '7 replayed and 3 live events');
  assert.deepEqual(c2.seqs(), [...missed, ...live]);
  assert.equal(c2.resets.length, 0);
});
