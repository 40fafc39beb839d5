// A minimal NATS client for the tests: core NATS requests over the text
// protocol, enough to publish to JetStream with an ack (a request to the
// subject, answered by the stream) and to ask the JetStream API. It plays the
// agent against the real nats-server embedded in the threadbus binary; it is
// not part of the package.

import net from 'node:net';
import { randomUUID } from 'node:crypto';

const CRLF = '\r\n';

export async function connectNATS(url, { timeout = 5000 } = {}) {
  const u = new URL(url);
  const sock = net.connect({ host: u.hostname, port: Number(u.port) });
  const nc = new NATSConn(sock, timeout);
  await nc.ready;
  return nc;
}

class NATSConn {
  #sock;
  #buf = Buffer.alloc(0);
  #inbox = `_INBOX.${randomUUID().replaceAll('-', '')}`;
  #next = 0;
  #waiting = new Map(); // reply subject -> {resolve, reject, timer}
  #timeout;
  #closed = false;
  #closeErr = null;

  constructor(sock, timeout) {
    this.#sock = sock;
    this.#timeout = timeout;
    this.ready = new Promise((resolve, reject) => {
      this._ready = { resolve, reject };
    });
    sock.on('data', (d) => this.#onData(d));
    sock.on('error', (err) => this.#fail(err));
    sock.on('close', () => this.#fail(new Error('nats: connection closed')));
  }

  get closed() {
    return this.#closed;
  }

  #fail(err) {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeErr = err;
    this._ready.reject(err);
    for (const w of this.#waiting.values()) {
      clearTimeout(w.timer);
      w.reject(err);
    }
    this.#waiting.clear();
    this.#sock.destroy();
  }

  close() {
    this.#fail(new Error('nats: closed'));
  }

  #onData(d) {
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, d]) : d;
    for (;;) {
      const eol = this.#buf.indexOf(CRLF);
      if (eol < 0) return;
      const line = this.#buf.subarray(0, eol).toString();
      const [op, ...args] = line.split(' ');
      switch (op.toUpperCase()) {
        case 'INFO':
          this.#buf = this.#buf.subarray(eol + 2);
          this.#sock.write(
            'CONNECT ' +
              JSON.stringify({ verbose: false, pedantic: false, lang: 'node-test', version: '0', protocol: 1, headers: true, no_responders: true }) +
              CRLF +
              `SUB ${this.#inbox}.* 1${CRLF}PING${CRLF}`,
          );
          continue;
        case 'PING':
          this.#buf = this.#buf.subarray(eol + 2);
          this.#sock.write('PONG' + CRLF);
          continue;
        case 'PONG':
          this.#buf = this.#buf.subarray(eol + 2);
          this._ready.resolve();
          continue;
        case '+OK':
          this.#buf = this.#buf.subarray(eol + 2);
          continue;
        case '-ERR':
          this.#buf = this.#buf.subarray(eol + 2);
          this.#fail(new Error(`nats: ${line}`));
          return;
        case 'MSG':
        case 'HMSG': {
          // MSG subject sid [reply] size / HMSG subject sid [reply] hsize size
          const size = Number(args[args.length - 1]);
          const hsize = op === 'HMSG' ? Number(args[args.length - 2]) : 0;
          if (this.#buf.length < eol + 2 + size + 2) return; // wait for the body
          const body = this.#buf.subarray(eol + 2, eol + 2 + size);
          this.#buf = this.#buf.subarray(eol + 2 + size + 2);
          this.#onMsg(args[0], body.subarray(0, hsize).toString(), body.subarray(hsize).toString());
          continue;
        }
        default:
          this.#fail(new Error(`nats: unexpected ${line}`));
          return;
      }
    }
  }

  #onMsg(subject, headers, body) {
    const w = this.#waiting.get(subject);
    if (!w) return;
    this.#waiting.delete(subject);
    clearTimeout(w.timer);
    if (headers.startsWith('NATS/1.0 503')) {
      w.reject(new Error('nats: no responders'));
      return;
    }
    w.resolve(body);
  }

  /** Sends body to subject and resolves with the reply's body. */
  request(subject, body) {
    if (this.#closed) return Promise.reject(this.#closeErr);
    const reply = `${this.#inbox}.${this.#next++}`;
    const data = Buffer.from(body);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(reply);
        reject(new Error(`nats: request to ${subject} timed out`));
      }, this.#timeout);
      this.#waiting.set(reply, { resolve, reject, timer });
      this.#sock.write(`PUB ${subject} ${reply} ${data.length}${CRLF}`);
      this.#sock.write(data);
      this.#sock.write(CRLF);
    });
  }

  /** Stores body on thread.<tid>.out and resolves with its stream seq. */
  async publish(tid, event) {
    const ack = JSON.parse(await this.request(`thread.${tid}.out`, JSON.stringify(event)));
    if (ack.error) throw new Error(`nats: publish to thread ${tid}: ${JSON.stringify(ack.error)}`);
    return ack.seq;
  }

  /** The THREADS stream's state: {messages, first_seq, last_seq, ...}. */
  async streamState() {
    const info = JSON.parse(await this.request('$JS.API.STREAM.INFO.THREADS', ''));
    if (info.error) throw new Error(`nats: stream info: ${JSON.stringify(info.error)}`);
    return info.state;
  }
}
