// The thread viewer: binds the thread typed in the form and shows what the
// client emits. Served by `threadbus serve` at /, with the client from
// @threadbus/client. The token, when given, lives in the input and in this
// module's memory only; positions live in memory too, so a reload shows the
// replay grace's worth of events again.

import { Threadbus } from '/ui/threadbus.js';

const $ = (id) => document.getElementById(id);
const wsURL = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
const maxRows = 1000;

let tb = null;
let replayLeft = 0;
let reconnects = 0;
let connectedOnce = false;
let shown = 0;

function connect() {
  tb?.close();
  connectedOnce = false;
  tb = new Threadbus(wsURL, {
    getToken: () => $('token').value.trim() || null,
  });
  tb.on('state', onState);
  tb.on('bound', onBound);
  tb.on('event', onEvent);
  tb.on('reset', (r) => log(`reset: the server could not resume thread ${r.threadId}; showing what it replays now`, 'bad'));
  tb.on('error', (e) => log(`error ${e.code}: ${e.message}`, 'bad'));
}

function onState(s) {
  const el = $('state');
  el.textContent = s.state;
  el.dataset.state = s.state;
  el.className = `state state-${s.state}`;
  $('conn-id').textContent = tb.connectionId ?? '-';
  if (s.state === 'connected') {
    if (connectedOnce) $('reconnects').textContent = String(++reconnects);
    connectedOnce = true;
    log(`connected as ${s.connectionId}`, 'good');
  } else if (s.state === 'disconnected') {
    const why = s.code ? `close ${s.code}${s.reason ? ` (${s.reason})` : ''}` : s.reason || '';
    log(`disconnected ${why}; attempt ${s.attempt} in ${s.delay} ms`, 'bad');
  } else if (s.state === 'closed') {
    const hint = s.code === 4401 ? ': a valid token is needed, enter one and bind again' : '';
    log(`closed${s.code ? ` with ${s.code}` : ''}${s.reason ? ` (${s.reason})` : ''}${hint}`, 'bad');
  }
}

function onBound(b) {
  replayLeft = b.replayed;
  $('bound-panel').hidden = false;
  $('bound-thread').textContent = b.threadId;
  $('bound-replayed').textContent = String(b.replayed);
  $('bound-recovered').textContent = String(b.recovered);
  $('bound-epoch').textContent = b.epoch;
  location.hash = `thread=${encodeURIComponent(b.threadId)}`;
  log(`thread_bound ${b.threadId}: replayed ${b.replayed}, recovered ${b.recovered}`, 'good');
}

function onEvent(e) {
  let how = 'direct';
  if (typeof e.seq === 'number') {
    how = replayLeft > 0 ? 'replay' : 'live';
    if (replayLeft > 0) replayLeft--;
  }
  const { thread_id: _t, seq, type, ...rest } = e;
  const tr = document.createElement('tr');
  tr.className = how;
  if (typeof seq === 'number') tr.dataset.seq = String(seq);
  tr.append(
    cell('seq', seq ?? ''),
    cell('type', type ?? ''),
    cell('how', how),
    cell('time', clock()),
    cell('body', ''),
  );
  const code = document.createElement('code');
  code.textContent = JSON.stringify(rest);
  tr.lastChild.append(code);
  const body = $('events').tBodies[0];
  body.prepend(tr);
  while (body.rows.length > maxRows) body.deleteRow(-1);
  $('events').hidden = false;
  $('events-empty').hidden = true;
  $('event-count').textContent = String(++shown);
}

// clock is the local time of day with milliseconds, 24-hour.
function clock() {
  const d = new Date();
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function cell(cls, text) {
  const td = document.createElement('td');
  td.className = cls;
  td.textContent = String(text);
  return td;
}

function log(text, cls = '') {
  const li = document.createElement('li');
  if (cls) li.className = cls;
  const time = document.createElement('time');
  time.textContent = clock();
  li.append(time, text);
  $('log').prepend(li);
  while ($('log').children.length > 300) $('log').lastChild.remove();
}

async function bind(threadId) {
  if (!tb || tb.state === 'closed') connect();
  if (tb.threadId !== threadId) {
    $('events').tBodies[0].replaceChildren();
    shown = 0;
    $('event-count').textContent = '0';
  }
  try {
    await tb.bindThread(threadId);
  } catch (err) {
    if (err.name !== 'SupersededError') log(`bind ${threadId}: ${err.message}`, 'bad');
  }
}

$('bind-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  bind($('thread').value.trim());
});

const fromHash = /thread=([A-Za-z0-9_-]{1,128})/.exec(location.hash)?.[1];
connect();
if (fromHash) {
  $('thread').value = fromHash;
  bind(fromHash);
}
