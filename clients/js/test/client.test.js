import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import * as pkg from '../threadbus.js';
import { ClientError } from '../threadbus.js';
import { agent, client, publishN, startSidecar, waitFor } from './harness.js';

test('threadbus.d.ts declares exactly what threadbus.js exports', () => {
  const dts = readFileSync(new URL('../threadbus.d.ts', import.meta.url), 'utf8');
  const declared = [...dts.matchAll(/^export declare (?:class|function|const) (\w+)/gm)].map((m) => m[1]).sort();
  assert.deepEqual(declared, Object.keys(pkg).sort());
});

test('send publishes a legacy frame when connected and rejects otherwise', async (t) => {
  const tid = 'js_send';
  const sc = await startSidecar(t);
  const nc = await agent(t, sc.nats);
  const c = client(t, sc.wsURL);
  await assert.rejects(c.tb.send('user_message', {}), (err) => err instanceof ClientError && err.code === 'not_connected');
  await c.tb.bindThread(tid);
  await c.tb.send('user_message', { content: 'hello', references: [], thread_id: tid });
  const msg = await waitFor(async () => {
    const r = JSON.parse(await nc.request('$JS.API.STREAM.MSG.GET.THREADS', JSON.stringify({ last_by_subj: `thread.${tid}.in` })));
    return r.message;
  }, 'the frame on thread.<tid>.in');
  assert.deepEqual(JSON.parse(Buffer.from(msg.data, 'base64').toString()), {
    type: 'user_message',
    payload: { content: 'hello', references: [], thread_id: tid },
  });
  c.tb.close();
  assert.equal(c.tb.state, 'closed');
  await assert.rejects(c.tb.send('user_message', {}), (err) => err.code === 'not_connected');
  await assert.rejects(c.tb.bindThread(tid), (err) => err.code === 'closed');
});

test('a frame over the size limit (1009) is reported and ends the client (terminal)', async (t) => {
  const tid = 'js_1009';
  const sc = await startSidecar(t, { args: ['--max-frame-bytes', '1024'] });
  const nc = await agent(t, sc.nats);
  const c = client(t, sc.wsURL, { minReconnectDelay: 10, maxReconnectDelay: 20 });
  await c.tb.bindThread(tid);
  const before = await publishN(nc, tid, 2);
  await waitFor(() => c.events.length === 2, '2 events');
  await c.tb.send('user_message', { content: 'x'.repeat(2000), thread_id: tid });
  await waitFor(() => c.tb.state === 'closed', 'the client closed by 1009');
  assert.ok(c.states.some((s) => s.code === 1009), 'the 1009 close in the state changes');
  assert.ok(c.errors.some((e) => e.code === 'frame_too_big'));
  await publishN(nc, tid, 2);
  // A terminal close schedules no reconnect: a barrier on the server side
  // (a fresh client bound to the thread gets all 4) shows the events were
  // there to deliver, and this client still has only the first 2.
  const d = client(t, sc.wsURL);
  await d.tb.bindThread(tid); // the replay grace (30 s) covers all 4
  await waitFor(() => d.events.length === 4, 'a fresh client gets all 4');
  assert.equal(c.bounds.length, 1, 'no reconnect after 1009');
  assert.deepEqual(c.seqs(), before);
});

test("the browser's online event skips the backoff wait", async (t) => {
  // Node has no window: a stand-in for its online event.
  const win = new EventTarget();
  globalThis.addEventListener = win.addEventListener.bind(win);
  globalThis.removeEventListener = win.removeEventListener.bind(win);
  t.after(() => {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
  });
  const sc = await startSidecar(t);
  const c = client(t, sc.wsURL, { minReconnectDelay: 60000, maxReconnectDelay: 60000 });
  await c.tb.bindThread('js_online');
  await sc.stop();
  const away = await waitFor(() => c.states.find((s) => s.state === 'disconnected'), 'the disconnect');
  await sc.restart();
  const at = performance.now();
  win.dispatchEvent(new Event('online'));
  await waitFor(() => c.bounds.length === 2, 'thread_bound after online');
  const took = performance.now() - at;
  assert.ok(took < away.delay || away.delay < 1000, `reconnected after ${took} ms, as the backoff (${away.delay} ms) would have`);
});
