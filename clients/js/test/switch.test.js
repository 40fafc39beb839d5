import { test } from 'node:test';
import assert from 'node:assert/strict';

import { SupersededError } from '../threadbus.js';
import { assertNoLossNoDup, client, publishLoop, startSidecar, waitFor } from './harness.js';

test('a switch under load delivers nothing of the old thread after bound; the last request wins', async (t) => {
  const sc = await startSidecar(t);
  const [a, b, c] = ['js_sw_a', 'js_sw_b', 'js_sw_c'];
  const loops = Object.fromEntries([a, b, c].map((tid) => [tid, publishLoop(t, sc.nats, tid, { pause: 1 })]));
  const cl = client(t, sc.wsURL);
  const timeline = []; // bound and event emissions, in order
  cl.tb.on('bound', (x) => timeline.push({ bound: x.threadId }));
  cl.tb.on('event', (e) => timeline.push({ event: e.thread_id, seq: e.seq }));

  await cl.tb.bindThread(a);
  await waitFor(() => cl.seqs(a).length >= 30, '30 events of A');
  await cl.tb.switchThread(b);
  await waitFor(() => cl.seqs(b).length >= 30, '30 events of B');

  // Three requests race; only the last one counts.
  const pa = cl.tb.switchThread(a);
  const pb = cl.tb.switchThread(b);
  const pc = cl.tb.switchThread(c);
  await assert.rejects(pa, SupersededError);
  await assert.rejects(pb, SupersededError);
  assert.equal((await pc).threadId, c);
  await waitFor(() => cl.seqs(c).length >= 30, '30 events of C');

  const ackedC = await loops[c].stop();
  await loops[a].stop();
  await loops[b].stop();
  await waitFor(() => ackedC.every((s) => cl.seqs(c).includes(s)), 'every event of C');

  // After each bound the app saw, only that thread's events.
  let current = null;
  for (const x of timeline) {
    if (x.bound) current = x.bound;
    else assert.equal(x.event, current, `an event of ${x.event} (seq ${x.seq}) after thread_bound of ${current}`);
  }
  assert.deepEqual(timeline.filter((x) => x.bound).map((x) => x.bound), [a, b, c], 'the app saw the bound of the last request only');
  // C was bound for the first time: grace replay, then live, all of it.
  assertNoLossNoDup(cl.seqs(c), ackedC, 'events of C');
  // A and B each were left once, delivered in order without duplicates.
  assertNoLossNoDup(cl.seqs(a), [], 'events of A');
  assertNoLossNoDup(cl.seqs(b), [], 'events of B');
});

test('switching back resumes the old thread from its position', async (t) => {
  const sc = await startSidecar(t);
  const [a, b] = ['js_back_a', 'js_back_b'];
  const la = publishLoop(t, sc.nats, a, { pause: 1 });
  const cl = client(t, sc.wsURL);
  await cl.tb.bindThread(a);
  await waitFor(() => cl.seqs(a).length >= 20, '20 events of A');
  await cl.tb.switchThread(b);
  const n = la.acked().length;
  await waitFor(() => la.acked().length >= n + 20, '20 events of A published while away');
  const back = await cl.tb.switchThread(a);
  assert.equal(back.recovered, true);
  assert.ok(back.replayed >= 20, `replayed ${back.replayed}, want the ones published while away`);
  const acked = await la.stop();
  await waitFor(() => acked.every((s) => cl.seqs(a).includes(s)), 'every event of A');
  assertNoLossNoDup(cl.seqs(a), acked, 'events of A, left and resumed');
});
