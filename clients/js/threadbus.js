// @threadbus/client: a WebSocket client for a threadbus sidecar.
//
// One Threadbus object keeps one connection to /ws bound to the thread the
// app asked for. It reconnects by itself (full-jitter exponential backoff,
// reset once a thread is bound again), resumes every thread from the last
// {seq, epoch} it delivered, kept in a pluggable store, drops what it already
// delivered or what belongs to a thread the app left, and says `reset` when
// the server could not recover. No dependencies; browsers and Node.js 20+.
//
// Everything runs on the caller's event loop: handlers are called
// synchronously, one at a time, in the order frames arrived.

/** The connection states, in the order a healthy connection goes through them. */
export const State = Object.freeze({
  DISCONNECTED: 'disconnected',
  CONNECTING: 'connecting',
  CONNECTED: 'connected',
  CLOSED: 'closed',
});

/**
 * Thrown by a getToken callback when the user cannot get a token at all
 * (logged out): the client stops instead of retrying.
 */
export class UnauthorizedError extends Error {
  constructor(message = 'unauthorized') {
    super(message);
    this.name = 'UnauthorizedError';
  }
}

/** Rejects bindThread and switchThread calls that a later call replaced. */
export class SupersededError extends Error {
  constructor(threadId) {
    super(`binding to thread ${threadId} was replaced by a later request`);
    this.name = 'SupersededError';
    this.threadId = threadId;
  }
}

/** Rejects send, bindThread and switchThread when they cannot be done. */
export class ClientError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'ClientError';
    this.code = code;
  }
}

/**
 * What the client does after the server closed the connection with a code
 * (BRIEF, contract v2). Codes not listed retry with backoff too: a close the
 * client does not understand is no reason to give up on a user's thread.
 *   'retry'    reconnect with backoff and resume with since/epoch
 *   'refresh'  get a fresh token first, then as retry
 *   'terminal' stop: state becomes closed
 */
export const closePolicy = Object.freeze({
  1006: 'retry', // abnormal closure: network, refused, stale, failed handshake
  1008: 'retry', // slow consumer, rate limit
  // 1009: the server refused a frame this client sent as too big. The
  // contract's table makes it terminal: an app that sends such frames has a
  // bug a reconnect would only repeat. An `error` event with code
  // frame_too_big tells the app, which may connect again (bindThread).
  1009: 'terminal',
  1011: 'retry', // internal error
  1012: 'retry', // service restart
  1013: 'retry', // try again later
  4001: 'refresh', // token expired
  4401: 'terminal', // unauthorized
  4403: 'terminal', // closed by the backend
  4429: 'retry', // connection limit
});

const DEFAULTS = {
  minReconnectDelay: 500,
  maxReconnectDelay: 20000,
  pingInterval: 25000,
  pongTimeout: 10000,
};

/**
 * The delay before reconnect attempt number attempt (1, 2, ...): a uniform
 * random value between 0 and min(max, min * 2^(attempt-1)) ("full jitter"),
 * so that clients cut at the same instant do not come back at the same one.
 */
export function backoffDelay(attempt, min, max, random = Math.random) {
  const cap = Math.min(max, min * 2 ** Math.min(Math.max(attempt - 1, 0), 30));
  return Math.floor(random() * cap);
}

/** The default store: positions live as long as the object. */
export class MemoryStore {
  #items = new Map();
  getItem(key) {
    return this.#items.has(key) ? this.#items.get(key) : null;
  }
  setItem(key, value) {
    this.#items.set(key, String(value));
  }
  removeItem(key) {
    this.#items.delete(key);
  }
}

// Error codes that answer a bind request instead of a thread_bound.
const BIND_ERRORS = new Set(['invalid_thread_id', 'invalid_since', 'bind_failed', 'thread_forbidden', 'authz_unavailable']);

const POSITION_PREFIX = 'threadbus.position.';

/** base64url of the UTF-8 bytes of s, without padding. */
function base64url(s) {
  const bytes = new TextEncoder().encode(s);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export class Threadbus {
  #url;
  #opts;
  #WebSocket;
  #store;
  #handlers = new Map();

  #state = State.DISCONNECTED;
  #ws = null;
  #connectionId = null;
  #token = null;
  #needToken = true;
  #attempt = 0; // reconnect attempts since the last thread_bound
  #reconnectTimer = null;
  #handshakeTimer = null;
  #pingTimer = null;
  #pongTimer = null;
  #removeOnlineListener = null;

  // The thread the app wants, and the request waiting for its thread_bound.
  #wanted = null;
  #pending = null; // {threadId, resolve, reject}
  // The thread the server last bound this connection to, and its position.
  #bound = null; // {threadId, replayed, recovered, epoch}
  // Binds asked of the server on this connection and not answered yet: the
  // server answers them in order, so only the last answer counts.
  #outstanding = 0;
  #urlThread = null; // the thread named in the current connection's URL
  #lastSeq = null; // last seq delivered on the bound thread, in #bound.epoch

  /**
   * @param {string} url the sidecar's WebSocket endpoint, e.g. wss://host/ws
   * @param {object} [options] see threadbus.d.ts
   */
  constructor(url, options = {}) {
    this.#url = new URL(url);
    this.#opts = { ...DEFAULTS };
    for (const k of Object.keys(DEFAULTS)) {
      if (options[k] !== undefined) this.#opts[k] = options[k];
    }
    if (!(this.#opts.minReconnectDelay >= 0) || !(this.#opts.maxReconnectDelay >= this.#opts.minReconnectDelay)) {
      throw new RangeError('threadbus: want 0 <= minReconnectDelay <= maxReconnectDelay');
    }
    this.#opts.getToken = options.getToken ?? null;
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== 'function') {
      throw new TypeError('threadbus: no WebSocket implementation; pass options.WebSocket');
    }
    this.#store = options.store ?? new MemoryStore();
    if (typeof this.#store.getItem !== 'function' || typeof this.#store.setItem !== 'function') {
      throw new TypeError('threadbus: options.store needs getItem and setItem (like sessionStorage)');
    }
    const win = globalThis;
    if (typeof win.addEventListener === 'function' && typeof win.removeEventListener === 'function') {
      const listener = () => this.#reconnectNow();
      const remove = win.removeEventListener;
      win.addEventListener('online', listener);
      this.#removeOnlineListener = () => remove.call(win, 'online', listener);
    }
    // Connect on the next tick, so handlers registered right after the
    // constructor see every state change.
    queueMicrotask(() => {
      if (this.#state === State.DISCONNECTED) this.#connect();
    });
  }

  /** 'disconnected', 'connecting', 'connected' or 'closed'. */
  get state() {
    return this.#state;
  }

  /** The server's id of the current connection, or null. */
  get connectionId() {
    return this.#connectionId;
  }

  /** The thread the server has bound the connection to, or null. */
  get threadId() {
    return this.#bound && this.#bound.threadId === this.#wanted ? this.#wanted : null;
  }

  on(event, fn) {
    let set = this.#handlers.get(event);
    if (!set) this.#handlers.set(event, (set = new Set()));
    set.add(fn);
    return this;
  }

  off(event, fn) {
    this.#handlers.get(event)?.delete(fn);
    return this;
  }

  /**
   * Binds the connection to threadId and resolves with the thread_bound
   * ({threadId, replayed, recovered, epoch}) that answers it. Resumes from
   * the stored position of that thread. The last request wins: earlier ones
   * still waiting reject with SupersededError.
   */
  bindThread(threadId) {
    if (typeof threadId !== 'string' || !/^[A-Za-z0-9_-]{1,128}$/.test(threadId)) {
      return Promise.reject(new ClientError('invalid_thread_id', `invalid thread id ${JSON.stringify(threadId)}`));
    }
    if (this.#state === State.CLOSED) {
      return Promise.reject(new ClientError('closed', 'threadbus: client closed'));
    }
    if (!this.#pending && this.#wanted === threadId && this.#bound?.threadId === threadId && this.#state === State.CONNECTED) {
      return Promise.resolve({ ...this.#bound });
    }
    this.#pending?.reject(new SupersededError(this.#pending.threadId));
    this.#wanted = threadId;
    const p = new Promise((resolve, reject) => {
      this.#pending = { threadId, resolve, reject };
    });
    // Otherwise the connection being opened asks once it is established,
    // or the next one names the thread in its URL.
    if (this.#state === State.CONNECTED) this.#requestBind(threadId);
    return p;
  }

  #requestBind(threadId) {
    this.#sendFrame({ type: 'switch_thread', payload: { thread_id: threadId, ...this.#resumeFrom(threadId) } });
    this.#outstanding++;
  }

  /** Same as bindThread: moves the connection to another thread. */
  switchThread(threadId) {
    return this.bindThread(threadId);
  }

  /**
   * Sends a legacy frame {type, payload}. Rejects when not connected: the
   * client never queues or resends frames.
   */
  send(type, payload = {}) {
    if (typeof type !== 'string' || type === '') {
      return Promise.reject(new ClientError('invalid_frame', 'threadbus: type must be a non-empty string'));
    }
    if (this.#state !== State.CONNECTED) {
      return Promise.reject(new ClientError('not_connected', `threadbus: cannot send while ${this.#state}`));
    }
    try {
      this.#sendFrame({ type, payload });
    } catch (err) {
      return Promise.reject(err);
    }
    return Promise.resolve();
  }

  /** Closes the connection for good; the state becomes 'closed'. */
  close() {
    if (this.#state === State.CLOSED) return;
    this.#stop(null, 'closed by the application');
  }

  // ---- connection lifecycle ----

  async #connect() {
    this.#clearTimer('reconnect');
    this.#setState(State.CONNECTING, {});
    let token = this.#token;
    if (this.#opts.getToken && (this.#needToken || token == null)) {
      try {
        token = await this.#opts.getToken();
      } catch (err) {
        if (this.#state !== State.CONNECTING) return;
        if (err instanceof UnauthorizedError || err?.name === 'UnauthorizedError') {
          this.#stop(4401, err.message || 'unauthorized');
          return;
        }
        this.#emit('error', { code: 'token_failed', message: String(err?.message ?? err) });
        this.#scheduleReconnect(null, 'getToken failed');
        return;
      }
      if (this.#state !== State.CONNECTING) return; // closed meanwhile
      this.#token = token ?? null;
      this.#needToken = false;
    }

    const url = new URL(this.#url);
    for (const k of ['thread_id', 'since', 'epoch']) url.searchParams.delete(k);
    if (this.#wanted) {
      url.searchParams.set('thread_id', this.#wanted);
      const r = this.#resumeFrom(this.#wanted);
      if (r.since !== undefined) {
        url.searchParams.set('since', String(r.since));
        url.searchParams.set('epoch', r.epoch);
      }
    }
    const protocols = token ? ['jwt-auth', 'jwt.' + base64url(token)] : undefined;
    let ws;
    try {
      ws = protocols ? new this.#WebSocket(url.href, protocols) : new this.#WebSocket(url.href);
    } catch (err) {
      this.#emit('error', { code: 'connect_failed', message: String(err?.message ?? err) });
      this.#scheduleReconnect(1006, String(err?.message ?? err));
      return;
    }
    this.#ws = ws;
    this.#bound = null;
    this.#lastSeq = null;
    this.#urlThread = this.#wanted;
    this.#outstanding = this.#wanted ? 1 : 0;
    this.#connectionId = null;
    // A server that accepts TCP but never completes the handshake (stopped,
    // overloaded) is as dead as one that stopped answering pings.
    this.#handshakeTimer = setTimeout(() => this.#abandon(ws, 'handshake timeout'), this.#opts.pongTimeout);
    ws.onmessage = (ev) => {
      if (ws === this.#ws) this.#onMessage(ev.data);
    };
    ws.onclose = (ev) => {
      if (ws === this.#ws) this.#onClose(ev.code, ev.reason);
    };
    let opened = false;
    ws.onopen = () => {
      opened = true;
    };
    // A failed handshake fires error, and by the standard close with 1006;
    // some implementations (Node 20's) fire error alone. An open
    // connection's error is followed by its close.
    ws.onerror = () => {
      if (ws === this.#ws && !opened) this.#onClose(1006, 'connection failed');
    };
  }

  #onClose(code, reason) {
    this.#ws = null;
    this.#clearConnectionTimers();
    const policy = closePolicy[code] ?? 'retry';
    if (code === 1009) {
      this.#emit('error', { code: 'frame_too_big', message: 'the server refused a frame as too big (1009); it was not delivered' });
    }
    if (policy === 'terminal') {
      this.#stop(code, reason);
      return;
    }
    if (policy === 'refresh') this.#needToken = true;
    this.#scheduleReconnect(code, reason);
  }

  // #abandon gives up on a connection that stopped answering: the closing
  // handshake cannot complete with a peer that does not read, so the socket
  // is left to the WebSocket implementation and forgotten.
  #abandon(ws, reason) {
    if (ws !== this.#ws) return;
    this.#ws = null;
    this.#clearConnectionTimers();
    detach(ws);
    try {
      ws.close(4000, reason);
    } catch {
      // already closing
    }
    this.#scheduleReconnect(1006, reason);
  }

  #scheduleReconnect(code, reason) {
    if (this.#state === State.CLOSED) return;
    this.#attempt++;
    const delay = backoffDelay(this.#attempt, this.#opts.minReconnectDelay, this.#opts.maxReconnectDelay);
    this.#setState(State.DISCONNECTED, { code, reason, delay, attempt: this.#attempt });
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      this.#connect();
    }, delay);
  }

  // #reconnectNow skips the backoff wait: the network is back.
  #reconnectNow() {
    if (this.#state === State.DISCONNECTED && this.#reconnectTimer) this.#connect();
  }

  #stop(code, reason) {
    this.#clearTimer('reconnect');
    this.#clearConnectionTimers();
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      detach(ws);
      try {
        ws.close(1000, 'client closed');
      } catch {
        // already closing
      }
    }
    this.#removeOnlineListener?.();
    this.#removeOnlineListener = null;
    this.#connectionId = null;
    this.#setState(State.CLOSED, { code, reason });
    if (this.#pending) {
      this.#pending.reject(new ClientError('closed', `threadbus: closed (${code ?? 'by the application'})`));
      this.#pending = null;
    }
  }

  // ---- frames ----

  #onMessage(data) {
    if (typeof data !== 'string') return; // the server sends text frames only
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return;
    }
    if (f === null || typeof f !== 'object') return;
    switch (f.type) {
      case 'connection_established':
        this.#clearTimer('handshake');
        this.#connectionId = f.payload?.connection_id ?? null;
        if (!this.#wanted) this.#attempt = 0; // nothing to bind: connected is as good as it gets
        this.#setState(State.CONNECTED, { connectionId: this.#connectionId });
        this.#startPing();
        // A bind asked for while this connection was being opened.
        if (this.#wanted && this.#wanted !== this.#urlThread) this.#requestBind(this.#wanted);
        return;
      case 'thread_bound':
        this.#onBound(f);
        return;
      case 'pong':
        this.#clearTimer('pong');
        return;
      case 'error':
        this.#onError(f.payload?.code ?? 'unknown', f.payload?.message ?? '');
        return;
    }
    if (typeof f.seq === 'number' && typeof f.thread_id === 'string') {
      this.#onEvent(f);
      return;
    }
    // A frame the backend sent to this one connection (conn.<cid>.out):
    // not stored, so nothing to resume; passed on as it is.
    this.#emit('event', f);
  }

  #onBound(f) {
    const p = f.payload ?? {};
    const b = {
      threadId: p.thread_id ?? f.thread_id,
      replayed: p.replayed ?? 0,
      recovered: p.recovered !== false,
      epoch: p.epoch ?? '',
    };
    this.#bound = b;
    this.#lastSeq = null;
    if (this.#outstanding > 0) this.#outstanding--;
    // The answer to a request the app already replaced: what follows is
    // dropped until the last request's thread_bound.
    if (this.#outstanding > 0) return;
    if (this.#pending && this.#pending.threadId !== b.threadId) return;
    if (!this.#pending && this.#wanted !== b.threadId) {
      // A frame the app sent named another thread, and the server followed it.
      this.#wanted = b.threadId;
    }
    this.#attempt = 0;
    const pos = this.#position(b.threadId);
    if (!b.recovered) {
      this.#forget(b.threadId);
    } else {
      this.#lastSeq = pos && pos.epoch === b.epoch ? pos.seq : null;
    }
    const pending = this.#pending;
    this.#pending = null;
    this.#emit('bound', { ...b });
    if (!b.recovered) this.#emit('reset', { threadId: b.threadId, epoch: b.epoch });
    pending?.resolve({ ...b });
  }

  #onError(code, message) {
    this.#emit('error', { code, message });
    if (!BIND_ERRORS.has(code) || this.#outstanding === 0) return;
    // The server refused a bind: it keeps the previous binding, if any.
    this.#outstanding--;
    if (this.#outstanding > 0 || !this.#pending) return;
    const pending = this.#pending;
    this.#pending = null;
    this.#wanted = this.#bound ? this.#bound.threadId : null;
    pending.reject(new ClientError(code, message || `binding to thread ${pending.threadId} refused`));
  }

  #onEvent(ev) {
    const b = this.#bound;
    if (!b || this.#outstanding > 0 || ev.thread_id !== b.threadId || b.threadId !== this.#wanted) return;
    if (this.#lastSeq !== null && ev.seq <= this.#lastSeq) return; // already delivered in this epoch
    this.#lastSeq = ev.seq;
    this.#store.setItem(POSITION_PREFIX + b.threadId, JSON.stringify({ seq: ev.seq, epoch: b.epoch }));
    this.#emit('event', ev);
  }

  // #resumeFrom returns {since, epoch} of threadId's stored position, or {}.
  #resumeFrom(threadId) {
    const pos = this.#position(threadId);
    return pos ? { since: pos.seq, epoch: pos.epoch } : {};
  }

  #forget(threadId) {
    const key = POSITION_PREFIX + threadId;
    if (typeof this.#store.removeItem === 'function') this.#store.removeItem(key);
    else this.#store.setItem(key, ''); // read back as no position
  }

  #position(threadId) {
    let raw;
    try {
      raw = this.#store.getItem(POSITION_PREFIX + threadId);
    } catch {
      return null;
    }
    if (raw == null) return null;
    try {
      const pos = JSON.parse(raw);
      if (Number.isSafeInteger(pos?.seq) && pos.seq >= 0 && typeof pos.epoch === 'string') return pos;
    } catch {
      // unreadable: start over
    }
    return null;
  }

  #sendFrame(frame) {
    this.#ws.send(JSON.stringify(frame));
  }

  // ---- liveness ----

  #startPing() {
    this.#clearTimer('ping');
    this.#pingTimer = setInterval(() => {
      const ws = this.#ws;
      if (!ws || this.#pongTimer) return;
      try {
        this.#sendFrame({ type: 'ping', timestamp: Date.now() });
      } catch {
        return; // closing: the close event follows
      }
      this.#pongTimer = setTimeout(() => {
        this.#pongTimer = null;
        this.#abandon(ws, 'no pong');
      }, this.#opts.pongTimeout);
    }, this.#opts.pingInterval);
  }

  #clearConnectionTimers() {
    this.#clearTimer('handshake');
    this.#clearTimer('ping');
    this.#clearTimer('pong');
  }

  #clearTimer(which) {
    switch (which) {
      case 'reconnect':
        clearTimeout(this.#reconnectTimer);
        this.#reconnectTimer = null;
        break;
      case 'handshake':
        clearTimeout(this.#handshakeTimer);
        this.#handshakeTimer = null;
        break;
      case 'ping':
        clearInterval(this.#pingTimer);
        this.#pingTimer = null;
        break;
      case 'pong':
        clearTimeout(this.#pongTimer);
        this.#pongTimer = null;
        break;
    }
  }

  // ---- events ----

  #setState(state, info) {
    const previous = this.#state;
    this.#state = state;
    if (previous === state && state !== State.DISCONNECTED) return;
    this.#emit('state', { state, previous, ...info });
  }

  #emit(event, arg) {
    const set = this.#handlers.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(arg);
      } catch (err) {
        // A throwing handler must not break delivery to the others nor the
        // connection; report it where the platform reports uncaught errors.
        setTimeout(() => {
          throw err;
        });
      }
    }
  }
}

function detach(ws) {
  ws.onopen = null;
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = () => {};
}
