'use strict';
// The one load generator of `relaynet bench compare`.
//
// Theory of operation
// -------------------
// One process drives every system, so that the client side costs the same
// whatever is measured (a Python generator saturates near 70-140k deliveries/s
// on the benchmark machine; this one, pinned to its own core, takes several
// times that). It opens N subscriber connections and one publisher to the
// system under test, speaking that system's protocol:
//
//   relaynet, python,  the relaynet protocol v1 over `ws` (the Python broadcasters,
//   picows             websockets' and picows', speak the subset the benchmark needs)
//   socketio           socket.io-client, WebSocket transport only
//   ws                 plain `ws`: every text message is a payload
//   ceiling            plain `ws`, but the publisher sends batches of ready-made
//                      server frames that ws_server.js copies to the subscribers'
//                      sockets: a source cheaper than any system, so the figure
//                      is what this generator itself can take in
//
// Each payload is a JSON object {n, t, pad} of about --size bytes: n numbers
// the messages from 0, t is performance.now() at send. Subscribers live in this
// process, so receive time minus t is publish-to-deliver latency without clock
// skew. Every subscriber checks its own sequence: a number below the next one
// expected is a duplicate or out of order, a gap is a loss (until it comes late).
//
// Flow control is the same for every system: the publisher is never more than
// --window messages ahead of the slowest subscriber (the caller sizes it to the
// same number of deliveries in flight whatever N is). Acks are counted and timed
// but do not hold the publisher back: an ack window would throttle the systems
// that ack against the one that does not, and each server's own TCP backpressure
// already bounds what it accepts. So "deliveries/s" is the rate that every
// subscriber keeps up with, not queue growth.
//
// Everything is bounded: --seconds of publishing (at most MAX_MESSAGES), then
// at most DRAIN_CAP_MS for the last acks and deliveries (cut short after
// STALL_MS without progress), connecting within CONNECT_TIMEOUT_MS, and a hard
// exit after all of those. The result is one JSON line on stdout. In --mode idle
// the subscribers stay connected, a line {"idle": ...} says so, and the process
// waits for a line on stdin (or its end) before closing them and printing its
// result.

const { performance } = require('node:perf_hooks');
const WebSocket = require('ws');
const { io } = require('socket.io-client');

// The relaynet channel; `bench compare`'s channels scenario runs one generator per channel.
let channel = 'bench:compare';
// relaynet only: message n goes to channel `${channel}-${n % spread}` (`bench compare`'s
// spread scenario), and every subscriber subscribes to all of them.
let spread = 1;
const MAX_MESSAGES = 2_000_000;
const DRAIN_CAP_MS = 30_000;
const STALL_MS = 5_000;
const CONNECT_CONCURRENCY = 50; // handshakes at once, so a big N does not overrun accept queues
const CONNECT_TIMEOUT_MS = 120_000;
const IDLE_HOLD_CAP_MS = 300_000;
const CLOSE_CAP_MS = 10_000;
const LATENCY_SAMPLES = 262_144;
const PAYLOAD_OVERHEAD = 38; // bytes of {"n":..,"t":..,"pad":""} around the padding, roughly

// --- arguments ----------------------------------------------------------------------------

function parseArgs(argv) {
  const options = {
    system: '',
    url: '',
    mode: 'traffic',
    subscribers: 10,
    seconds: 5,
    rate: 0,
    size: 100,
    window: 1000,
    batch: 100,
    channel,
    spread: 1,
  };
  const names = {
    '--system': 'system',
    '--url': 'url',
    '--mode': 'mode',
    '--subscribers': 'subscribers',
    '--seconds': 'seconds',
    '--rate': 'rate',
    '--size': 'size',
    '--window': 'window',
    '--batch': 'batch',
    '--channel': 'channel',
    '--spread': 'spread',
  };
  for (let i = 2; i < argv.length; i += 2) {
    const key = names[argv[i]];
    if (!key) throw new Error(`unknown argument ${argv[i]}`);
    options[key] = typeof options[key] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!PROTOCOLS[options.system]) throw new Error(`unknown --system ${options.system}`);
  if (!['traffic', 'idle'].includes(options.mode)) {
    throw new Error(`unknown --mode ${options.mode}`);
  }
  if (!(options.window >= 1 && options.batch >= 1 && options.subscribers >= 1)) {
    throw new Error('--window, --batch and --subscribers must be at least 1');
  }
  if (!(Number.isInteger(options.spread) && options.spread >= 1)) {
    throw new Error('--spread must be a whole number of at least 1');
  }
  if (options.spread > 1 && options.system !== 'relaynet') {
    throw new Error('--spread needs channels: relaynet only');
  }
  options.batch = Math.min(options.batch, options.window);
  return options;
}

// --- measuring ----------------------------------------------------------------------------

// Keeps every stride-th value; when full it drops every other one and doubles the
// stride, so the sample stays spread over the whole run in bounded memory.
class Sampler {
  constructor(cap) {
    this.values = new Float64Array(cap);
    this.length = 0;
    this.stride = 1;
    this.count = 0;
    this.max = 0;
  }

  add(value) {
    if (value > this.max) this.max = value;
    if (this.count % this.stride === 0) {
      this.values[this.length++] = value;
      if (this.length === this.values.length) {
        for (let i = 0; i < this.length / 2; i++) this.values[i] = this.values[2 * i];
        this.length /= 2;
        this.stride *= 2;
      }
    }
    this.count++;
  }

  // Nearest rank; null for no values.
  percentile(q) {
    if (this.length === 0) return null;
    const sorted = this.values.slice(0, this.length).sort();
    return sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)];
  }
}

class SendTimes {
  constructor() {
    this.values = new Float64Array(65536);
  }

  set(n, t) {
    if (n >= this.values.length) {
      const bigger = new Float64Array(this.values.length * 2);
      bigger.set(this.values);
      this.values = bigger;
    }
    this.values[n] = t;
  }
}

class Subscriber {
  constructor() {
    this.next = 0; // the number expected next (with --spread: the lowest of nextIn's)
    this.nextIn = Array.from({ length: spread }, (_, c) => c); // per channel (n % spread)
    this.received = 0; // distinct messages, in order
    this.disordered = 0; // numbered below `next`: duplicate or late
    this.closed = false;
  }
}

// --- the run ------------------------------------------------------------------------------

class Run {
  constructor(options) {
    this.options = options;
    this.window = options.window;
    this.passed = new Uint32Array(options.window); // per message in the window: subscribers past it
    this.low = 0; // every message numbered below has reached (or was skipped by) every subscriber
    this.live = 0;
    this.sent = 0;
    this.acked = 0;
    this.ackErrors = 0;
    this.firstError = null;
    this.deliveries = 0;
    this.latency = new Sampler(LATENCY_SAMPLES);
    this.ackLatency = new Sampler(LATENCY_SAMPLES);
    this.sendTimes = new SendTimes();
    this.publishing = false;
    this.timer = null;
    this.publisher = null;
    this.pad = 'x'.repeat(Math.max(0, options.size - PAYLOAD_OVERHEAD));
    this.started = 0;
    this.stopped = 0;
    this.lastDelivery = 0;
    this.lastAck = 0;
  }

  payload(n) {
    const t = performance.now();
    this.sendTimes.set(n, t);
    return { n, t: Math.round(t * 1000) / 1000, pad: this.pad };
  }

  deliver(sub, data) {
    const now = performance.now();
    this.deliveries++;
    this.lastDelivery = now;
    const n = data.n;
    this.latency.add(now - data.t);
    // One order per channel: with --spread, channel n % spread carries n, n + spread, ...
    const c = n % spread;
    const expected = sub.nextIn[c];
    if (n < expected || n >= this.sent) {
      sub.disordered++;
      return;
    }
    for (let m = expected; m <= n; m += spread) this.passed[m % this.window]++;
    sub.nextIn[c] = n + spread;
    sub.next = spread === 1 ? n + 1 : Math.min(...sub.nextIn);
    sub.received++;
    this.advance();
  }

  ack(n) {
    const now = performance.now();
    this.acked++;
    this.lastAck = now;
    this.ackLatency.add(now - this.sendTimes.values[n]);
  }

  refuse(message) {
    this.ackErrors++;
    if (this.firstError === null) this.firstError = message;
  }

  drop(sub) {
    if (sub.closed) return;
    sub.closed = true;
    this.live--;
    this.advance();
  }

  advance() {
    const before = this.low;
    while (this.low < this.sent && this.passed[this.low % this.window] >= this.live) {
      this.passed[this.low % this.window] = 0;
      this.low++;
    }
    if (this.low !== before) this.pump();
  }

  start(publisher) {
    this.publisher = publisher;
    this.publishing = true;
    this.started = performance.now();
    this.cpu = process.cpuUsage();
    this.pump();
  }

  stopPublishing() {
    if (!this.publishing) return;
    this.publishing = false;
    this.stopped = performance.now();
    if (this.timer) clearTimeout(this.timer);
  }

  // Sends what the windows (and the rate) allow, in one burst, like any pipelining client.
  pump() {
    if (!this.publishing) return;
    const { rate } = this.options;
    const batch = this.publisher.batch;
    while (this.sent + batch <= MAX_MESSAGES) {
      if (this.sent + batch - this.low > this.window) return;
      const now = performance.now();
      if (now - this.started >= this.options.seconds * 1000) return this.stopPublishing();
      if (rate) {
        const due = this.started + (this.sent * 1000) / rate;
        if (now < due) {
          if (this.timer) clearTimeout(this.timer);
          this.timer = setTimeout(() => this.pump(), due - now);
          return;
        }
      }
      this.publisher.publish(this, this.sent);
      this.sent += batch;
    }
    this.stopPublishing();
  }

  caughtUp(subs) {
    if (this.publisher.acks && this.acked + this.ackErrors < this.sent) return false;
    return subs.every((sub) => sub.closed || sub.next >= this.sent);
  }

  // After publishing: the last acks, then every subscriber at the last message, bounded.
  drain(subs) {
    return new Promise((resolve) => {
      const capAt = performance.now() + DRAIN_CAP_MS;
      let seen = -1;
      let movedAt = performance.now();
      const check = setInterval(() => {
        const now = performance.now();
        const progress = this.deliveries + this.acked;
        if (progress !== seen) [seen, movedAt] = [progress, now];
        if (this.caughtUp(subs) || now > capAt || now - movedAt > STALL_MS) {
          clearInterval(check);
          resolve();
        }
      }, 20);
    });
  }

  summary(subs, connect) {
    const cpu = process.cpuUsage(this.cpu);
    const end = Math.max(this.lastDelivery, this.lastAck, this.stopped);
    const wallMs = Math.max(end - this.started, 1e-6);
    const deliverySpan = (this.lastDelivery - this.started) / 1000;
    const ackSpan = (this.lastAck - this.started) / 1000;
    const expected = this.publisher.acks ? this.acked : this.sent;
    return {
      ...connect,
      published: this.sent,
      acked: this.publisher.acks ? this.acked : null,
      ack_errors: this.ackErrors,
      first_error: this.firstError,
      publish_s: (this.stopped - this.started) / 1000,
      acks_per_s: this.publisher.acks && this.acked ? this.acked / ackSpan : null,
      deliveries: this.deliveries,
      deliveries_per_s: this.deliveries ? this.deliveries / deliverySpan : 0,
      latency_ms: {
        p50: this.latency.percentile(0.5),
        p99: this.latency.percentile(0.99),
        max: this.deliveries ? this.latency.max : null,
      },
      ack_ms: { p50: this.ackLatency.percentile(0.5), p99: this.ackLatency.percentile(0.99) },
      lost: subs.reduce((sum, sub) => sum + Math.max(0, expected - sub.received), 0),
      disordered: subs.reduce((sum, sub) => sum + sub.disordered, 0),
      disconnected: subs.filter((sub) => sub.closed).length,
      window: this.window,
      generator_cpu_cores: (cpu.user + cpu.system) / 1000 / wallMs,
    };
  }
}

// --- payloads -----------------------------------------------------------------------------

// Finds n and t in a frame's bytes without JSON.parse: parsing every frame would cost this
// generator more than many servers spend on it, and lower the ceiling it can measure.
// (Socket.IO's client parses its packets itself; that is part of using Socket.IO.)
const N_KEY = Buffer.from('"n":');
const T_KEY = Buffer.from('"t":');

function numberAt(bytes, start) {
  let whole = 0;
  let i = start;
  for (; i < bytes.length; i++) {
    const c = bytes[i];
    if (c < 48 || c > 57) break;
    whole = whole * 10 + (c - 48);
  }
  if (bytes[i] !== 46) return whole; // no '.'
  let fraction = 0;
  let scale = 1;
  for (i++; i < bytes.length; i++) {
    const c = bytes[i];
    if (c < 48 || c > 57) break;
    fraction = fraction * 10 + (c - 48);
    scale *= 10;
  }
  return whole + fraction / scale;
}

// {n, t} of the payload in a frame, or null for a frame without one (another op).
function payloadIn(bytes) {
  const n = bytes.indexOf(N_KEY);
  if (n < 0) return null;
  const t = bytes.indexOf(T_KEY, n);
  if (t < 0) return null;
  return { n: numberAt(bytes, n + N_KEY.length), t: numberAt(bytes, t + T_KEY.length) };
}

// --- protocols ----------------------------------------------------------------------------

// Every frame a connection receives goes through here from the moment it exists: the
// first frame can arrive together with the handshake, before any later listener.
class Inbox {
  constructor(ws) {
    this.queue = [];
    this.waiter = null;
    this.handler = null;
    this.closed = null;
    ws.on('message', (raw) => this.push(raw));
    ws.on('close', (code) => {
      this.closed = `closed (${code})`;
      if (this.waiter) this.waiter.reject(new Error(this.closed));
    });
  }

  push(raw) {
    if (this.handler) this.handler(raw);
    else if (this.waiter) this.waiter.resolve(raw);
    else this.queue.push(raw);
  }

  next() {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    if (this.closed) return Promise.reject(new Error(this.closed));
    return new Promise((resolve, reject) => {
      this.waiter = {
        resolve: (raw) => {
          this.waiter = null;
          resolve(raw);
        },
        reject,
      };
    });
  }

  // From now on every frame goes to `handler`, the ones already queued first.
  handleWith(handler) {
    this.handler = handler;
    for (const raw of this.queue.splice(0)) handler(raw);
  }
}

function openWs(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, {
      perMessageDeflate: false,
      handshakeTimeout: CONNECT_TIMEOUT_MS,
    });
    const inbox = new Inbox(ws);
    const fail = (err) => reject(new Error(`cannot connect to ${url}: ${err.message || err}`));
    ws.once('error', fail);
    ws.once('open', () => {
      ws.off('error', fail);
      ws.on('error', () => {}); // reported as a close; an unhandled 'error' would end the process
      resolve({ ws, inbox });
    });
  });
}

async function nextFrame(inbox, op) {
  const raw = await inbox.next();
  const frame = JSON.parse(raw);
  if (frame.op !== op) throw new Error(`expected '${op}', got ${String(raw).slice(0, 200)}`);
  return frame;
}

function wsCloser(ws) {
  return () =>
    new Promise((resolve) => {
      if (ws.readyState === WebSocket.CLOSED) return resolve();
      ws.once('close', resolve);
      ws.close();
    });
}

function channelOf(c) {
  return spread === 1 ? channel : `${channel}-${c}`;
}

const relaynet = {
  async subscriber(url, onData, onClose) {
    const { ws, inbox } = await openWs(url);
    try {
      await nextFrame(inbox, 'connected');
      for (let c = 0; c < spread; c++) {
        ws.send(JSON.stringify({ op: 'subscribe', channel: channelOf(c), ref: c + 1 }));
        await nextFrame(inbox, 'subscribed');
      }
    } catch (err) {
      ws.terminate();
      throw err;
    }
    inbox.handleWith((raw) => {
      const payload = payloadIn(raw);
      if (payload !== null) onData(payload);
    });
    ws.on('close', onClose);
    return { close: wsCloser(ws) };
  },

  async publisher(url, run) {
    const { ws, inbox } = await openWs(url);
    await nextFrame(inbox, 'connected');
    inbox.handleWith((raw) => {
      const frame = JSON.parse(raw);
      if (frame.op === 'ack') run.ack(frame.ref);
      else if (frame.op === 'error') run.refuse(`${frame.code}: ${frame.message}`);
    });
    ws.on('close', () => run.stopPublishing());
    return {
      acks: true,
      batch: 1,
      publish(r, n) {
        const to = channelOf(n % spread);
        ws.send(JSON.stringify({ op: 'publish', channel: to, data: r.payload(n), ref: n }));
      },
      close: wsCloser(ws),
    };
  },
};

const plainWs = {
  async subscriber(url, onData, onClose) {
    const { ws, inbox } = await openWs(url);
    inbox.handleWith((raw) => {
      const payload = payloadIn(raw);
      if (payload !== null) onData(payload);
    });
    ws.on('close', onClose);
    return { close: wsCloser(ws) };
  },

  async publisher(url, run) {
    const { ws } = await openWs(url);
    ws.on('close', () => run.stopPublishing());
    return {
      acks: false,
      batch: 1,
      publish(r, n) {
        ws.send(JSON.stringify(r.payload(n)));
      },
      close: wsCloser(ws),
    };
  },
};

// A complete unmasked server-to-client text frame: what ws_server.js copies as it is.
function serverFrame(text) {
  const body = Buffer.from(text);
  const length = body.length;
  const header =
    length < 126
      ? Buffer.from([0x81, length])
      : Buffer.from([0x81, 126, length >> 8, length & 0xff]);
  return Buffer.concat([header, body]);
}

const ceiling = {
  subscriber: plainWs.subscriber,

  async publisher(url, run) {
    const { ws } = await openWs(url);
    ws.on('close', () => run.stopPublishing());
    return {
      acks: false,
      batch: run.options.batch,
      publish(r, first) {
        const frames = [];
        for (let n = first; n < first + this.batch; n++) {
          frames.push(serverFrame(JSON.stringify(r.payload(n))));
        }
        ws.send(Buffer.concat(frames), { binary: true });
      },
      close: wsCloser(ws),
    };
  },
};

function openSocketIo(url) {
  return new Promise((resolve, reject) => {
    const socket = io(url.replace(/^ws/, 'http'), {
      transports: ['websocket'],
      forceNew: true,
      reconnection: false,
      timeout: CONNECT_TIMEOUT_MS,
    });
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (err) => {
      socket.close();
      reject(new Error(`cannot connect to ${url}: ${err.message}`));
    });
  });
}

function socketIoCloser(socket) {
  return () =>
    new Promise((resolve) => {
      if (socket.disconnected) return resolve();
      socket.once('disconnect', () => resolve());
      socket.disconnect();
    });
}

const socketio = {
  async subscriber(url, onData, onClose) {
    // The server puts every socket in the room before Socket.IO reports it connected.
    const socket = await openSocketIo(url);
    socket.on('msg', onData);
    socket.on('disconnect', onClose);
    return { close: socketIoCloser(socket) };
  },

  async publisher(url, run) {
    const socket = await openSocketIo(url);
    socket.on('disconnect', () => run.stopPublishing());
    return {
      acks: true,
      batch: 1,
      publish(r, n) {
        socket.emit('publish', r.payload(n), () => r.ack(n));
      },
      close: socketIoCloser(socket),
    };
  },
};

const PROTOCOLS = { relaynet, python: relaynet, picows: relaynet, socketio, ws: plainWs, ceiling };

// --- connections --------------------------------------------------------------------------

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took over ${ms / 1000}s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Opens `count` subscribers, at most CONNECT_CONCURRENCY handshakes at once; every one
// that opens goes into `opened` at once, so that it is closed whatever happens next.
async function connectSubscribers(protocol, options, run, subs, opened) {
  let next = 0;
  const worker = async () => {
    while (next < options.subscribers) {
      next++;
      const sub = new Subscriber();
      const handle = await protocol.subscriber(
        options.url,
        (data) => run.deliver(sub, data),
        () => run.drop(sub),
      );
      opened.push(handle);
      subs.push(sub);
      run.live++;
    }
  };
  const started = performance.now();
  const workers = Math.min(CONNECT_CONCURRENCY, options.subscribers);
  const all = Promise.all(Array.from({ length: workers }, worker));
  await withTimeout(all, CONNECT_TIMEOUT_MS, `connecting ${options.subscribers} subscribers`);
  const connectS = (performance.now() - started) / 1000;
  return { connect_s: connectS, connections_per_s: options.subscribers / connectS };
}

async function closeAll(opened) {
  const all = Promise.all(opened.map((handle) => handle.close().catch(() => {})));
  await withTimeout(all, CLOSE_CAP_MS, 'closing').catch(() => {});
}

function holdUntilReleased() {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, IDLE_HOLD_CAP_MS);
    const release = () => {
      clearTimeout(timer);
      resolve();
    };
    process.stdin.once('data', release);
    process.stdin.once('end', release);
    process.stdin.once('error', release);
  });
}

function print(object) {
  process.stdout.write(`${JSON.stringify(object)}\n`);
}

// --- entry point --------------------------------------------------------------------------

async function traffic(protocol, options, run, subs, opened) {
  const connect = await connectSubscribers(protocol, options, run, subs, opened);
  const publisher = await withTimeout(
    protocol.publisher(options.url, run),
    CONNECT_TIMEOUT_MS,
    'connecting the publisher',
  );
  opened.push(publisher);
  run.start(publisher);
  await new Promise((resolve) => setTimeout(resolve, options.seconds * 1000));
  run.stopPublishing();
  await run.drain(subs);
  return run.summary(subs, connect);
}

async function idle(protocol, options, run, subs, opened) {
  const connect = await connectSubscribers(protocol, options, run, subs, opened);
  print({ idle: true, ...connect });
  await holdUntilReleased();
  return { ...connect, disconnected: subs.filter((sub) => sub.closed).length };
}

async function main() {
  let options;
  try {
    options = parseArgs(process.argv);
    channel = options.channel;
    spread = options.spread;
  } catch (err) {
    print({ ok: false, error: err.message });
    process.exit(2);
  }
  const hardCapMs =
    2 * CONNECT_TIMEOUT_MS + options.seconds * 1000 + DRAIN_CAP_MS + CLOSE_CAP_MS + 30_000;
  const cap = options.mode === 'idle' ? IDLE_HOLD_CAP_MS + hardCapMs : hardCapMs;
  setTimeout(() => {
    print({ ok: false, error: `load generator not done after ${cap / 1000}s` });
    process.exit(2);
  }, cap).unref();
  const protocol = PROTOCOLS[options.system];
  const run = new Run(options);
  const subs = [];
  const opened = [];
  try {
    const measure = options.mode === 'idle' ? idle : traffic;
    const result = await measure(protocol, options, run, subs, opened);
    await closeAll(opened);
    const { system, mode } = options;
    print({ ok: true, system, mode, subscribers: subs.length, ...result });
  } catch (err) {
    print({ ok: false, error: String(err.message || err) });
    await closeAll(opened);
    process.exitCode = 1;
  }
  process.exit();
}

main();
