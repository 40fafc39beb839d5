import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';

import { UnauthorizedError } from '../threadbus.js';
import { agent, client, publishN, startAuthSidecar, tempDir, waitFor } from './harness.js';

test('a 4001 (token expired) close calls getToken again and resumes', async (t) => {
  const tid = 'js_auth_expiry';
  // No leeway: the connection is closed at the token's exp.
  const sc = await startAuthSidecar(t, { args: ['--jwt-leeway', '0s'] });
  const nc = await agent(t, sc.nats);
  const tokens = [];
  const getToken = async () => {
    // The first token lives 2 s, the ones after an hour.
    const tok = await sc.token('u-1', tokens.length === 0 ? '2s' : '1h');
    tokens.push(tok);
    return tok;
  };
  const c = client(t, sc.wsURL, { getToken });
  await c.tb.bindThread(tid);
  assert.equal(tokens.length, 1);
  const before = await publishN(nc, tid, 3);
  await waitFor(() => c.events.length === 3, '3 events');

  await waitFor(() => c.states.some((s) => s.code === 4001), 'the 4001 close at exp', 10000);
  assert.ok(c.errors.some((e) => e.code === 'token_expired'), 'the error frame before the close');
  await waitFor(() => c.bounds.length === 2 && c.tb.state === 'connected', 'the binding with a fresh token');
  assert.equal(tokens.length, 2, 'getToken was called once more, after 4001');
  assert.equal(c.bounds[1].recovered, true);
  const after = await publishN(nc, tid, 3);
  await waitFor(() => c.events.length === 6, '3 more events');
  assert.deepEqual(c.seqs(), [...before, ...after]);
});

test('4401 (unauthorized) is terminal', async (t) => {
  const sc = await startAuthSidecar(t);
  const other = path.join(tempDir(t), 'other.secret');
  writeFileSync(other, 'another secret of at least thirty-two bytes\n');
  let calls = 0;
  const c = client(t, sc.wsURL, {
    getToken: () => {
      calls++;
      return sc.token('u-1', '1h', other); // signed with a key the sidecar does not know
    },
  });
  const bound = c.tb.bindThread('js_auth_denied');
  await assert.rejects(bound, (err) => err.code === 'closed');
  assert.equal(c.tb.state, 'closed');
  const last = c.states.at(-1);
  assert.deepEqual([last.state, last.code], ['closed', 4401]);
  assert.ok(c.errors.some((e) => e.code === 'unauthorized'));
  // Terminal: no attempt follows. A retry would come within the test
  // client's maxReconnectDelay (500 ms); wait a little longer than that.
  await new Promise((r) => setTimeout(r, 700));
  assert.equal(c.states.filter((s) => s.state === 'connecting').length, 1);
  assert.equal(calls, 1);
});

test('without a token the server says 4401, and a getToken that throws UnauthorizedError stops before connecting', async (t) => {
  const sc = await startAuthSidecar(t);
  const c1 = client(t, sc.wsURL);
  await assert.rejects(c1.tb.bindThread('js_auth_none'), (err) => err.code === 'closed');
  assert.equal(c1.states.at(-1).code, 4401);

  let opened = 0;
  const c2 = client(t, sc.wsURL, {
    getToken: () => {
      throw new UnauthorizedError('logged out');
    },
    WebSocket: class extends WebSocket {
      constructor(...args) {
        opened++;
        super(...args);
      }
    },
  });
  await assert.rejects(c2.tb.bindThread('js_auth_none'), (err) => err.code === 'closed');
  assert.equal(c2.tb.state, 'closed');
  assert.equal(opened, 0);
});
