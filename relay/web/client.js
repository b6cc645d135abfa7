// relaynet browser client: protocol v1 (relay/PROTOCOL.md) over a plain WebSocket.
//
// A dependency-free ES module, served by every relay at GET /v1/client.js:
//
//   import { connect } from "/v1/client.js";
//   const client = await connect(["ws://relay-a:8701/v1/ws"], { probes: 3 });
//   client.subscribe("chat:lobby", (m) => console.log(m.origin, m.ts, m.data));
//   const ack = await client.publish("chat:lobby", { text: "hi" });
//   const { messages, more } = await client.history("chat:lobby", { limit: 50 });
//   client.subscribe("chat:lobby", onMessage, { presence: true, onPresence: (e) => show(e.members) });
//   await client.presence("chat:lobby").enter({ name: "Ann" }, { clientId: "ann" });
//
// Theory of operation
// -------------------
// Every rule is a port of the Python reference: the pure core in relay/client/ (backoff.py,
// routing.py, session.py; same names where possible) and the I/O around it as the Python
// SDK does it (relay/client/supervisor.py for the decisions, client.py for the I/O).
//
// * Where to connect. The client fetches the edge directory (GET /v1/edges) from the first
//   source that serves one (the seeds, then every edge known so far), probes every edge
//   `probes` times with GET /v1/ping (all at once, edges in parallel: one round trip to the
//   farthest edge), and `choose` orders the regions: healthy and reachable by median RTT, then
//   healthy but unprobed, then healthy but unreachable, then the regions the directory reports
//   down; ties by name. options.prefer puts one region first while it is
//   healthy and not unreachable (the others stay behind it in that order, for failover).
//   `client.choice` = {order, rttMs, reasons, healthy, prefer}; `client.survey` also has the
//   directory, the samples per edge and the candidate edges in the order to try them. The relay
//   that served the directory stays its region's last-resort edge; relays without /v1/edges
//   still work (each seed that answers /v1/ping with "pong" its own pseudo-region; a seed that
//   is not a relay, e.g. HTTP 404, is never used).
// * Redirects. A relay at its connection limit (instead of `connected`, then 1013) or shutting
//   down (then 1001) may send `redirect` to a sibling: the client goes there next without a
//   backoff pause, but only while the redirecting relay's region (the candidate's for a first
//   frame, client.region mid-connection) is its first choice, and only to a relay of that same
//   region that its survey lists (same HTTP base), never from wss:// to ws://: the token goes
//   only to edges of the directory, so a redirect to a URL it does not list is ignored (a relay
//   started since the survey is found by the next one). Across regions its own measured order
//   decides: a client that failed over far away is not sent to a far sibling but goes back
//   through its order. After
//   MAX_REDIRECTS_IN_A_ROW without a `connected` (or a whole failed round) it ignores them
//   (backoff as usual), so two full relays cannot bounce it around at full speed.
//   `client.redirects` counts the ones followed; the "redirect" event reports each.
// * Frame limit. `connected` says how large a frame the relay accepts (max_frame_bytes; until
//   one does, options.maxFrameBytes): a larger publish rejects at once with "too_large" (sent,
//   it would close the connection with 1009 after every reconnect), and a pending publish too
//   large for a newly connected relay rejects instead of being resent. The size counts the
//   longest ref the frame can ever get.
// * When to try again (full jitter). After a drop the client waits a delay drawn from
//   [0, min(maxMs, baseMs * 2^attempt)] and goes back to the same edge first, then at once (no
//   pause between the edges of a round) to the next ones in the failover order; a relay that
//   went silent (see Liveness) is tried last instead. A round in which every edge failed ends
//   with a fresh survey and a pause; after 2 such rounds the state is "suspended" and rounds
//   are spaced further apart (a second backoff from maxMs up to 6 * maxMs). The attempt count goes back to zero only after a
//   connection stayed up resetAfterMs.
// * What to say on a new connection (session). Every channel is resubscribed from the
//   position the client processed (the pointwise maximum of the positions of the messages it
//   processed), in whichever region; a message the position covers (position[origin] >=
//   ts[origin]) or whose id and data were recently delivered is dropped. Every unacknowledged
//   publish is sent again with its id until acked. Ids are 128 random bits each (newPublishId), never a
//   prefix and a counter: every subscriber sees them, and a guessable id can be published
//   first by someone else (an anonymous relay then acks ours as its duplicate, storing nothing).
// * Whether to come back. Close codes 1000 and 4500-4999 (and the RFC 6455 codes that say our
//   frames were unacceptable) end the client: "closed" for 1000, else "failed"; every other
//   code reconnects.
// * Moving back (options.moveBack "when-idle" / "immediately"; default "stay"): every
//   refreshMs the client surveys again and leaves for a nearer healthy region (or the preferred
//   one, usable again) at a safe point.
// * Liveness. Browsers answer the relay's WebSocket pings but cannot see them: after
//   heartbeat_s without a frame the client sends a protocol ping, and gives the connection up
//   when heartbeat_s more pass without any frame. Such a relay went silent (frozen, or the path
//   to it): its kernel may still accept connections, so the next round tries it last.
// * SSE fallback (TransportPolicy, SseSocket). A page cannot see why a WebSocket did not open;
//   when one fails while the same relay answers GET /v1/ping, that counts against WebSocket,
//   and after 2 in a row the client goes on over SSE (the Python SDK's rules): an
//   EventSource (GET /v1/sse) for the subscribed channels, fetch for publishes (POST, one at a
//   time per channel, same ids and causal context) and history (GET). Same API, same events,
//   same failover; client.transport says which ("websocket" or "sse"). A subscribe or
//   unsubscribe reopens the stream with the new channel set, each channel from its position
//   (?last_event_id=). options.websocketRetryMs (30 s, ±25 %) after the last failed WebSocket,
//   a WebSocket is opened beside the stream; once one works the client moves to it, resuming
//   every channel and sending pending publishes again with their ids. options.sseFallback =
//   false: WebSocket only.
// * Presence (relay/client/presence.py: PresenceBook, MemberView; names as the Python SDK's,
//   which are Ably's). A relay forgets a connection's members when it ends (after
//   [presence] leave_after_s), so the session enters what was entered again, with the same
//   data, on each new connection, right after the resubscribes. Each op has a version per
//   channel; the relay answers in order, so a presence.ok settles every op up to it, a new
//   connection settles leaves, and a refusal puts the channel back as last accepted. A
//   subscription with {presence: true} gets the member list after every `subscribed`, i.e.
//   a fresh one after each reconnect, failover or transport switch (onPresence action
//   "sync": replace the view), then each change. Over SSE the stream carries lists and
//   events (presence=1) and members() is GET /v1/channels/{c}/presence, but the HTTP API
//   cannot enter or leave: those reject with "presence_unavailable" (temporary), and what
//   was entered before is entered again once back on a WebSocket.
//
// Connection states (client.on("state", (state, info) => ...)):
//   connecting    an attempt is under way (or the first survey)
//   connected     a relay sent its `connected` frame; subscriptions and pending publishes resent
//   disconnected  the connection dropped (or a relay redirected us: connecting follows at once);
//                 attempts follow (the "retry" event says when)
//   suspended     every edge failed 2 rounds in a row; attempts go on, further apart
//   failed        the relay closed with a code that says not to come back; publishes rejected
//   closed        client.close() was called, or the relay closed normally (1000)
// While not connected, publish() and subscribe() are queued and go out on the next connection.

export const PROTOCOL_VERSION = 1;

const DEFAULT_OPTIONS = Object.freeze({
  // The Python SDK's defaults (relay/client/client.py, connect()).
  probes: 3, // RTT probes per edge; the median decides
  probeTimeoutMs: 2000, // each directory request and each probe
  openTimeoutMs: 5000, // the WebSocket handshake, then again for the `connected` frame
  baseMs: 200,
  maxMs: 5000,
  resetAfterMs: 10000,
  moveBack: "stay", // "stay" | "when-idle" | "immediately"
  regions: null, // only these regions of the directory (e.g. ["eu-west"]); null: every region
  prefer: null, // this region first while it is usable; the others stay behind it for failover
  refreshMs: 30000, // how often to survey again while connected (moveBack other than "stay")
  connectTimeoutMs: 30000, // connect(): reject (and close) if not connected by then; 0 = never
  onExpired: "stop", // position_expired: "stop" (the subscription ends), "earliest" or "live"
  // The relay closes the connection (1009) on a bigger frame: its default limits.max_frame_bytes,
  // assumed until a relay announces its own in `connected` (which then wins).
  maxFrameBytes: 1048576,
  idMemory: 4096,
  random: Math.random,
  // async () => token (a JWT) or null: awaited before every connection attempt (sent as
  // ?token=) and again before the token expires (sent on the live connection as an `auth`
  // frame). null: no token (anonymous relays).
  tokenProvider: null,
  // Fall back to SSE + HTTP (GET /v1/sse, POST /v1/channels/…) when WebSocket opens fail
  // twice in a row while the relay answers GET /v1/ping (a proxy that blocks WebSocket); while
  // on SSE, try WebSocket again about every websocketRetryMs and move back to it. The Python
  // SDK's sse_fallback and websocket_retry_s.
  sseFallback: true,
  websocketRetryMs: 30000,
  // Who this client is in presence (client.presence(channel).enter()): null lets the relay
  // decide (the token's sub; on an anonymous relay the connection id). With a token, only
  // its sub is allowed.
  clientId: null,
});

// --- vector clocks ---------------------------------------------------------------------------

const REGION_RE = /^[a-z][a-z0-9-]{0,31}$/;
const MAX_COUNTER = Number.MAX_SAFE_INTEGER;

/** Validate a position / vector timestamp (object region -> counter); zero entries dropped. */
export function parseClock(raw, field = "position") {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new RelaynetError("bad_frame", `${field}: a position is an object mapping region names to counters`);
  }
  const out = {};
  for (const key of Object.keys(raw).sort()) {
    const value = raw[key];
    if (!REGION_RE.test(key)) throw new RelaynetError("bad_frame", `${field}: bad region name ${JSON.stringify(key)}`);
    if (!Number.isInteger(value) || value < 0 || value > MAX_COUNTER) {
      throw new RelaynetError("bad_frame", `${field}: counter for ${JSON.stringify(key)} must be an integer in range`);
    }
    if (value !== 0) out[key] = value;
  }
  return out;
}

/** Pointwise maximum: the least position that covers both. */
export function mergePositions(a, b) {
  const out = { ...a };
  for (const [region, value] of Object.entries(b)) {
    if (value > (out[region] ?? 0)) out[region] = value;
  }
  return sortedClock(out);
}

/** True when the message from `origin` stamped `ts` is already included in `position`. */
export function covers(position, origin, ts) {
  return (position[origin] ?? 0) >= (ts[origin] ?? 0);
}

function sortedClock(clock) {
  const out = {};
  for (const key of Object.keys(clock).sort()) if (clock[key] !== 0) out[key] = clock[key];
  return out;
}

// --- errors ----------------------------------------------------------------------------------

export class RelaynetError extends Error {
  constructor(code, message, { temporary = false, ...details } = {}) {
    super(message);
    this.name = "RelaynetError";
    this.code = code;
    this.temporary = temporary;
    Object.assign(this, details);
  }
}

// --- backoff (relay/client/backoff.py) ------------------------------------------------------

const MAX_EXPONENT = 1000;

export class Backoff {
  constructor({ baseMs, maxMs, resetAfterMs, random = Math.random }) {
    if (!(Number.isFinite(baseMs) && baseMs > 0)) throw new RangeError(`baseMs must be a positive number, not ${baseMs}`);
    if (!(Number.isFinite(maxMs) && maxMs >= baseMs)) throw new RangeError(`maxMs must be a number >= baseMs (${baseMs}), not ${maxMs}`);
    if (!(Number.isFinite(resetAfterMs) && resetAfterMs >= 0)) throw new RangeError(`resetAfterMs must be a number >= 0, not ${resetAfterMs}`);
    this.baseMs = baseMs;
    this.maxMs = maxMs;
    this.resetAfterMs = resetAfterMs;
    this._random = random;
    this._attempt = 0;
    this._connectedAt = null;
  }

  /** How many delays were handed out since the last reset. */
  get attempt() {
    return this._attempt;
  }

  /** The upper bound of the delay for `attempt` (default: the next one). */
  cap(attempt = this._attempt) {
    if (attempt < 0) throw new RangeError("attempt must be >= 0");
    return Math.min(this.maxMs, this.baseMs * 2 ** Math.min(attempt, MAX_EXPONENT));
  }

  /** Milliseconds to wait before the next connection attempt; counts the attempt. */
  nextDelay() {
    const delay = this._random() * this.cap();
    this._attempt += 1;
    return delay;
  }

  connected(now) {
    this._connectedAt = now;
  }

  /** A connection ended; a long-lived one earns a fresh schedule. */
  disconnected(now) {
    if (this._connectedAt !== null && now - this._connectedAt >= this.resetAfterMs) this._attempt = 0;
    this._connectedAt = null;
  }

  reset() {
    this._attempt = 0;
    this._connectedAt = null;
  }
}

// --- routing (relay/client/routing.py) -------------------------------------------------------

/** Python's statistics.median: the middle value, or the mean of the two middle ones. */
export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const n = sorted.length;
  if (n === 0) throw new RangeError("no median for an empty list");
  const mid = Math.floor(n / 2);
  return n % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/**
 * Order the directory's regions for connecting and failing over.
 * edges: [{region, url, health: "up"|"down"|"unknown"}] ("unknown" counts as healthy);
 * samples: {region: [ms or null (failed probe)]}.
 * Returns {order, rttMs, reasons, healthy, prefer}: rttMs[region] is the median of the
 * successful probes or null. A region listed by several edges is healthy when any of them is.
 * prefer: a region to put first whenever it is healthy and not unreachable by the probes (an
 * application that pins its users to a home region); the others keep their measured order
 * behind it, so losing it still fails over to the nearest.
 */
export function choose(edges, samples, { prefer = null } = {}) {
  const healthy = new Set();
  const regions = [];
  for (const edge of edges) {
    if (!["up", "down", "unknown"].includes(edge.health)) {
      throw new RangeError(`health must be 'up', 'down' or 'unknown', not ${JSON.stringify(edge.health)}`);
    }
    if (!regions.includes(edge.region)) regions.push(edge.region);
    if (edge.health !== "down") healthy.add(edge.region);
  }
  const rttMs = {};
  const probes = {};
  for (const region of regions) {
    const taken = Object.hasOwn(samples, region) ? samples[region] : [];
    const ok = taken.filter((s) => s !== null && s !== undefined).map((s) => checked(region, s));
    rttMs[region] = ok.length ? median(ok) : null;
    probes[region] = [ok.length, taken.length];
  }
  const rank = (region) => {
    const m = rttMs[region];
    const probed = probes[region][1] > 0;
    let group;
    if (m !== null) group = healthy.has(region) ? 0 : 3;
    else if (!probed) group = healthy.has(region) ? 1 : 4;
    else group = healthy.has(region) ? 2 : 5;
    if (region === prefer && group <= 1) group = -1; // usable, or no evidence it is not
    return [group, m ?? 0, region];
  };
  const compare = (a, b) => {
    const [ga, ma, na] = rank(a);
    const [gb, mb, nb] = rank(b);
    if (ga !== gb) return ga - gb;
    if (ma !== mb) return ma - mb;
    return na < nb ? -1 : na > nb ? 1 : 0;
  };
  const order = [...regions].sort(compare);
  const leads = order.length > 0 && rank(order[0])[0] < 0; // the preferred region is first
  const reasons = {};
  order.forEach((region, i) => {
    reasons[region] = leads && i === 0 ? preferredReason(rttMs[region], probes[region]) : reason(rttMs[region], probes[region], healthy.has(region), i === 0);
  });
  return { order, rttMs, reasons, healthy: [...healthy].sort(), prefer };
}

function checked(region, sample) {
  if (!(typeof sample === "number" && Number.isFinite(sample) && sample >= 0)) {
    throw new RangeError(`RTT sample for ${region} must be a finite number >= 0, not ${sample}`);
  }
  return sample;
}

// Python's f"{x:.1f}": an exact tie (x.25, x.75) rounds half to even; toFixed rounds it up.
function fixed1(x) {
  const quarters = x * 4;
  if (Number.isInteger(quarters) && quarters % 2 !== 0) {
    const down = Math.floor(x * 10);
    return ((down % 2 === 0 ? down : down + 1) / 10).toFixed(1);
  }
  return x.toFixed(1);
}

function probesText(m, [ok, total]) {
  const failed = total - ok;
  if (m !== null) return `median ${fixed1(m)} ms over ${ok} probes${failed ? ` (${failed} of ${total} failed)` : ""}`;
  return total ? `all ${total} probes failed` : "not probed";
}

// A preferred region is first only when healthy and not unreachable: measured, or unprobed.
function preferredReason(m, probes) {
  return `preferred region: ${m !== null ? probesText(m, probes) : "healthy according to the directory, not probed"}`;
}

function reason(m, probes, healthy, first) {
  const total = probes[1];
  const over = probesText(m, probes);
  if (!healthy) return `down according to the directory; ${over}`;
  if (m === null) {
    return total ? `unreachable: ${over} (the directory says healthy)` : "healthy according to the directory, not probed";
  }
  return first ? `nearest healthy: ${over}` : `healthy: ${over}`;
}

// --- close codes (relay/client/session.py) ---------------------------------------------------

// 1000 normal; RFC 6455 codes saying our frames were unacceptable would be so again.
const STOP_CODES = new Set([1000, 1002, 1003, 1007, 1008, 1010]);

/** "stop" for 1000, 4500-4999 and codes saying our frames are unacceptable; else "reconnect". */
export function closePolicy(code) {
  return (code >= 4500 && code <= 4999) || STOP_CODES.has(code) ? "stop" : "reconnect";
}

// --- tokens (relay/client/session.py renewal_delay_s) ----------------------------------------

/** Ms from `nowMs` until a token expiring at `expMs` should be renewed: 30 s before it
 * expires, or at three quarters of what is left for short-lived tokens. */
export function renewalDelayMs(expMs, nowMs) {
  const left = expMs - nowMs;
  if (left >= 120000) return left - 30000;
  return Math.max(0, left * 0.75);
}

/** `url` with the `token` query parameter, if any. */
export function withToken(url, token) {
  if (token === null || token === undefined) return url;
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}

// --- presence (relay/client/presence.py), without I/O ----------------------------------------

/**
 * A channel's members as its events tell them (MemberView): a sync replaces, a change
 * applies. A member is one client on one connection: a client that reconnects is, for a
 * while, two members (its old connection leaves [presence] leave_after_s later); clientIds
 * is "who is here".
 */
export class MemberView {
  constructor(members = []) {
    this._members = new Map(members.map((m) => [memberKeyOf(m), m]));
  }

  /** Apply a "presence_sync" ({members}) or "presence_change" ({action, member}) event. */
  apply(event) {
    if (event.type === "presence_sync") {
      this._members = new Map(event.members.map((m) => [memberKeyOf(m), m]));
    } else if (event.action === "leave") {
      this._members.delete(memberKeyOf(event.member));
    } else {
      this._members.set(memberKeyOf(event.member), event.member);
    }
  }

  /** The members, in the order they entered (a sync: the relay's order). */
  get members() {
    return [...this._members.values()];
  }

  /** Who is here: the client ids of the members (present or unreachable), sorted. */
  get clientIds() {
    return [...new Set([...this._members.values()].map((m) => m.clientId))].sort();
  }
}

const memberKeyOf = (m) => JSON.stringify([m.clientId, m.connection]);

/**
 * Per channel, what the application entered and which of its ops are settled
 * (PresenceBook). Each enter/update/leave gets a version per channel; the relay answers a
 * connection's ops in order, so its presence.ok for version v settles every op up to v. A
 * new connection settles the rest: what is entered is sent again (its ok settles it), and a
 * leave is done already (the new connection entered nothing). A refused op puts the channel
 * back as the relay last accepted it. SSE carries no op: there, ops fail (onSse) and what
 * was entered waits for a WebSocket. An entry is {clientId, dataJson} (null: the relay's
 * choice; no data).
 */
export class PresenceBook {
  constructor() {
    this._channels = new Map(); // channel -> {wanted, accepted, clientId, made, done}
  }

  entered(channel) {
    return this._channels.get(channel)?.wanted ?? null;
  }

  /** The client id the relay last confirmed for our member (null: not entered). */
  clientId(channel) {
    const state = this._channels.get(channel);
    return state && state.wanted !== null ? state.clientId : null;
  }

  /** Every op of `channel` up to this version is settled. */
  done(channel) {
    return this._channels.get(channel)?.done ?? 0;
  }

  /** [version, entry] to send. Entering again changes the data (or the client id). */
  enter(channel, clientId, dataJson) {
    let state = this._channels.get(channel);
    if (!state) {
      state = { wanted: null, accepted: null, clientId: null, made: 0, done: 0 };
      this._channels.set(channel, state);
    }
    state.wanted = { clientId, dataJson };
    state.made += 1;
    return [state.made, state.wanted];
  }

  update(channel, dataJson) {
    const state = this._channels.get(channel);
    if (!state || state.wanted === null) throw new Error(`not entered in ${JSON.stringify(channel)}: enter() first`);
    return this.enter(channel, state.wanted.clientId, dataJson);
  }

  /** The version of the leave to send; null: not entered, nothing to do. */
  leave(channel) {
    const state = this._channels.get(channel);
    if (!state || state.wanted === null) return null;
    state.wanted = null;
    state.made += 1;
    return state.made;
  }

  /** The relay said ok to the op of `version`, which sent `entry` (null: a leave). */
  accepted(channel, version, entry, clientId) {
    const state = this._channels.get(channel);
    if (!state || (version <= state.done && version !== state.made)) return; // overtaken by a reconnect's
    state.accepted = entry;
    state.done = Math.max(state.done, version);
    state.clientId = entry !== null ? clientId : null;
  }

  /** The relay refused the op of `version` (`again`: entering again on a new connection). */
  refused(channel, version, { temporary, again = false }) {
    const state = this._channels.get(channel);
    if (!state) return;
    state.done = Math.max(state.done, version);
    if (again) state.accepted = null;
    if (version !== state.made || (again && temporary)) return;
    state.wanted = state.accepted;
    if (state.wanted === null) state.clientId = null;
  }

  /** A new connection: [[channel, version, entry]] to enter again; leaves are settled. */
  reconnected() {
    const again = [];
    for (const [channel, state] of this._channels) {
      if (state.wanted === null) {
        state.accepted = null;
        state.clientId = null;
        state.done = state.made;
      } else {
        again.push([channel, state.made, state.wanted]);
      }
    }
    return again;
  }

  /** A connection over SSE: [[channel, version]] after which the channel's ops failed
   * (undone). Leaves are settled; what was entered before stays wanted. */
  onSse() {
    const failed = [];
    for (const [channel, state] of this._channels) {
      if (state.wanted === null) {
        state.accepted = null;
        state.clientId = null;
      } else if (state.done < state.made) {
        failed.push([channel, state.done]);
        state.wanted = state.accepted;
      }
      state.done = state.made;
    }
    return failed;
  }
}

// --- session (relay/client/session.py), without I/O ------------------------------------------

const HANDLED_OPS = new Set([
  "connected", "redirect", "subscribed", "message", "ack", "error", "history", "authed", "token_expiring",
  "presence", "presence.ok", "presence_event",
]);
const PRESENCE_ACTIONS = new Set(["enter", "update", "leave"]);
// What a relay accepts as a publish id (PROTOCOL.md): 1-128 printable ASCII, no spaces.
const ID_RE = /^[\x21-\x7e]{1,128}$/;

/** 128 bits from crypto.getRandomValues, URL-safe base64 (22 characters), as the Python SDK's
 * new_publish_id: unguessable by whoever sees our earlier ids, unique across every client. */
export function newPublishId() {
  const buf = new Uint8Array(16);
  globalThis.crypto.getRandomValues(buf);
  return btoa(String.fromCharCode(...buf)).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** A 53-bit digest of a JSON value (cyrb53 over its JSON text): tells a retry of a publish, same
 * data, from another publisher's message that reuses its id. */
function dataDigest(value) {
  const text = JSON.stringify(value) ?? "";
  let h1 = 0xdeadbeef;
  let h2 = 0x41c6ce57;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 2654435761);
    h2 = Math.imul(h2 ^ c, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return 4294967296 * (2097151 & h2) + (h1 >>> 0);
}

const isRef = (ref) => ref === undefined || ref === null || typeof ref === "string" || Number.isInteger(ref);
const isStr = (v) => typeof v === "string";

function isMember(m) {
  return m !== null && typeof m === "object" && isStr(m.client_id) && isStr(m.connection) && isStr(m.region) && isStr(m.relay) && isStr(m.status);
}

/** A member as the API hands it over (camelCase, as the rest of it); data null when the
 * member entered without any. */
function memberOf(m) {
  return { clientId: m.client_id, connection: m.connection, region: m.region, relay: m.relay, status: m.status, data: m.data === undefined ? null : m.data };
}

function checkJson(dataJson) {
  if (dataJson !== null) JSON.parse(dataJson); // throws SyntaxError: a bug in the caller
}

function shapeError(frame) {
  // Which field of a known op has the wrong type (null when the frame is fine).
  const need = (cond, what) => (cond ? null : what);
  const clockish = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
  switch (frame.op) {
    case "connected":
      return (
        need(isStr(frame.region), "region") ??
        need(isStr(frame.relay), "relay") ??
        need(isStr(frame.connection_id), "connection_id") ??
        need(frame.heartbeat_s == null || typeof frame.heartbeat_s === "number", "heartbeat_s") ??
        need(frame.max_frame_bytes == null || Number.isInteger(frame.max_frame_bytes), "max_frame_bytes") ??
        need(frame.sub == null || isStr(frame.sub), "sub") ??
        need(frame.exp == null || typeof frame.exp === "number", "exp")
      );
    case "authed":
      return need(isStr(frame.sub), "sub") ?? need(typeof frame.exp === "number", "exp") ?? need(isRef(frame.ref), "ref");
    case "token_expiring":
      return need(typeof frame.exp === "number", "exp");
    case "redirect":
      return (
        need(isStr(frame.url), "url") ??
        need(frame.region == null || isStr(frame.region), "region") ??
        need(frame.reason === undefined || isStr(frame.reason), "reason")
      );
    case "subscribed":
      return (
        need(isStr(frame.channel), "channel") ??
        need(clockish(frame.position), "position") ??
        need(frame.recovered === undefined || typeof frame.recovered === "boolean", "recovered") ??
        need(isRef(frame.ref), "ref")
      );
    case "message":
      return (
        need(isStr(frame.channel), "channel") ??
        need(isStr(frame.id), "id") ??
        need("data" in frame, "data") ??
        need(isStr(frame.origin), "origin") ??
        need(clockish(frame.ts), "ts") ??
        need(clockish(frame.position), "position")
      );
    case "history":
      return (
        need(isStr(frame.channel), "channel") ??
        need(Array.isArray(frame.messages) && frame.messages.every((m) => m !== null && typeof m === "object" && shapeError({ ...m, op: "message" }) === null), "messages") ??
        need(frame.more === undefined || typeof frame.more === "boolean", "more") ??
        need(isRef(frame.ref), "ref")
      );
    case "ack":
      return need(isStr(frame.id), "id") ?? need(isStr(frame.channel), "channel") ?? need(clockish(frame.position), "position") ?? need(isRef(frame.ref), "ref");
    case "presence":
      return need(isStr(frame.channel), "channel") ?? need(Array.isArray(frame.members) && frame.members.every(isMember), "members") ?? need(isRef(frame.ref), "ref");
    case "presence.ok":
      return need(isStr(frame.channel), "channel") ?? need(isStr(frame.action), "action") ?? need(isStr(frame.client_id), "client_id") ?? need(isRef(frame.ref), "ref");
    case "presence_event":
      return need(isStr(frame.channel), "channel") ?? need(isStr(frame.action), "action") ?? need(isMember(frame.member), "member");
    case "error":
      return (
        need(isStr(frame.code), "code") ??
        need(frame.message === undefined || isStr(frame.message), "message") ??
        need(frame.temporary === undefined || typeof frame.temporary === "boolean", "temporary") ??
        need(isRef(frame.ref), "ref") ??
        need(frame.channel == null || isStr(frame.channel), "channel") ??
        need(frame.earliest == null || clockish(frame.earliest), "earliest") ??
        need(frame.retry_after_ms == null || Number.isInteger(frame.retry_after_ms), "retry_after_ms")
      );
    default:
      return null;
  }
}

/**
 * What a client must remember across connections (a port of ClientSession). The I/O layer
 * hands every received text frame to receive() and gets events back ({type: "connected" |
 * "redirected" | "subscribed" | "message" | "acked" | "error" | "expired" | "bad_frame",
 * ...}); it sends the strings subscribe(), unsubscribe() and publish() return, and on every
 * new connection what onReconnect() returns (after dropOversized(), once `connected` said
 * what the relay accepts).
 *
 * defaultMaxFrameBytes: the frame limit assumed while no relay has announced one (null: none,
 * as the Python session); the `max_frame_bytes` of the last `connected` wins over it.
 *
 * Presence: the session remembers what the application entered (PresenceBook) and enters
 * it again on every new connection, after the resubscribes: a relay forgets a connection's
 * members when it ends. A channel subscribed with `presence` gets "presence_sync" (the
 * whole list: after every `subscribed`, so again on every new connection) and
 * "presence_change" events; MemberView builds the list from them.
 */
export class Session {
  constructor({ newId = newPublishId, idMemory = DEFAULT_OPTIONS.idMemory, defaultMaxFrameBytes = null } = {}) {
    if (!(idMemory >= 1)) throw new RangeError("idMemory must be >= 1");
    this._newId = newId; // makes each publish's id (tests pass a predictable one)
    this._idMemory = idMemory;
    this._nextRef = 1;
    this._channels = new Map(); // channel -> {wanted, position, expired, ref}
    this._pending = new Map(); // id -> {channel, dataJson, after}, in send order
    // channel -> pointwise maximum of the positions of our acked publishes there: with what
    // we have read, the causal context every publish carries (session.py's _written).
    this._written = new Map();
    this._requests = new Map(); // ref -> {op, channel, publishId}, on this connection
    this._seen = new Map(); // "channel\n id\n digest of the data" -> true, oldest first
    this._book = new PresenceBook(); // what the application entered, to enter again
    this._defaultMaxFrameBytes = defaultMaxFrameBytes;
    // The relay's limit on a frame from us (from `connected`); null: not announced.
    this.maxFrameBytes = null;
  }

  /** The frame limit publishes are held to: the relay's announced one, else the default. */
  get frameLimit() {
    return this.maxFrameBytes ?? this._defaultMaxFrameBytes;
  }

  static closePolicy(code) {
    return closePolicy(code);
  }

  /** Channels the application is subscribed to (or that will be resubscribed). */
  get channels() {
    return [...this._channels].filter(([, s]) => s.wanted).map(([name]) => name);
  }

  /** Wanted channels without a subscribe on the current connection (e.g. after a temporary error). */
  get unsubscribed() {
    return [...this._channels].filter(([, s]) => s.wanted && s.ref === null).map(([name]) => name);
  }

  /** Where the application is in `channel` (to persist and resume after a restart), or null. */
  position(channel) {
    const state = this._channels.get(channel);
    return state && state.position ? { ...state.position } : null;
  }

  /** Unacknowledged publishes: {id: channel}, in the order they were made. */
  get pending() {
    return Object.fromEntries([...this._pending].map(([id, p]) => [id, p.channel]));
  }

  /** Nothing in flight: a safe point to move to another region. */
  get idle() {
    return this._pending.size === 0;
  }

  /** The subscribe frame for `channel`, from `position` (or where it is); `presence`: with
   * the channel's member list and presence events too. */
  subscribe(channel, position = null, { presence = false } = {}) {
    let state = this._channels.get(channel);
    if (state && state.wanted && state.ref !== null) throw new Error(`already subscribed to ${JSON.stringify(channel)}`);
    const start = position === null ? null : parseClock(position);
    if (!state) {
      state = { wanted: true, position: null, expired: false, ref: null, presence: false };
      this._channels.set(channel, state);
    }
    state.wanted = true;
    state.presence = Boolean(presence);
    if (start === null) return this._subscribeFrame(channel, state, this._resumeFrom(state));
    // Keep what was already delivered covered, so that starting earlier repeats nothing.
    state.position = state.position === null ? start : mergePositions(state.position, start);
    state.expired = false;
    return this._subscribeFrame(channel, state, start);
  }

  /** [ref, frame] asking for the newest `limit` (1-1000) stored messages of `channel`, before
   * `before` (a message's position) to page back. Answered by a "history" event with this ref
   * (or an "error"); not resent by onReconnect (the caller asks again). */
  history(channel, { limit = 100, before = null } = {}) {
    if (!(Number.isInteger(limit) && limit >= 1 && limit <= 1000)) throw new RangeError(`limit must be 1..1000, not ${limit}`);
    const frame = { op: "history", channel, limit, ref: this._ref() };
    if (before !== null) frame.before = parseClock(before, "before");
    this._requests.set(frame.ref, { op: "history", channel });
    return [frame.ref, JSON.stringify(frame)];
  }

  /** An `auth` frame presenting `token` (renewal on a live connection). */
  auth(token) {
    return JSON.stringify({ op: "auth", token, ref: this._ref() });
  }

  unsubscribe(channel) {
    const state = this._channels.get(channel);
    if (!state || !state.wanted) throw new Error(`not subscribed to ${JSON.stringify(channel)}`);
    this._channels.delete(channel);
    const ref = this._ref();
    this._requests.set(ref, { op: "unsubscribe", channel });
    return JSON.stringify({ op: "unsubscribe", channel, ref });
  }

  /** Drop what is known about a channel that is not subscribed (e.g. after it expired). */
  forget(channel) {
    const state = this._channels.get(channel);
    if (state && state.wanted) throw new Error(`${JSON.stringify(channel)} is subscribed: unsubscribe instead`);
    this._channels.delete(channel);
  }

  /**
   * Assign an idempotency id, remember the publish until acked; returns [id, frame]. Throws
   * RelaynetError("too_large") when the frame would exceed the frame limit: the relay would
   * close the connection (1009) every time it is sent.
   */
  publish(channel, dataJson) {
    JSON.parse(dataJson); // throws SyntaxError: a bug in the caller
    const id = this._newId();
    if (!isStr(id) || !ID_RE.test(id) || this._pending.has(id)) throw new Error(`newId made ${JSON.stringify(id)}: not a fresh, valid publish id`);
    const after = this._context(channel);
    const size = publishSize(channel, id, dataJson, after);
    const limit = this.frameLimit;
    if (limit !== null && size > limit) {
      throw new RelaynetError("too_large", `the publish frame is ${size} bytes; the relay accepts frames up to ${limit} bytes`, { size, limit });
    }
    this._pending.set(id, { channel, dataJson, after });
    return [id, this._publishFrame(id)];
  }

  /**
   * What this client has read and published on the channel: a region must not store the
   * publish before all of it (after a failover it may not have it yet). null when nothing.
   */
  _context(channel) {
    const read = this._channels.get(channel)?.position ?? null;
    const written = this._written.get(channel) ?? null;
    if (read === null && written === null) return null;
    const context = mergePositions(read ?? {}, written ?? {});
    return Object.keys(context).length ? context : null;
  }

  /** Frames for a new connection, in any region: resubscribe, enter presence again, then
   * publish again. */
  onReconnect() {
    this._requests.clear(); // replies to requests of the old connection will never come
    const frames = [];
    for (const [channel, state] of this._channels) {
      state.ref = null;
      if (state.wanted) frames.push(this._subscribeFrame(channel, state, this._resumeFrom(state)));
    }
    // The relay forgot the old connection's members: be in the channels again.
    for (const [channel, version, entry] of this._book.reconnected()) frames.push(this._presenceEnterFrame(channel, version, entry, true));
    for (const id of this._pending.keys()) frames.push(this._publishFrame(id));
    return frames;
  }

  /** [[channel, position or null, presence]]: where onReconnect() would resubscribe each
   * wanted channel from, and whether with presence (an SSE stream names its channels before
   * the relay says `connected`). */
  resumePlan() {
    return [...this._channels].filter(([, s]) => s.wanted).map(([channel, s]) => [channel, this._resumeFrom(s), s.presence]);
  }

  /** Subscribe frames for every wanted channel, from where it is now (an SSE stream reopened
   * with another channel set: every channel is subscribed again on it). */
  resubscribe() {
    const frames = [];
    for (const [channel, state] of this._channels) {
      if (state.wanted) frames.push(this._subscribeFrame(channel, state, this._resumeFrom(state)));
    }
    return frames;
  }

  // --- presence (relay/client/session.py's presence_*; the bookkeeping is PresenceBook)

  /** [version, frame] entering `channel`'s presence set with `dataJson` (JSON text; null:
   * no data) as `clientId` (null: the relay's choice: the token's sub, else the connection
   * id). Entered again on every new connection until presenceLeave(); presenceDone(channel)
   * >= version once the relay has it. Throws RelaynetError("too_large") above the frame
   * limit (it would close every connection it is sent on). */
  presenceEnter(channel, dataJson = null, clientId = null) {
    checkJson(dataJson);
    if (clientId !== null && !isStr(clientId)) throw new TypeError(`clientId must be a string or null, not ${clientId}`);
    this._checkPresenceSize(channel, dataJson, clientId);
    const [version, entry] = this._book.enter(channel, clientId, dataJson);
    return [version, this._presenceEnterFrame(channel, version, entry)];
  }

  /** [version, frame] changing our member's data; throws Error if not entered. The frame
   * is a presence.enter with the same client id (entering again is an update to the relay):
   * it means the same whether or not the enter before it was accepted, where a
   * presence.update after a refused enter would enter under the connection's id. */
  presenceUpdate(channel, dataJson = null) {
    checkJson(dataJson);
    const entered = this._book.entered(channel);
    if (entered !== null) this._checkPresenceSize(channel, dataJson, entered.clientId);
    const [version, entry] = this._book.update(channel, dataJson);
    return [version, this._presenceEnterFrame(channel, version, entry)];
  }

  /** [version, frame] leaving `channel`'s presence set; null if not entered. */
  presenceLeave(channel) {
    const version = this._book.leave(channel);
    if (version === null) return null;
    const ref = this._ref();
    this._requests.set(ref, { op: "presence", channel, version, entry: null, again: false });
    return [version, JSON.stringify({ op: "presence.leave", channel, ref })];
  }

  /** [ref, frame] asking for `channel`'s members: a "members" event with this ref, or an
   * "error"; not resent on a new connection (ask again). */
  presenceGet(channel) {
    const ref = this._ref();
    this._requests.set(ref, { op: "presence.get", channel });
    return [ref, JSON.stringify({ op: "presence.get", channel, ref })];
  }

  /** Every presence op on `channel` up to this version is settled (applied by the relay,
   * refused, or made moot by a new connection). */
  presenceDone(channel) {
    return this._book.done(channel);
  }

  /** What we are (or are becoming) in `channel`'s presence set, {clientId, dataJson}; null:
   * not entered. */
  presenceEntry(channel) {
    return this._book.entered(channel);
  }

  /** Our member's client id as the relay confirmed it; null: not entered (yet). */
  presenceClientId(channel) {
    return this._book.clientId(channel);
  }

  /** The connection is over SSE, which carries no presence op: [[channel, version]] after
   * which the channel's ops failed. What was entered before is entered again on the next
   * WebSocket connection. */
  presenceOnSse() {
    for (const [ref, request] of [...this._requests]) if (request.op === "presence") this._requests.delete(ref);
    return this._book.onSse();
  }

  _presenceEnterFrame(channel, version, entry, again = false) {
    const ref = this._ref();
    this._requests.set(ref, { op: "presence", channel, version, entry, again });
    return enterFrame("presence.enter", channel, entry.dataJson, entry.clientId, ref);
  }

  _checkPresenceSize(channel, dataJson, clientId) {
    const limit = this.frameLimit;
    if (limit === null) return;
    const size = utf8.encode(enterFrame("presence.enter", channel, dataJson, clientId, LONGEST_REF)).length;
    if (size > limit) throw new RelaynetError("too_large", `the presence frame is ${size} bytes; the relay accepts frames up to ${limit} bytes`, { size, limit });
  }

  _presenceFrame(frame) {
    const ref = frame.op === "presence_event" ? null : (frame.ref ?? null);
    if (Number.isInteger(ref)) {
      // The answer to a request of ours.
      const request = this._requests.get(ref);
      if (request === undefined) return []; // of an earlier connection
      this._requests.delete(ref);
      if (frame.op === "presence" && request.op === "presence.get") return [{ type: "members", ref, channel: frame.channel, members: frame.members.map(memberOf) }];
      if (frame.op === "presence.ok" && request.op === "presence") {
        this._book.accepted(request.channel, request.version, request.entry, frame.client_id);
        return [{ type: "presence_done", channel: request.channel, version: request.version }];
      }
      return [{ type: "bad_frame", reason: `${frame.op} does not answer the ${request.op} of ref ${ref}` }];
    }
    if (frame.op === "presence.ok") return []; // answers nothing of ours
    const state = this._channels.get(frame.channel);
    if (!state || !state.wanted || !state.presence) return []; // not watched (any more), or another channel of an SSE stream
    if (frame.op === "presence") return [{ type: "presence_sync", channel: frame.channel, members: frame.members.map(memberOf) }];
    if (!PRESENCE_ACTIONS.has(frame.action)) return []; // a newer relay's
    return [{ type: "presence_change", channel: frame.channel, action: frame.action, member: memberOf(frame.member) }];
  }

  /**
   * Forget pending publishes too large for the frame limit now in force (a relay with a
   * smaller limit than the one they were made under); returns their ids.
   */
  dropOversized() {
    const limit = this.frameLimit;
    if (limit === null) return [];
    const dropped = [...this._pending].filter(([id, { channel, dataJson, after }]) => publishSize(channel, id, dataJson, after) > limit).map(([id]) => id);
    for (const id of dropped) this._pending.delete(id);
    return dropped;
  }

  /** Give up a pending publish (it will not be sent again); true if it was pending. */
  drop(id) {
    return this._pending.delete(id);
  }

  /** The pending publish with the largest data, or null. */
  largestPending() {
    let best = null;
    for (const [id, { dataJson }] of this._pending) if (best === null || dataJson.length > best[1]) best = [id, dataJson.length];
    return best === null ? null : best[0];
  }

  /** Every pending publish again on the current connection (after a temporary error). */
  republishPending() {
    return [...this._pending.keys()].map((id) => this._publishFrame(id));
  }

  /** Events for one received text frame; malformed frames become a bad_frame event. */
  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (exc) {
      return [{ type: "bad_frame", reason: `frame is not valid JSON: ${exc.message}` }];
    }
    if (frame === null || typeof frame !== "object" || Array.isArray(frame) || typeof frame.op !== "string") {
      return [{ type: "bad_frame", reason: 'a frame is a JSON object with an "op" field' }];
    }
    if (!HANDLED_OPS.has(frame.op)) return []; // a newer relay's op
    const wrong = shapeError(frame);
    if (wrong !== null) return [{ type: "bad_frame", reason: `${frame.op}: bad or missing ${wrong}` }];
    try {
      switch (frame.op) {
        case "message":
          return this._message(frame);
        case "ack":
          return this._ack(frame);
        case "subscribed":
          return this._subscribed(frame);
        case "error":
          return this._error(frame);
        case "history":
          return this._history(frame);
        case "redirect":
          return [{ type: "redirected", url: frame.url, region: frame.region ?? null, reason: frame.reason ?? "" }];
        case "presence":
        case "presence_event":
        case "presence.ok":
          return this._presenceFrame(frame);
        case "authed":
          if (Number.isInteger(frame.ref)) this._requests.delete(frame.ref);
          return [{ type: "authed", sub: frame.sub, exp: frame.exp }];
        case "token_expiring": // the relay's warning ([auth] expiry_warning_s): renew now
          return [{ type: "token_expiring", exp: frame.exp }];
        default: {
          const limit = frame.max_frame_bytes;
          this.maxFrameBytes = Number.isInteger(limit) && limit > 0 ? limit : null;
          return [
            {
              type: "connected",
              region: frame.region,
              relay: frame.relay,
              connectionId: frame.connection_id,
              heartbeatS: frame.heartbeat_s ?? null,
              maxFrameBytes: this.maxFrameBytes,
              sub: frame.sub ?? null, // with a token: whose it is
              exp: frame.exp ?? null, // and when it expires (seconds since the epoch)
            },
          ];
        }
      }
    } catch (exc) {
      if (exc instanceof RelaynetError) return [{ type: "bad_frame", reason: `${frame.op}: ${exc.message}` }];
      throw exc;
    }
  }

  _message(frame) {
    const state = this._channels.get(frame.channel);
    if (!state || !state.wanted) return []; // unsubscribed meanwhile
    const ts = parseClock(frame.ts, "ts");
    const position = parseClock(frame.position, "position");
    if ((ts[frame.origin] ?? 0) < 1) return [{ type: "bad_frame", reason: `message ${JSON.stringify(frame.id)}: ts has no entry for its origin` }];
    if (state.position !== null && covers(state.position, frame.origin, ts)) return []; // delivered before
    state.position = state.position === null ? position : mergePositions(state.position, position);
    // With the data: a retry carries the same data, while another publisher's message may carry
    // the same id (relays in token mode scope ids to the publisher).
    const key = `${frame.channel}\n${frame.id}\n${dataDigest(frame.data)}`;
    if (this._seen.has(key)) return []; // the same publish stored in two regions; position still moves
    this._seen.set(key, true);
    if (this._seen.size > this._idMemory) this._seen.delete(this._seen.keys().next().value);
    return [{ type: "message", channel: frame.channel, id: frame.id, data: frame.data, origin: frame.origin, ts, position }];
  }

  /** The reply to history(): stored messages as they are (not deduplicated; positions stay). */
  _history(frame) {
    const ref = frame.ref ?? null;
    const request = Number.isInteger(ref) ? this._requests.get(ref) : undefined;
    if (request === undefined || request.op !== "history") return []; // not asked on this connection
    this._requests.delete(ref);
    const messages = frame.messages.map((m) => ({
      channel: m.channel,
      id: m.id,
      data: m.data,
      origin: m.origin,
      ts: parseClock(m.ts, "ts"),
      position: parseClock(m.position, "position"),
    }));
    return [{ type: "history", ref, channel: frame.channel, messages, more: frame.more ?? false }];
  }

  _ack(frame) {
    if (Number.isInteger(frame.ref)) this._requests.delete(frame.ref);
    // The ack's position is where the message was stored, not where this client has read to.
    const position = parseClock(frame.position, "position");
    if (!this._pending.delete(frame.id)) return []; // a second ack after a republish
    const written = this._written.get(frame.channel);
    this._written.set(frame.channel, written === undefined ? position : mergePositions(written, position));
    return [{ type: "acked", id: frame.id, channel: frame.channel, position }];
  }

  _subscribed(frame) {
    if (Number.isInteger(frame.ref)) this._requests.delete(frame.ref);
    const state = this._channels.get(frame.channel);
    const ref = frame.ref ?? null;
    if (!state || !state.wanted || (ref !== null && ref !== state.ref)) return []; // withdrawn meanwhile
    const position = parseClock(frame.position, "position");
    const recovered = frame.recovered ?? false;
    // Live: reading starts at the channel's current position. Recovered: the replay that
    // follows gets us there; adopting the position now would drop the replay as duplicates.
    if (!recovered) {
      state.position = state.position === null ? position : mergePositions(state.position, position);
      state.expired = false;
    }
    return [{ type: "subscribed", channel: frame.channel, position, recovered }];
  }

  _error(frame) {
    const ref = frame.ref ?? null;
    // rate_limited: when to send it again (capped, so a bad relay cannot park us for hours).
    const retryAfterMs = frame.retry_after_ms == null ? null : Math.min(Math.max(0, frame.retry_after_ms), 60000);
    // (snake_case as on the wire: the Python session's event field has the same name)
    const base = { type: "error", code: frame.code, message: frame.message ?? "", ref, temporary: frame.temporary ?? false, retry_after_ms: retryAfterMs };
    const request = Number.isInteger(ref) ? this._requests.get(ref) : undefined;
    if (request === undefined && frame.code === "forbidden" && isStr(frame.channel)) {
      // A renewed token no longer allows a subscription: the relay ended it.
      const state = this._channels.get(frame.channel);
      if (state) {
        state.wanted = false;
        state.ref = null;
      }
      return [{ ...base, channel: frame.channel, publishId: null }];
    }
    if (request === undefined) return [{ ...base, channel: null, publishId: null }];
    this._requests.delete(ref);
    if (request.op === "presence") {
      this._book.refused(request.channel, request.version, { temporary: base.temporary, again: request.again });
      return [{ type: "presence_refused", channel: request.channel, version: request.version, code: frame.code, message: base.message, temporary: base.temporary }];
    }
    if (request.op === "subscribe") {
      const state = this._channels.get(request.channel);
      if (!state || !state.wanted || state.ref !== ref) return [];
      if (frame.code === "position_expired") {
        const earliest = parseClock(frame.earliest ?? {}, "earliest");
        state.wanted = false;
        state.expired = true;
        state.ref = null;
        return [{ type: "expired", channel: request.channel, earliest }];
      }
      if (frame.code !== "already_subscribed") {
        state.ref = null;
        state.wanted = base.temporary; // a temporary failure is retried; a permanent one is not
      }
    } else if (request.op === "publish" && !base.temporary) {
      this._pending.delete(request.publishId); // resending it would be refused again
    }
    return [{ ...base, channel: request.channel, publishId: request.publishId ?? null }];
  }

  _ref() {
    return this._nextRef++;
  }

  _resumeFrom(state) {
    return state.expired ? null : state.position;
  }

  _subscribeFrame(channel, state, position) {
    const ref = this._ref();
    state.ref = ref;
    this._requests.set(ref, { op: "subscribe", channel });
    const frame = { op: "subscribe", channel, ref };
    if (position !== null) frame.position = position;
    if (state.presence) frame.presence = true;
    return JSON.stringify(frame);
  }

  _publishFrame(id) {
    const { channel, dataJson, after } = this._pending.get(id);
    const ref = this._ref();
    this._requests.set(ref, { op: "publish", channel, publishId: id });
    // The causal context is taken again at every (re)send: sent again after a failover, a
    // publish covers the acks of this client's earlier publishes that came meanwhile
    // (session.py's _publish_frame). A frame near the relay's limit keeps the context it
    // was checked with.
    const now = this._context(channel);
    let context = after;
    if (now !== null) {
      const grown = mergePositions(after ?? {}, now);
      const limit = this.frameLimit;
      if (limit === null || publishSize(channel, id, dataJson, grown) <= limit) context = grown;
    }
    return publishFrame(channel, id, dataJson, ref, context);
  }
}

// Bytes of a publish frame with the longest ref it can get (session.py's _LONGEST_REF, 2**63):
// refs only grow, so a frame that fits now still fits when it is resent many requests later.
const LONGEST_REF = "9223372036854775808";
const utf8 = new TextEncoder();

/** A publish frame; the caller's JSON text is spliced in unchanged, the context (if any) last. */
function publishFrame(channel, id, dataJson, ref, after) {
  const context = after ? `,"after":${JSON.stringify(after)}` : "";
  return `{"op":"publish","channel":${JSON.stringify(channel)},"id":${JSON.stringify(id)},"data":${dataJson},"ref":${ref}${context}}`;
}

/** A presence.enter or presence.update frame; the caller's JSON text spliced in unchanged. */
function enterFrame(op, channel, dataJson, clientId, ref) {
  const who = clientId === null ? "" : `,"client_id":${JSON.stringify(clientId)}`;
  const data = dataJson === null ? "" : `,"data":${dataJson}`;
  return `{"op":${JSON.stringify(op)},"channel":${JSON.stringify(channel)}${who}${data},"ref":${ref}}`;
}

/** The size in bytes of the publish frame for (channel, id, dataJson, after), as the relay counts it. */
export function publishSize(channel, id, dataJson, after = null) {
  return utf8.encode(publishFrame(channel, id, dataJson, LONGEST_REF, after)).length;
}

// --- URLs ------------------------------------------------------------------------------------

const RELAY_PATHS = ["/v1/ws", "/v1/edges", "/v1/ping"];

/**
 * A relay's HTTP base (scheme://host:port plus any path prefix) and WebSocket URL from any of
 * its URLs: ws://, wss://, http://, https://, with or without /v1/ws, /v1/edges or /v1/ping.
 */
export function edgeUrls(raw) {
  const url = new URL(String(raw).trim(), globalThis.location?.href);
  const scheme = { "ws:": "http:", "wss:": "https:", "http:": "http:", "https:": "https:" }[url.protocol];
  if (!scheme || !url.hostname) throw new RangeError(`${raw} is not a ws://, wss://, http:// or https:// URL of a relay`);
  let path = url.pathname.replace(/\/+$/, "");
  for (const suffix of RELAY_PATHS) {
    if (path.endsWith(suffix)) {
      path = path.slice(0, -suffix.length);
      break;
    }
  }
  return { http: `${scheme}//${url.host}${path}`, ws: `${scheme === "https:" ? "wss:" : "ws:"}//${url.host}${path}/v1/ws` };
}

// --- the SSE fallback: frames as HTTP requests (relay/protocol/http_api.py, in reverse) ------

// GET /v1/sse serves at most this many channels per stream (http_api.MAX_SSE_CHANNELS).
export const MAX_SSE_CHANNELS = 32;
const CHANNEL_RE = /^[A-Za-z0-9_\-:@/=+!~.,]{1,200}$/;

function base64url(text) {
  let binary = "";
  for (const byte of utf8.encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** The SSE event id of a stream at `positions` ({channel: position}): base64url of the JSON
 * [{channel: position}], as http_api.encode_event_id writes it; sent as ?last_event_id=. */
export function encodeEventId(positions) {
  const clocks = {};
  for (const [channel, position] of Object.entries(positions)) clocks[channel] = sortedClock(position);
  return base64url(JSON.stringify([clocks]));
}

/**
 * Which of `channels` (in order) one SSE stream can carry: {stream, refused: [[channel,
 * code, message]]}. The relay refuses the whole stream (HTTP 400) for one bad name, and
 * `channels=a,b` cannot carry a name with a comma: such channels are refused one by one here
 * instead, as a WebSocket relay would refuse their subscribe.
 */
export function sseChannels(channels) {
  const stream = [];
  const refused = [];
  for (const channel of channels) {
    if (!isStr(channel) || !CHANNEL_RE.test(channel)) {
      refused.push([channel, "invalid_channel", `invalid channel name ${JSON.stringify(String(channel).slice(0, 60))}`]);
    } else if (channel.includes(",")) {
      refused.push([channel, "bad_request", `${channel}: a channel name with a comma cannot be subscribed over SSE`]);
    } else if (stream.length >= MAX_SSE_CHANNELS) {
      refused.push([channel, "limit_exceeded", `${channel}: an SSE stream carries at most ${MAX_SSE_CHANNELS} channels`]);
    } else {
      stream.push(channel);
    }
  }
  return { stream, refused };
}

/** The URL of the SSE stream for `channels`, resuming each from `positions` (channels
 * without one start live), with the token (EventSource cannot send headers); `presence`:
 * every channel with its member list and presence events (presence=1). */
export function sseUrl(http, channels, positions = {}, token = null, presence = false) {
  const query = [`channels=${channels.map(encodeURIComponent).join(",")}`];
  const kept = Object.fromEntries(channels.filter((c) => positions[c] && Object.keys(positions[c]).length).map((c) => [c, positions[c]]));
  if (Object.keys(kept).length) query.push(`last_event_id=${encodeEventId(kept)}`);
  if (token !== null && token !== undefined) query.push(`token=${encodeURIComponent(token)}`);
  if (presence) query.push("presence=1");
  return `${http}/v1/sse?${query.join("&")}`;
}

/**
 * What a client frame (a string the session made) is over HTTP: {op, ref, channel, ...} with
 * {method, path, body} for the requests the HTTP API serves (publish: POST, history and
 * presence.get: GET); subscribe/unsubscribe change the SSE stream's channels; ping and auth
 * are the client's own; presence.enter/update/leave have no HTTP request (the API has none).
 */
export function httpRequest(text) {
  const frame = JSON.parse(text);
  const ref = frame.ref ?? null;
  const path = (channel, kind = "messages") => `/v1/channels/${encodeURIComponent(channel)}/${kind}`;
  switch (frame.op) {
    case "publish": {
      const body = { data: frame.data, id: frame.id };
      if (frame.after) body.after = frame.after;
      return { op: "publish", ref, channel: frame.channel, id: frame.id, method: "POST", path: path(frame.channel), body: JSON.stringify(body) };
    }
    case "history": {
      let query = `?limit=${frame.limit}`;
      if (frame.before) query += `&before=${encodeURIComponent(JSON.stringify(frame.before))}`;
      return { op: "history", ref, channel: frame.channel, method: "GET", path: path(frame.channel) + query, body: null };
    }
    case "presence.get":
      return { op: "presence.get", ref, channel: frame.channel, method: "GET", path: path(frame.channel, "presence"), body: null };
    case "presence.enter":
    case "presence.update":
    case "presence.leave":
      return { op: frame.op, ref, channel: frame.channel };
    case "subscribe":
      return { op: "subscribe", ref, channel: frame.channel, position: frame.position ?? null, presence: frame.presence === true };
    case "unsubscribe":
      return { op: "unsubscribe", ref, channel: frame.channel };
    case "auth":
      return { op: "auth", ref, token: frame.token };
    default:
      return { op: frame.op, ref };
  }
}

// Failed WebSocket opens in a row, each while the relay answered GET /v1/ping, before SSE
// (transport.py's HANDSHAKE_FAILURES_BEFORE_SSE); the retry's jitter (RETRY_JITTER).
export const HANDSHAKE_FAILURES_BEFORE_SSE = 2;
const RETRY_JITTER = 0.25;

/**
 * When to use which transport (relay/client/transport.py's TransportPolicy; pure: time and
 * randomness passed in). A page cannot see the HTTP status a WebSocket upgrade was refused
 * with (nor tell a refused TCP connection from a proxy's 403), so every failed open is a
 * "handshake" failure here: it counts only when the same relay answered GET /v1/ping (else the
 * relay is down: ordinary failover), and `handshakeFailures` (2) in a row switch to SSE.
 * Once on SSE every edge is opened with SSE, and WebSocket is tried again `retryMs` (±25 %)
 * after the last failed try: in the background while the stream is up, or as the next
 * attempt after a drop. A WebSocket that opens puts the client back on WebSocket, count
 * cleared; an edge that SSE cannot open puts the next attempt back on WebSocket first, with
 * the count kept (a blocked WebSocket falls back again at once).
 */
export class TransportPolicy {
  constructor({ enabled = true, handshakeFailures = HANDSHAKE_FAILURES_BEFORE_SSE, retryMs = 30000, random = Math.random } = {}) {
    if (!(Number.isInteger(handshakeFailures) && handshakeFailures >= 1)) throw new RangeError(`handshakeFailures must be an integer >= 1, not ${handshakeFailures}`);
    if (!(Number.isFinite(retryMs) && retryMs > 0)) throw new RangeError(`websocketRetryMs must be a number > 0, not ${retryMs}`);
    this.enabled = enabled;
    this.handshakeFailures = handshakeFailures;
    this.retryMs = retryMs;
    this._random = random;
    this.transport = "websocket"; // what the next attempt opens, unless a retry is due
    this.failuresInARow = 0; // failed opens, each while the relay answered, since the last success
    this.retryAt = null; // on SSE: when to try a WebSocket again
  }

  /** The transport of the next connection attempt. */
  next(nowMs) {
    return this.transport === "sse" && !this.retryDue(nowMs) ? "sse" : "websocket";
  }

  /** On SSE, whether to try a WebSocket now. */
  retryDue(nowMs) {
    return this.transport === "sse" && nowMs >= this.retryAt;
  }

  /** A WebSocket did not open; `pingAnswered`: the same relay answered GET /v1/ping meanwhile. */
  websocketFailed(pingAnswered, nowMs) {
    if (!this.enabled || !pingAnswered) return; // the relay is down: says nothing about WebSocket
    this.failuresInARow += 1;
    if (this.transport === "sse" || this.failuresInARow >= this.handshakeFailures) {
      this.transport = "sse";
      this.retryAt = nowMs + this.retryMs * (1 - RETRY_JITTER + 2 * RETRY_JITTER * this._random());
    }
  }

  /** An edge could not be opened with SSE: WebSocket first next time, the count kept. */
  sseFailed() {
    this.transport = "websocket";
    this.retryAt = null;
  }

  /** A WebSocket opened (and the relay spoke on it): back on WebSocket, count cleared. */
  websocketOpened() {
    this.transport = "websocket";
    this.failuresInARow = 0;
    this.retryAt = null;
  }
}

// --- routing: the plan of edges, moving back (relay/client/routing.py, directory.py) ---------

/**
 * Where a redirect from a relay of `sourceRegion` (at `sourceUrl`) to `url` (an edge of `region`,
 * as the redirect says) may send us, given the survey's candidates [[region, url], ...]: the
 * known edge with the same HTTP base when it is of `sourceRegion`; null otherwise, and null for
 * a plain ws:// target of a wss:// relay. Only a sibling of the redirecting relay that the
 * directory lists: every connection carries the token, so a relay must not be able to send
 * clients (and their tokens) anywhere; across regions the client's own measured order decides
 * (Client._redirectTarget also wants `sourceRegion` first in that order).
 */
export function redirectTarget(candidates, url, region = null, sourceRegion = null, sourceUrl = null) {
  // Absolute, with a host: URL() would resolve "/v1/ws" against the page and read "ws:///v1/ws"
  // as host "v1"; Python's urlsplit sees no host in either.
  const authority = isStr(url) ? /^[a-z][a-z0-9+.-]*:\/\/([^/?#]*)/i.exec(url.trim()) : null;
  if (!authority || !authority[1].replace(/^.*@/, "").replace(/:\d*$/, "")) return null;
  let endpoint;
  try {
    endpoint = edgeUrls(url);
  } catch {
    return null;
  }
  if (sourceRegion == null) return null;
  const secure = (u) => /^(wss|https):\/\//i.test(String(u).trim());
  if (secure(sourceUrl) && !secure(endpoint.ws)) return null; // never downgrade
  const known = candidates.find(([, knownUrl]) => edgeUrls(knownUrl).http === endpoint.http);
  if (known) return known[0] === sourceRegion ? [known[0], known[1]] : null; // a known edge of another region
  return null;
}

/**
 * Directory + RTT samples per edge URL -> {directory, samples, choice, candidates}.
 * A region's RTT is that of its first edge (directory order) that answered a probe; within a
 * region, edges that answered come first. candidates: [region, url] in the order to try them.
 */
export function plan(directory, samples, { prefer = null } = {}) {
  const byRegion = new Map();
  for (const edge of directory.edges) {
    if (!byRegion.has(edge.region)) byRegion.set(edge.region, []);
    byRegion.get(edge.region).push(edge);
  }
  const reachable = (edge) => (samples[edge.url] ?? []).some((s) => s !== null && s !== undefined);
  const regionSamples = {};
  const inOrder = new Map();
  for (const [region, edges] of byRegion) {
    const sorted = [...edges.filter(reachable), ...edges.filter((e) => !reachable(e))];
    inOrder.set(region, sorted);
    regionSamples[region] = samples[sorted[0].url] ?? [];
  }
  const choice = choose(directory.edges, regionSamples, { prefer });
  const candidates = choice.order.flatMap((region) => inOrder.get(region).map((e) => [region, e.url]));
  return { directory, samples, choice, candidates };
}

export const DEFAULT_MIN_GAIN_MS = 5.0;

/**
 * Whether to leave `current` for the nearest region now, at a safe point (routing's
 * should_move_back): "stay" never moves; "when-idle" only with nothing in flight;
 * "immediately" at the first safe point. The target must be healthy and reachable and, when
 * `current` is itself usable, nearer by more than minGainMs, unless it is the region the
 * choice was told to prefer (it is first for that reason, not for its RTT).
 */
export function shouldMoveBack(current, choice, { policy = "stay", idle, minGainMs = DEFAULT_MIN_GAIN_MS } = {}) {
  if (policy === "stay") return false;
  if (policy === "when-idle" && !idle) return false;
  if (policy !== "when-idle" && policy !== "immediately") throw new RangeError(`unknown move-back policy ${JSON.stringify(policy)}`);
  const preferred = (region) => choice.healthy.includes(region) && choice.rttMs[region] !== null && choice.rttMs[region] !== undefined;
  const target = choice.order.length ? choice.order[0] : null;
  if (target === null || target === current || !preferred(target)) return false;
  if (!preferred(current)) return true; // current is down or unreachable: anything usable is better
  if (choice.prefer != null && target === choice.prefer) return true; // back home
  return choice.rttMs[current] - choice.rttMs[target] > minGainMs;
}

// --- the client ------------------------------------------------------------------------------

const now = () => (globalThis.performance ? performance.now() : Date.now());

// Redirects followed in a row without staying anywhere: past this, two relays sending us to
// each other (both full) cost a backoff like any failed attempt.
const MAX_REDIRECTS_IN_A_ROW = 3;
// A relay that redirected us and does not close: leave after this.
const REDIRECT_GRACE_MS = 5000;

// After this many rounds in which every edge failed, the client is "suspended".
const SUSPEND_AFTER_ROUNDS = 2;
// While suspended, rounds are spaced by up to this many times maxMs.
const SUSPENDED_FACTOR = 6;

/** Create a client and start connecting; `client.ready` resolves at the first connection. */
export function createClient(seeds, options = {}) {
  return new Client(seeds, options);
}

/**
 * Connect to the nearest healthy region of the network the seeds belong to, and resolve once
 * connected. Rejects (and closes the client) if it ends before that (a relay refusing for
 * good) or is not connected within options.connectTimeoutMs (0: no limit).
 */
export async function connect(seeds, options = {}) {
  const client = new Client(seeds, options);
  const limit = client.options.connectTimeoutMs;
  let timer = null;
  try {
    await (limit > 0
      ? Promise.race([
          client.ready,
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new RelaynetError("timeout", `not connected within ${limit} ms`)), limit);
          }),
        ])
      : client.ready);
    return client;
  } catch (exc) {
    client.close();
    throw exc;
  } finally {
    clearTimeout(timer);
  }
}

export class Client {
  constructor(seeds, options = {}) {
    const list = typeof seeds === "string" ? seeds.split(",") : [...(seeds ?? [])];
    this.seeds = list.map((s) => String(s).trim()).filter(Boolean);
    if (!this.seeds.length) throw new RangeError("at least one seed URL is needed");
    this._seedUrls = this.seeds.map(edgeUrls); // throws on a malformed seed
    this.options = { ...DEFAULT_OPTIONS, ...options };
    const o = this.options;
    if (!(o.probes >= 1)) throw new RangeError("probes must be >= 1");
    if (!["stay", "when-idle", "immediately"].includes(o.moveBack)) throw new RangeError(`moveBack must be stay, when-idle or immediately: ${o.moveBack}`);
    if (o.prefer != null && !isStr(o.prefer)) throw new RangeError(`prefer must be a region name or null: ${o.prefer}`);
    this._WebSocket = o.WebSocket ?? globalThis.WebSocket;
    this._EventSource = o.EventSource ?? globalThis.EventSource ?? null;
    this._fetch = o.fetch ?? globalThis.fetch.bind(globalThis);
    this._transports = new TransportPolicy({ enabled: Boolean(o.sseFallback && this._EventSource), retryMs: o.websocketRetryMs, random: o.random });
    this._backoff = new Backoff({ baseMs: o.baseMs, maxMs: o.maxMs, resetAfterMs: o.resetAfterMs, random: o.random });
    this._roundBackoff = new Backoff({ baseMs: o.maxMs, maxMs: o.maxMs * SUSPENDED_FACTOR, resetAfterMs: o.resetAfterMs, random: o.random });
    this._retryBackoff = new Backoff({ baseMs: o.baseMs, maxMs: o.maxMs, resetAfterMs: 0, random: o.random });
    this._session = new Session({ idMemory: o.idMemory, defaultMaxFrameBytes: o.maxFrameBytes });

    this.state = "connecting";
    this.region = null;
    this.relay = null;
    this.connectionId = null;
    this.url = null; // the edge URL of the current (or last) connection
    this.transport = null; // "websocket" or "sse" (EventSource + fetch): the current (or last) one's
    this.heartbeatS = null;
    this.survey = null; // {directory, samples (per edge URL), choice, candidates, at}
    this.closeCode = null;
    this.closeReason = null;
    this.connections = 0; // how many connections were established so far
    this.tokenExp = null; // when the current connection's token expires (s since the epoch)
    this._renewTimer = null;
    this.redirects = 0; // how many redirects from relays the client followed

    this._listeners = new Map(); // event -> Set(fn)
    this._subs = new Map(); // channel -> {listeners, onError, ready, resolve, reject, settled}
    this._acks = new Map(); // publish id -> {resolve, reject}
    this._histories = new Set(); // history requests waiting for a reply: {channel, limit, before, ref, resolve, reject}
    this._memberGets = new Set(); // presence.get requests waiting for a reply: {channel, ref, resolve, reject}
    this._presenceWaiters = new Set(); // presence ops until settled: {channel, version, resolve, reject}
    this._presences = new Map(); // channel -> the handle client.presence(channel) returned
    this._ackWaiters = new Set(); // resolved at every ack (move back "when-idle")
    this._ws = null;
    this._stopped = false;
    this._timers = new Set(); // pending sleeps: {timer, resolve}
    this._interrupt = null; // ends the current attempt or connection from our side
    this._liveness = null;
    this._retryTimer = null;
    this._moveTarget = null;
    this._redirected = false; // _moveTarget came from a relay's redirect, not our own move
    this._redirectsInARow = 0; // followed since the last `connected`
    this._redirectGrace = null; // the timer that leaves a relay which redirected us
    this.ready = new Promise((resolve, reject) => {
      this._readyResolve = resolve;
      this._readyReject = reject;
    });
    this.ready.catch(() => {}); // connect() reports it; createClient() users may not await it
    // Back online: try now rather than at the end of the backoff delay.
    this._online = () => this._wakeAll();
    globalThis.addEventListener?.("online", this._online);
    // Started after the constructor so that listeners added right away see every event.
    this._loop = Promise.resolve().then(() => this._run());
  }

  // --- public API ---------------------------------------------------------------------------

  /** Routing's choice from the last survey: {order, rttMs, reasons, healthy}. */
  get choice() {
    return this.survey ? this.survey.choice : null;
  }

  /**
   * Listen to "state" (state, info), "error" (RelaynetError), "expired" ({channel, earliest}),
   * "survey" (client.survey), "retry" ({inMs}), "connected" ({region, relay, transport, ...}) and
   * "redirect" ({from, url, region, reason, followed, ignored}: a relay sent us elsewhere;
   * followed false with why in ignored); returns a function that removes the listener.
   */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  /** The largest frame the current (or last) relay accepts, as its `connected` announced;
   * null before that, or from a relay that announces none (options.maxFrameBytes applies). */
  get maxFrameBytes() {
    return this._session.maxFrameBytes;
  }

  /** Unacknowledged publishes, {id: channel}. */
  get pending() {
    return this._session.pending;
  }

  /** Where this client is in `channel` (persist it to resume after a reload), or null. */
  position(channel) {
    return this._session.position(channel);
  }

  /**
   * Subscribe to `channel`; onMessage({channel, id, data, origin, ts, position}) gets every
   * message once, in the region's order, across reconnects and failovers. options.position
   * starts from a persisted position; options.onError(error) hears why the subscription ended
   * (refused, position expired, client failed). Returns {channel, ready, position(),
   * members(), unsubscribe()}; ready resolves with the first `subscribed` reply.
   *
   * options.presence: true (implied by options.onPresence) also follows who is on the
   * channel, in every region (the Python SDK's subscribe(channel, presence=True)):
   * options.onPresence({channel, action,
   * member, members}) gets action "sync" with the whole list (member null) first and again
   * after every reconnect, failover or transport switch (replace your view with it), then
   * "enter", "update" (new data, or status "present"/"unreachable") and "leave" with the
   * member and the list after the change. A member is {clientId, connection, region, relay,
   * status, data}; a client that reconnects is two members until its old connection leaves
   * ([presence] leave_after_s). sub.presence is {members, clientIds, synced} now. A channel
   * subscribed without presence cannot add it on another subscribe: unsubscribe first.
   */
  subscribe(channel, onMessage, options = {}) {
    if (typeof onMessage !== "function") throw new TypeError("subscribe(channel, onMessage): onMessage must be a function");
    if (options.onPresence != null && typeof options.onPresence !== "function") throw new TypeError("subscribe: options.onPresence must be a function");
    this._checkOpen();
    const presence = Boolean(options.presence || options.onPresence);
    let sub = this._subs.get(channel);
    if (sub && options.position) throw new Error(`already subscribed to ${JSON.stringify(channel)}: a start position applies to a new subscription`);
    if (sub && presence && !sub.presence) throw new Error(`already subscribed to ${JSON.stringify(channel)} without presence: unsubscribe first`);
    if (!sub) {
      sub = { listeners: new Set(), onErrors: new Set(), presenceListeners: new Set(), presence, view: new MemberView(), synced: false, settled: false };
      sub.ready = new Promise((resolve, reject) => {
        sub.resolve = resolve;
        sub.reject = reject;
      });
      sub.ready.catch(() => {});
      this._subs.set(channel, sub);
      this._send(this._session.subscribe(channel, options.position ?? null, { presence }));
    } else if (typeof options.onPresence === "function" && sub.synced) {
      // A listener added later starts from the list as it is now.
      const members = sub.view.members;
      queueMicrotask(() => sub.presenceListeners.has(options.onPresence) && this._callPresence(options.onPresence, { channel, action: "sync", member: null, members }));
    }
    sub.listeners.add(onMessage);
    if (typeof options.onError === "function") sub.onErrors.add(options.onError);
    if (typeof options.onPresence === "function") sub.presenceListeners.add(options.onPresence);
    return {
      channel,
      ready: sub.ready,
      position: () => this._session.position(channel),
      presence: {
        get members() {
          return sub.view.members;
        },
        get clientIds() {
          return sub.view.clientIds;
        },
        get synced() {
          return sub.synced; // a list has come: members is the channel's, not just empty
        },
      },
      unsubscribe: () => {
        sub.onErrors.delete(options.onError);
        sub.presenceListeners.delete(options.onPresence);
        if (!sub.listeners.delete(onMessage) || sub.listeners.size || this._subs.get(channel) !== sub) return;
        this._subs.delete(channel);
        if (this._session.channels.includes(channel)) this._send(this._session.unsubscribe(channel));
        else this._session.forget(channel);
      },
    };
  }

  /**
   * Publish `data` (any JSON value) with an idempotency id; resolves with the ack
   * {id, channel, position} once the region stored it. Sent again with the same id after
   * every reconnect (in any region) until acked; rejects on a permanent error or when the
   * client ends. The promise has the id as `.id`.
   */
  publish(channel, data) {
    if (this._stopped) return Promise.reject(new RelaynetError(this.state, `the client is ${this.state}`));
    const dataJson = JSON.stringify(data);
    if (dataJson === undefined) return Promise.reject(new TypeError("publish: data must be a JSON value"));
    let id, frame;
    try {
      // Refused above the relay's announced max_frame_bytes (else options.maxFrameBytes): sent,
      // it would close the connection (1009), and again after every reconnect.
      [id, frame] = this._session.publish(channel, dataJson);
    } catch (exc) {
      return Promise.reject(exc);
    }
    const promise = new Promise((resolve, reject) => this._acks.set(id, { resolve, reject }));
    promise.id = id;
    this._send(frame);
    return promise;
  }

  /**
   * The newest `limit` (1-1000, default 100) stored messages of `channel`, oldest first, in the
   * shape subscribe() hands them over; with `before` (a message's position) the ones that precede
   * it. No subscription needed. Resolves with {channel, messages, more} (more: older messages are
   * still stored); waits for a connection, and asks again on the next one if the connection ends
   * before the reply. Rejects with a RelaynetError (e.g. invalid_channel) or when the client ends.
   */
  history(channel, { limit = 100, before = null } = {}) {
    if (this._stopped) return Promise.reject(new RelaynetError(this.state, `the client is ${this.state}`));
    if (!(Number.isInteger(limit) && limit >= 1 && limit <= 1000)) return Promise.reject(new RangeError(`limit must be 1..1000, not ${limit}`));
    return new Promise((resolve, reject) => {
      const request = { channel, limit, before, ref: null, resolve, reject };
      this._histories.add(request);
      if (this._ws && this._ws.readyState === 1 && this.state === "connected") this._askHistory(request);
    });
  }

  _askHistory(request) {
    let frame;
    try {
      [request.ref, frame] = this._session.history(request.channel, { limit: request.limit, before: request.before });
    } catch (exc) {
      this._histories.delete(request);
      request.reject(exc);
      return;
    }
    this._send(frame);
  }

  /**
   * Presence on `channel` (the Python SDK's client.presence(channel); Ably's names):
   * {channel, enter(data, {clientId}), update(data), leave(), members(), entered, clientId}.
   * enter() makes this client a member (as `clientId`, default options.clientId; null: the
   * token's sub, else the connection id) with `data` (any JSON value; null: none) and keeps
   * it one: it enters again, with the same data, on every new connection, in whichever
   * region, until leave(). Entering again changes the data. update() rejects (Error) if not
   * entered; leave() does nothing if not entered. Each resolves with {channel, clientId}
   * once the relay applied it (while disconnected: on the next connection). members()
   * resolves with the member list from the relay (no subscription needed; over SSE a GET).
   * Rejections are RelaynetErrors: "forbidden" (a token without the presence capability, or
   * a clientId other than its sub), "too_large", and "presence_unavailable" on the SSE
   * fallback, whose HTTP API cannot enter or leave: what was entered before stays wanted
   * and is entered again once the client is back on a WebSocket.
   */
  presence(channel) {
    if (!isStr(channel)) throw new TypeError("presence(channel): channel must be a string");
    let handle = this._presences.get(channel);
    if (handle) return handle;
    const session = this._session;
    handle = {
      channel,
      enter: (data = null, { clientId = this.options.clientId ?? null } = {}) => this._presenceOp(channel, (s, dataJson) => s.presenceEnter(channel, dataJson, clientId), data),
      update: (data = null) => this._presenceOp(channel, (s, dataJson) => s.presenceUpdate(channel, dataJson), data),
      leave: () => this._presenceOp(channel, (s) => s.presenceLeave(channel)),
      members: () => this._members(channel),
      /** Entered (or being entered): the client is in the set on every connection. */
      get entered() {
        return session.presenceEntry(channel) !== null;
      },
      /** Our member's client id as the relay confirmed it; null while not entered. */
      get clientId() {
        return session.presenceClientId(channel);
      },
    };
    this._presences.set(channel, handle);
    return handle;
  }

  /** Make a presence op with the session and wait until the relay applied it: on this
   * connection, or when a new one enters again. */
  _presenceOp(channel, op, data = null) {
    if (this._stopped) return Promise.reject(new RelaynetError(this.state, `the client is ${this.state}`));
    if (this._ws instanceof SseSocket && this.state === "connected") {
      return Promise.reject(presenceUnavailable(channel));
    }
    let made;
    try {
      let dataJson = null;
      if (data !== null) {
        dataJson = JSON.stringify(data);
        if (dataJson === undefined) throw new TypeError("presence: data must be a JSON value");
      }
      made = op(this._session, dataJson);
    } catch (exc) {
      return Promise.reject(exc);
    }
    if (made === null) return Promise.resolve({ channel, clientId: null }); // a leave, not entered
    const [version, frame] = made;
    const promise = new Promise((resolve, reject) => this._presenceWaiters.add({ channel, version, resolve, reject }));
    this._send(frame);
    return promise;
  }

  /** Resolve every presence op the session now counts as settled. */
  _settlePresence() {
    for (const waiter of [...this._presenceWaiters]) {
      if (this._session.presenceDone(waiter.channel) < waiter.version) continue;
      this._presenceWaiters.delete(waiter);
      waiter.resolve({ channel: waiter.channel, clientId: this._session.presenceClientId(waiter.channel) });
    }
  }

  _members(channel) {
    if (this._stopped) return Promise.reject(new RelaynetError(this.state, `the client is ${this.state}`));
    return new Promise((resolve, reject) => {
      const request = { channel, ref: null, resolve, reject };
      this._memberGets.add(request);
      if (this._ws && this._ws.readyState === 1 && this.state === "connected") this._askMembers(request);
    });
  }

  _askMembers(request) {
    let frame;
    [request.ref, frame] = this._session.presenceGet(request.channel);
    this._send(frame);
  }

  _callPresence(fn, event) {
    try {
      fn(event);
    } catch (exc) {
      this._emit("error", exc);
    }
  }

  /** Close the connection (1000) and end the client: state "closed"; pending publishes reject. */
  close() {
    this._finish("closed", new RelaynetError("closed", "client closed"));
  }

  // --- events and state ---------------------------------------------------------------------

  _emit(event, ...args) {
    for (const fn of [...(this._listeners.get(event) ?? [])]) {
      try {
        fn(...args);
      } catch (exc) {
        if (event !== "error") this._emit("error", exc);
        else console.error("relaynet: an error listener threw", exc);
      }
    }
  }

  _setState(state, info = {}) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this._emit("state", state, { previous, region: this.region, relay: this.relay, ...info });
  }

  _checkOpen() {
    if (this._stopped) throw new RelaynetError(this.state, `the client is ${this.state}`);
  }

  /** End the client: fail what waits, end the subscriptions, close the connection. */
  _finish(state, error) {
    if (this._stopped) return;
    this._stopped = true;
    globalThis.removeEventListener?.("online", this._online);
    clearTimeout(this._retryTimer);
    clearTimeout(this._redirectGrace);
    this._stopLiveness();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      detach(ws);
      try {
        ws.close(1000, state === "closed" ? "client closed" : "client failed");
      } catch {
        // closing already
      }
    }
    this._interrupt?.(null);
    this._wakeAll();
    for (const [, ack] of this._acks) ack.reject(error);
    this._acks.clear();
    for (const request of this._histories) request.reject(error);
    this._histories.clear();
    for (const request of this._memberGets) request.reject(error);
    this._memberGets.clear();
    for (const waiter of this._presenceWaiters) waiter.reject(error);
    this._presenceWaiters.clear();
    for (const [channel, sub] of this._subs) this._endSub(channel, sub, state === "closed" ? null : error);
    this._subs.clear();
    this._setState(state, { code: error.closeCode ?? null, reason: error.message });
    this._readyReject(error);
  }

  _endSub(channel, sub, error) {
    if (!sub.settled) sub.reject(error ?? new RelaynetError("closed", "client closed"));
    sub.settled = true;
    if (error === null) return;
    for (const fn of sub.onErrors) {
      try {
        fn(error);
      } catch (exc) {
        this._emit("error", exc);
      }
    }
  }

  // --- the supervisor (relay/client/supervisor.py, run by client.py) ------------------------

  // After a drop the client waits a jittered delay and goes back to the same edge first, then
  // at once to the next ones in the failover order. A round in which every edge failed ends
  // with a fresh survey (directory and probes, from the seeds and every edge known so far);
  // after SUSPEND_AFTER_ROUNDS such rounds the state is "suspended" and rounds are spaced
  // further apart by a second, slower backoff. A relay that went silent (liveness) is tried
  // last in the next round, not first.
  async _run() {
    let target = null; // [region, url] of the edge we were on: try it first
    let failedRounds = 0;
    // Back off before the next attempt: after a drop, and between rounds. Not between the edges
    // of a round: the jitter before its first attempt already spread a crowd of clients leaving
    // the same relay, and a refused edge says nothing about the next one.
    let pause = false;
    let avoid = null; // [region, url] of an edge that went silent: try it last
    let needSurvey = true;
    this._emit("state", this.state, { previous: null });
    while (!this._stopped) {
      if (needSurvey) {
        await this._refresh();
        needSurvey = false;
        if (this._stopped) return;
      }
      const order = this._order(target, avoid);
      avoid = null;
      let connected = false;
      for (const [region, url] of order) {
        if (pause) {
          const delay = this._backoff.nextDelay();
          this._emit("retry", { inMs: Math.round(delay), region, url });
          await this._sleep(delay);
          if (this._stopped) return;
          pause = false;
        }
        if (this.state !== "suspended") this._setState("connecting", { url, attempt: this._backoff.attempt });
        let token = null;
        if (this.options.tokenProvider) {
          try {
            token = await this.options.tokenProvider();
          } catch (exc) {
            // Most likely transient (the token service is unreachable): a failed attempt.
            this._emit("error", new RelaynetError("token_provider", `token provider failed: ${exc?.message ?? exc}`));
            if (this._stopped) return;
            continue;
          }
          if (this._stopped) return;
        }
        const outcome = await this._connection(region, url, token);
        if (this._stopped) return;
        if (outcome === null) continue;
        connected = true;
        failedRounds = 0;
        this._roundBackoff.reset();
        if (outcome.moveTo) {
          target = outcome.moveTo;
          pause = false; // told where to go (or moving by choice): no reason to wait
          if (outcome.redirected && this.state === "connected") this._setState("disconnected", { code: outcome.code ?? null, reason: outcome.reason ?? "redirected" });
        } else if (outcome.silent) {
          // A frozen relay's kernel may still accept connections while nothing answers:
          // retrying it first would only wait out the open timeout.
          target = null;
          avoid = [region, url];
          pause = true;
          this._setState("disconnected", { code: outcome.code, reason: outcome.reason });
        } else {
          target = [region, url];
          pause = true;
          this._setState("disconnected", { code: outcome.code, reason: outcome.reason });
        }
        break;
      }
      if (connected) continue;
      // Every edge failed (or none is known): a fresh survey, and start over.
      failedRounds += 1;
      needSurvey = true;
      target = null;
      pause = true;
      this._redirectsInARow = 0; // a new round: redirects may be worth following again
      if (failedRounds >= SUSPEND_AFTER_ROUNDS) {
        this._setState("suspended", { reason: `every edge failed ${failedRounds} rounds in a row` });
        const delay = this._roundBackoff.nextDelay();
        this._emit("retry", { inMs: Math.round(delay) });
        await this._sleep(delay);
      } else if (!order.length) {
        await this._sleep(this._backoff.nextDelay());
      }
    }
  }

  _order(target, avoid = null) {
    let candidates = this.survey ? this.survey.candidates.map((c) => [...c]) : [];
    if (avoid !== null && candidates.some(([r, u]) => r === avoid[0] && u === avoid[1])) {
      candidates = [...candidates.filter(([r, u]) => !(r === avoid[0] && u === avoid[1])), [...avoid]];
    }
    if (target === null) return candidates;
    const rest = candidates.filter(([r, u]) => !(r === target[0] && u === target[1]));
    return [target, ...rest];
  }

  _sleep(ms) {
    return new Promise((resolve) => {
      const entry = { resolve };
      entry.timer = setTimeout(() => {
        this._timers.delete(entry);
        resolve();
      }, ms);
      this._timers.add(entry);
    });
  }

  _wakeAll() {
    for (const entry of this._timers) {
      clearTimeout(entry.timer);
      entry.resolve();
    }
    this._timers.clear();
  }

  // --- survey: directory, probes, plan ------------------------------------------------------

  /** A new survey from the seeds and every edge known so far; the old one stays when nobody
   * answers. */
  async _refresh() {
    const sources = [...this._seedUrls];
    for (const [, url] of this.survey?.candidates ?? []) sources.push(edgeUrls(url));
    const unique = new Map(); // one request per relay, by HTTP base
    for (const source of sources) if (!unique.has(source.http)) unique.set(source.http, source);
    let directory = await this._fetchDirectory([...unique.values()]);
    const allowed = this.options.regions;
    if (directory !== null && allowed && directory.source !== "seeds") {
      directory = { ...directory, edges: directory.edges.filter((e) => allowed.includes(e.region)) };
    }
    if (directory === null || this._stopped) {
      if (directory === null) this._emit("error", new RelaynetError("directory", "no seed or known edge answered", { temporary: true }));
      return null;
    }
    const urls = [...new Set(directory.edges.map((e) => e.url))];
    const samples = Object.fromEntries(await Promise.all(urls.map(async (url) => [url, await this._probe(url)])));
    if (this._stopped) return null;
    this.survey = { ...plan(directory, samples, { prefer: this.options.prefer }), at: Date.now() };
    this._emit("survey", this.survey);
    return this.survey;
  }

  /** GET with a timeout over the whole response: {status, text}; throws on network errors
   * (error.timedOut when the timeout hit). */
  async _get(url) {
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, this.options.probeTimeoutMs);
    try {
      const response = await this._fetch(url, { cache: "no-store", credentials: "omit", mode: "cors", redirect: "error", signal: controller.signal });
      return { status: response.status, text: await response.text() };
    } catch (exc) {
      throw Object.assign(new Error(String(exc?.message ?? exc)), { timedOut });
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * The edge directory of the first source (in list order) that serves one; the requests go
   * out together. When none does but some are relays without /v1/edges (they answer /v1/ping
   * with "pong"), those become the directory, each its own pseudo-region named by its URL.
   * null when no relay answered.
   */
  async _fetchDirectory(sources) {
    const attempts = sources.map((source) => this._directoryFrom(source));
    const answered = [];
    for (let i = 0; i < sources.length; i++) {
      const result = await attempts[i];
      if (result.answered) answered.push(sources[i].ws);
      if (result.directory) return result.directory;
    }
    if (!answered.length) return null;
    const unique = [...new Set(answered)];
    return { source: "seeds", region: null, relay: null, edges: unique.map((u) => ({ region: u, url: u, health: "unknown" })) };
  }

  async _directoryFrom(source) {
    let response;
    try {
      response = await this._get(`${source.http}/v1/edges`);
    } catch {
      return { answered: false };
    }
    // A relay without /v1/edges (an older one) still answers /v1/ping with "pong": it becomes a
    // pseudo-region. Anything else that answers (HTTP 404, bad JSON) is not a relay: never used.
    if (response.status !== 200) return { answered: await this._isRelay(source) };
    let doc;
    try {
      doc = JSON.parse(response.text);
    } catch {
      return { answered: false };
    }
    const valid =
      doc && isStr(doc.region) && Array.isArray(doc.edges) && (doc.relay == null || isStr(doc.relay)) &&
      doc.edges.every((e) => e && isStr(e.region) && isStr(e.url) && (e.health === undefined || isStr(e.health)));
    if (!valid) return { answered: false };
    const edges = [];
    for (const item of doc.edges) {
      let url;
      try {
        url = edgeUrls(item.url).ws;
      } catch {
        continue; // a bad edge URL
      }
      edges.push({ region: item.region, url, health: ["up", "down", "unknown"].includes(item.health) ? item.health : "unknown" });
    }
    if (!edges.some((e) => e.url === source.ws)) {
      // The relay that answered is an edge of its own region, whatever the directory lists
      // for it (a load balancer, a relay without public_url): its region's last resort.
      const own = edges.filter((e) => e.region === doc.region).map((e) => e.health);
      edges.push({ region: doc.region, url: source.ws, health: own.length ? own[0] : "up" });
    }
    return { answered: true, directory: { source: source.ws, region: doc.region, relay: doc.relay ?? null, edges } };
  }

  async _isRelay(source) {
    try {
      const { status, text } = await this._get(`${source.http}/v1/ping`);
      return status === 200 && text.trim() === "pong";
    } catch {
      return false;
    }
  }

  /** `probes` RTT samples in ms (null for a failed probe). Any HTTP answer below 500 is a
   * sample. The probes go out together: connecting then waits one round trip to the farthest
   * edge, not `probes` of them. */
  async _probe(url) {
    const target = `${edgeUrls(url).http}/v1/ping`;
    const one = async () => {
      const start = now();
      try {
        const { status } = await this._get(target);
        return status < 500 ? now() - start : null;
      } catch {
        return null;
      }
    };
    return Promise.all(Array.from({ length: this.options.probes }, one));
  }

  // --- one connection -----------------------------------------------------------------------

  /**
   * Open, resume, read until it ends: {code, reason}, with {moveTo, redirected} when it ends to
   * go elsewhere; null if it never got up (no WebSocket, or the first frame within
   * openTimeoutMs was neither `connected` nor a `redirect` we follow). Over a WebSocket, or
   * over SSE when the transport policy says so: a WebSocket on which the relay never spoke,
   * while it answers GET /v1/ping, counts against WebSocket, and once that has counted enough
   * (or on SSE already) the same relay is tried over SSE at once.
   */
  async _connection(region, url, token = null) {
    if (this._transports.next(now()) === "sse") return this._sseAttempt(region, url, token);
    const spoke = { value: false };
    const outcome = await this._attempt(region, url, token, "websocket", spoke);
    if (outcome !== null || spoke.value || this._stopped) return outcome;
    const answered = await this._isRelay(edgeUrls(url));
    if (this._stopped) return null;
    this._transports.websocketFailed(answered, now());
    if (this._transports.next(now()) !== "sse") return null;
    return this._sseAttempt(region, url, token);
  }

  async _sseAttempt(region, url, token) {
    const outcome = await this._attempt(region, url, token, "sse", { value: false });
    // Never up: SSE does not work here either (or the relay is gone); WebSocket first next.
    if (outcome === null && !this._stopped) this._transports.sseFailed();
    return outcome;
  }

  /** One connection over `kind`; `spoke.value` turns true at the relay's first frame. */
  _attempt(region, url, token, kind, spoke) {
    return new Promise((resolve) => {
      let ws;
      try {
        ws =
          kind === "sse"
            ? new SseSocket(edgeUrls(url).http, {
                token,
                plan: this._session.resumePlan(),
                resubscribe: () => this._session.resubscribe(),
                EventSource: this._EventSource,
                fetch: this._fetch,
                pingTimeoutMs: this.options.probeTimeoutMs,
              })
            : new this._WebSocket(withToken(url, token));
      } catch {
        resolve(null);
        return;
      }
      this._ws = ws;
      let up = false;
      let done = false;
      let timer = null;
      const finish = (outcome) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (this._ws === ws) this._ws = null;
        this._interrupt = null;
        this._stopLiveness();
        clearTimeout(this._renewTimer);
        this._renewTimer = null;
        clearTimeout(this._redirectGrace);
        this._redirectGrace = null;
        if (up) this._backoff.disconnected(now());
        if (outcome !== null && this._moveTarget !== null) {
          outcome = { ...outcome, moveTo: this._moveTarget, redirected: this._redirected };
          this._moveTarget = null;
          this._redirected = false;
        }
        resolve(outcome);
      };
      const giveUp = () => {
        detach(ws);
        try {
          ws.close(1000);
        } catch {
          // closing already
        }
        finish(null);
      };
      timer = setTimeout(giveUp, this.options.openTimeoutMs);
      ws.onopen = () => {
        clearTimeout(timer);
        timer = setTimeout(giveUp, this.options.openTimeoutMs); // for the `connected` frame
      };
      ws.onerror = () => {}; // a close event follows
      ws.onmessage = (event) => {
        if (done) return;
        spoke.value = true;
        this._lastRx = now();
        if (typeof event.data !== "string") {
          this._emit("error", new RelaynetError("bad_frame", "binary frame from the relay"));
          return;
        }
        const events = this._session.receive(event.data);
        if (up) {
          for (const e of events) this._handle(e);
          return;
        }
        const hello = events.find((e) => e.type === "connected" || e.type === "redirected");
        if (!hello) {
          giveUp(); // the first frame of v1 is `connected` (or `redirect`)
          return;
        }
        if (hello.type === "redirected") {
          // A relay at its connection limit says where to go instead (then closes 1013): there
          // next, without a pause; a redirect we do not follow is a failed attempt.
          const target = this._redirectTarget(hello, url, region);
          if (target === null) {
            giveUp();
            return;
          }
          this._follow(target, hello, url);
          detach(ws);
          try {
            ws.close(1000, "redirected");
          } catch {
            // closing already
          }
          finish({ code: null, reason: `redirected: ${hello.reason}` });
          return;
        }
        clearTimeout(timer);
        up = true;
        this._up(ws, hello, region, url);
      };
      ws.onclose = (event) => {
        if (!up) {
          finish(null);
          return;
        }
        const reason = event.reason || (event.code === 1006 ? "connection lost" : "");
        this.closeCode = event.code;
        this.closeReason = reason;
        if (this._moveTarget === null && closePolicy(event.code) === "stop") {
          finish({ code: event.code, reason });
          if (event.code === 1000) this._finish("closed", new RelaynetError("closed", `relay closed: ${reason}`, { closeCode: event.code }));
          else this._finish("failed", new RelaynetError("failed", `connection closed with ${event.code} ${JSON.stringify(reason)}: not reconnecting`, { closeCode: event.code }));
          return;
        }
        if (event.code === 1009) this._dropOversized();
        finish({ code: event.code, reason });
      };
      // Ends this attempt or connection from our side (close(), liveness, moving back).
      this._interrupt = (outcome) => {
        detach(ws);
        try {
          ws.close(1000, outcome?.reason ?? "client closed");
        } catch {
          // closing already
        }
        finish(up ? outcome : null);
      };
    });
  }

  _up(ws, hello, region, url) {
    // Publishes made under a larger limit (another relay's, or the default before any relay
    // announced one) that this relay would close the connection for: refused, not resent.
    for (const id of this._session.dropOversized()) {
      const limit = this._session.frameLimit;
      const ack = this._acks.get(id);
      this._acks.delete(id);
      ack?.reject(new RelaynetError("too_large", `the publish is larger than ${url} accepts (${limit} bytes)`, { publishId: id, limit }));
    }
    // Every connection, the first included, starts with the session's resubscribes and
    // republishes; frames made while disconnected are covered by them.
    for (const frame of this._session.onReconnect()) ws.send(frame);
    if (ws instanceof SseSocket) {
      // No presence op goes over SSE (the socket drops them): those not settled fail.
      for (const [channel, after] of this._session.presenceOnSse()) {
        for (const waiter of [...this._presenceWaiters]) {
          if (waiter.channel !== channel || waiter.version <= after) continue;
          this._presenceWaiters.delete(waiter);
          waiter.reject(presenceUnavailable(channel));
        }
      }
    }
    this._settlePresence(); // leaves: the new connection has entered nothing
    this.region = hello.region;
    this.relay = hello.relay;
    this.connectionId = hello.connectionId;
    this.heartbeatS = hello.heartbeatS;
    this.url = url;
    this.transport = ws instanceof SseSocket ? "sse" : "websocket";
    if (this.transport === "websocket") this._transports.websocketOpened();
    this.connections += 1;
    this._redirectsInARow = 0;
    this._backoff.connected(now());
    this._retryBackoff.reset();
    this._startLiveness(ws);
    this.tokenExp = hello.exp ?? null;
    this._scheduleRenewal(ws);
    this._setState("connected", { url, connectionId: hello.connectionId, transport: this.transport });
    this._emit("connected", { region: this.region, relay: this.relay, connectionId: this.connectionId, url, listedAs: region, transport: this.transport });
    this._readyResolve(this);
    // History requests of the last connection (or made while disconnected): asked (again) here.
    for (const request of this._histories) this._askHistory(request);
    for (const request of this._memberGets) this._askMembers(request);
    if (this.options.moveBack !== "stay") this._watchForMove(ws, hello.region);
    if (this.transport === "sse") this._retryWebSocket(ws, region, url);
  }

  /** Before the token expires, get a fresh one and present it on this connection. If that
   * fails the relay closes with 4003 at expiry, and the reconnect asks the provider again. */
  _scheduleRenewal(ws, delayMs = null) {
    clearTimeout(this._renewTimer);
    this._renewTimer = null;
    const provider = this.options.tokenProvider;
    if (!provider || this.tokenExp === null) return;
    const delay = delayMs ?? renewalDelayMs(this.tokenExp * 1000, Date.now());
    this._renewTimer = setTimeout(async () => {
      if (this._ws !== ws) return;
      let token;
      try {
        token = await provider();
      } catch (exc) {
        this._emit("error", new RelaynetError("token_provider", `token provider failed: ${exc?.message ?? exc}`));
        if (this._ws === ws) this._scheduleRenewal(ws, 1000);
        return;
      }
      if (token === null || token === undefined || this._ws !== ws || ws.readyState !== 1) return;
      ws.send(this._session.auth(token));
    }, delay);
  }

  _send(frame) {
    // Not connected: the next connection's resubscribes and republishes cover this frame.
    const ws = this._ws;
    if (ws && ws.readyState === 1 && this.state === "connected") ws.send(frame);
  }

  _handle(event) {
    switch (event.type) {
      case "message": {
        const sub = this._subs.get(event.channel);
        if (!sub) return;
        const { type: _type, ...message } = event;
        for (const fn of [...sub.listeners]) {
          try {
            fn(message);
          } catch (exc) {
            this._emit("error", exc);
          }
        }
        return;
      }
      case "subscribed": {
        const sub = this._subs.get(event.channel);
        if (sub && !sub.settled) {
          sub.settled = true;
          sub.resolve({ channel: event.channel, position: event.position, recovered: event.recovered });
        }
        return;
      }
      case "acked": {
        const ack = this._acks.get(event.id);
        this._acks.delete(event.id);
        ack?.resolve({ id: event.id, channel: event.channel, position: event.position });
        for (const wake of this._ackWaiters) wake();
        return;
      }
      case "history": {
        const request = [...this._histories].find((r) => r.ref === event.ref);
        if (!request) return;
        this._histories.delete(request);
        request.resolve({ channel: event.channel, messages: event.messages, more: event.more });
        return;
      }
      case "presence_sync":
      case "presence_change": {
        const sub = this._subs.get(event.channel);
        if (!sub) return;
        sub.view.apply(event);
        sub.synced ||= event.type === "presence_sync";
        const change = event.type === "presence_sync" ? { channel: event.channel, action: "sync", member: null } : { channel: event.channel, action: event.action, member: event.member };
        change.members = sub.view.members;
        for (const fn of [...sub.presenceListeners]) this._callPresence(fn, change);
        return;
      }
      case "members": {
        const request = [...this._memberGets].find((r) => r.ref === event.ref);
        if (!request) return;
        this._memberGets.delete(request);
        request.resolve(event.members);
        return;
      }
      case "presence_done":
        this._settlePresence();
        return;
      case "presence_refused": {
        const error = new RelaynetError(event.code, event.message || event.code, { temporary: event.temporary, channel: event.channel });
        const waiter = [...this._presenceWaiters].find((w) => w.channel === event.channel && w.version === event.version);
        if (waiter) {
          this._presenceWaiters.delete(waiter);
          waiter.reject(error);
        } else {
          this._emit("error", error); // entering again on a new connection: nobody waits for it
        }
        this._settlePresence();
        return;
      }
      case "expired":
        this._expired(event);
        return;
      case "error":
        this._error(event);
        return;
      case "redirected":
        this._onRedirect(event);
        return;
      case "connected":
        // An SSE stream reopened for another channel set (or a renewed token).
        if (!(this._ws instanceof SseSocket)) return;
        if (event.relay) this.relay = event.relay;
        if (event.connectionId) this.connectionId = event.connectionId;
        if (event.exp !== null) {
          this.tokenExp = event.exp;
          this._scheduleRenewal(this._ws);
        }
        return;
      case "authed":
        this.tokenExp = event.exp;
        if (this._ws) this._scheduleRenewal(this._ws);
        return;
      case "token_expiring":
        if (this._ws) this._scheduleRenewal(this._ws, 0);
        return;
      case "bad_frame":
        this._emit("error", new RelaynetError("bad_frame", `${this.url} sent a bad frame: ${event.reason}`));
        return;
      default:
    }
  }

  // --- redirects (supervisor.py: redirect_target, _follow, redirect_received) ---------------

  /** Where a redirect from `source` (a relay of `sourceRegion`) sends us, if we follow it:
   * [region, url], or null (and a "redirect" event that says why not). Only to a sibling of
   * that relay, and only while its region is our first choice: a client that failed over to a
   * far region and is redirected there goes back through its own order (nearest first)
   * instead of to a sibling far away. */
  _redirectTarget(event, source, sourceRegion) {
    let ignored = null;
    let target = null;
    const first = this.choice?.order?.[0] ?? null;
    if (this._redirectsInARow >= MAX_REDIRECTS_IN_A_ROW) {
      ignored = `ignored after ${this._redirectsInARow} redirects in a row`;
    } else if (sourceRegion == null || sourceRegion !== first) {
      ignored = `ignored: ${sourceRegion} is not our first choice (${first})`;
    } else {
      target = redirectTarget(this.survey?.candidates ?? [], event.url, event.region, sourceRegion, source);
      if (target === null) ignored = "not a relay of its region that the directory lists (or not TLS from a TLS relay); ignored";
    }
    if (ignored !== null) this._emit("redirect", { from: source, url: event.url, region: event.region, reason: event.reason, followed: false, ignored });
    return target;
  }

  _follow(target, event, source) {
    this._redirectsInARow += 1;
    this.redirects += 1;
    this._moveTarget = [...target];
    this._redirected = true;
    this._emit("redirect", { from: source, url: target[1], region: target[0], reason: event.reason, followed: true, ignored: null });
  }

  // The relay is shutting down (or shedding load) and says where to go: go there next instead
  // of backing off and retrying this one. The relay closes once our in-flight publishes are
  // acked; if it does not, we leave after REDIRECT_GRACE_MS.
  _onRedirect(event) {
    const source = this.url ?? "the relay";
    const target = this._redirectTarget(event, source, this.region);
    if (target === null) return;
    this._follow(target, event, source);
    const ws = this._ws;
    clearTimeout(this._redirectGrace);
    this._redirectGrace = setTimeout(() => {
      this._redirectGrace = null;
      if (this._ws === ws) this._interrupt?.({ code: 1000, reason: "redirected" });
    }, REDIRECT_GRACE_MS);
  }

  _expired({ channel, earliest }) {
    this._emit("expired", { channel, earliest });
    const sub = this._subs.get(channel);
    if (!sub) return;
    const policy = this.options.onExpired;
    if (policy === "earliest" || policy === "live") {
      this._emit("error", new RelaynetError("position_expired", `${channel}: messages before ${JSON.stringify(earliest)} are gone; going on ${policy === "live" ? "live" : "from the earliest stored"}`, { channel, earliest }));
      this._send(this._session.subscribe(channel, policy === "live" ? null : earliest));
      return;
    }
    // "stop" (as the Python SDK): the subscription ends; the application decides.
    this._subs.delete(channel);
    this._session.forget(channel);
    this._endSub(channel, sub, new RelaynetError("position_expired", `${channel}: position expired; earliest still stored is ${JSON.stringify(earliest)}`, { channel, earliest }));
  }

  _error(event) {
    const error = new RelaynetError(event.code, event.message || event.code, { temporary: event.temporary, channel: event.channel, publishId: event.publishId });
    const request = event.ref === null ? undefined : [...this._histories].find((r) => r.ref === event.ref);
    if (request) {
      this._histories.delete(request);
      request.reject(error);
      return;
    }
    const get = event.ref === null ? undefined : [...this._memberGets].find((r) => r.ref === event.ref);
    if (get) {
      this._memberGets.delete(get);
      get.reject(error);
      return;
    }
    if (event.publishId) {
      if (event.temporary) {
        this._scheduleRetry(event.retry_after_ms); // the session keeps it pending
      } else {
        const ack = this._acks.get(event.publishId);
        this._acks.delete(event.publishId);
        ack?.reject(error);
      }
      return;
    }
    const benign = event.code === "already_subscribed" || event.code === "not_subscribed";
    if (event.channel && this._subs.has(event.channel) && !benign) {
      if (event.temporary) {
        this._scheduleRetry(event.retry_after_ms); // the session still wants the channel
      } else {
        const sub = this._subs.get(event.channel);
        this._subs.delete(event.channel);
        this._endSub(event.channel, sub, error);
      }
      return;
    }
    this._emit("error", error);
  }

  /** After a temporary error: publish every pending message again (same ids) and subscribe
   * again to channels whose subscribe failed. `retryAfterMs` (rate_limited): the relay said
   * when; that is the pause, without backing off. */
  _scheduleRetry(retryAfterMs = null) {
    if (this._retryTimer !== null || !this._ws) return;
    const ws = this._ws;
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (this._ws !== ws) return; // a new connection resends everything anyway
      const frames = this._session.republishPending();
      for (const channel of this._session.unsubscribed) frames.push(this._session.subscribe(channel));
      for (const frame of frames) this._send(frame);
      if (ws instanceof SseSocket) ws.retried(this._session.pending); // held publishes go on
    }, retryAfterMs ?? this._retryBackoff.nextDelay());
  }

  // 1009: a frame of ours was above the relay's limit. Resending every pending publish after the
  // reconnect would close the next connection too: give up the largest one, the likely culprit.
  _dropOversized() {
    const id = this._session.largestPending();
    if (id === null) return;
    this._session.drop(id);
    const error = new RelaynetError("too_large", "the relay closed the connection (1009): frame too large", { publishId: id });
    const ack = this._acks.get(id);
    this._acks.delete(id);
    ack?.reject(error);
    this._emit("error", error);
  }

  /** On SSE: websocketRetryMs (±25 %) after the last WebSocket that failed, open one to the
   * same relay beside the stream; once one opens, leave the stream for it (a move: the new
   * connection resumes every channel and sends pending publishes again, same ids). */
  async _retryWebSocket(ws, region, url) {
    const alive = () => this._ws === ws && !this._stopped && this._transports.transport === "sse";
    while (alive()) {
      await this._sleep(Math.max(0, this._transports.retryAt - now()));
      if (!alive()) return;
      if (!this._transports.retryDue(now())) continue;
      const works = await this._probeWebSocket(url);
      if (!alive()) return;
      if (!works) {
        this._transports.websocketFailed(true, now()); // the stream is up: the relay answers
        continue;
      }
      this._transports.websocketOpened();
      this._moveTarget = [region, url];
      this._interrupt?.({ reason: "WebSocket works again" });
      return;
    }
  }

  /** Whether a WebSocket to `url` opens and the relay speaks on it (then closed). */
  async _probeWebSocket(url) {
    let token = null;
    if (this.options.tokenProvider) {
      try {
        token = await this.options.tokenProvider();
      } catch {
        return false;
      }
    }
    return new Promise((resolve) => {
      let ws;
      try {
        ws = new this._WebSocket(withToken(url, token));
      } catch {
        resolve(false);
        return;
      }
      const done = (works) => {
        clearTimeout(timer);
        detach(ws);
        try {
          ws.close(1000, "transport probe");
        } catch {
          // closing already
        }
        resolve(works);
      };
      const timer = setTimeout(() => done(false), this.options.openTimeoutMs);
      ws.onmessage = () => done(true);
      ws.onclose = () => done(false);
      ws.onerror = () => {};
    });
  }

  /** Move back to a nearer region at a safe point (options.moveBack). */
  async _watchForMove(ws, region) {
    const alive = () => this._ws === ws && !this._stopped;
    while (alive()) {
      await this._sleep(this.options.refreshMs);
      if (!alive()) return;
      const fresh = await this._refresh();
      if (!alive()) return;
      if (fresh === null) continue;
      const wanted = () => shouldMoveBack(region, fresh.choice, { policy: this.options.moveBack, idle: this._session.idle });
      if (!wanted() && !this._session.idle) await this._untilIdle(this.options.refreshMs); // when-idle: a safe point may come soon
      if (!alive() || !wanted()) continue;
      const nearest = fresh.choice.order[0];
      const target = fresh.candidates.find(([r]) => r === nearest);
      if (!target) continue;
      this._moveTarget = [...target];
      this._interrupt?.({ reason: "moving to a nearer region" });
      return;
    }
  }

  _untilIdle(ms) {
    return new Promise((resolve) => {
      const check = () => {
        if (!this._session.idle) return;
        done();
      };
      const timer = setTimeout(() => done(), ms);
      const done = () => {
        clearTimeout(timer);
        this._ackWaiters.delete(check);
        resolve();
      };
      this._ackWaiters.add(check);
    });
  }

  // The relay pings us, but a browser cannot see WebSocket pings: after heartbeat_s without a
  // frame ask with a protocol ping, and give the connection up when heartbeat_s more pass
  // without any frame. Only an unanswered ping counts, so a background tab whose timers are
  // throttled to one a minute does not drop a healthy connection.
  _startLiveness(ws) {
    this._stopLiveness();
    const idleMs = (this.heartbeatS ?? 15) * 1000;
    this._lastRx = now();
    let pingedAt = null;
    this._liveness = setInterval(() => {
      if (this._ws !== ws) return;
      const t = now();
      if (pingedAt !== null && this._lastRx >= pingedAt) pingedAt = null; // answered
      if (pingedAt !== null && t - pingedAt >= idleMs) {
        this._interrupt?.({ code: 1006, reason: `no frame for ${Math.round(t - this._lastRx)} ms`, silent: true });
      } else if (pingedAt === null && t - this._lastRx >= idleMs) {
        pingedAt = t;
        this._send(JSON.stringify({ op: "ping" }));
      }
    }, Math.max(250, idleMs / 4));
  }

  _stopLiveness() {
    clearInterval(this._liveness);
    this._liveness = null;
  }
}

// --- the SSE fallback: a WebSocket's shape on EventSource + fetch ---------------------------

const SSE_OPS = ["connected", "subscribed", "message", "error", "redirect", "token_expiring", "presence", "presence_event", "end"];

/**
 * One connection over SSE and the HTTP API, with the WebSocket interface the client drives
 * (readyState, send, close, onopen/onmessage/onclose), so that every rule of the client
 * (session, resume, redirects, liveness, failover) runs unchanged on it:
 *
 * * the stream (GET /v1/sse?channels=…&last_event_id=…&token=…) delivers the server frames:
 *   `connected` first, then the `subscribed` replies (their refs, the stream's channel
 *   indexes, are turned into the session's), messages, redirects, and `end` {code, reason},
 *   which closes this socket with that code, as a WebSocket close would;
 * * a subscribe or unsubscribe reopens the stream with the new channel set, every channel
 *   from the position the session has processed (`last_event_id`): nothing lost, nothing
 *   repeated (the session drops what its position covers anyway);
 * * publishes are POSTs, one at a time per channel: requests in flight together have no order
 *   at the relay. A temporary refusal (rate_limited, unavailable) holds the channel's queue,
 *   with the refused publish first, until the client sends it again (held), as a relay holds
 *   a WebSocket's later publishes until the failed id comes again;
 * * history is a GET; a protocol ping is a GET /v1/ping whose answer is a `pong` frame;
 * * presence: the stream is opened with presence=1 when a channel wants its members (the
 *   relay then sends every channel's list and events: the session keeps those it asked
 *   for); presence.get is a GET; presence.enter/update/leave are dropped: the HTTP API
 *   cannot enter anyone (the member would have no connection to leave with), and the
 *   client fails them itself ("presence_unavailable");
 * * an `auth` frame (a renewed token) reopens the stream with it and goes on every request.
 *
 * The browser's own EventSource reconnect is not used: a stream that fails closes this
 * socket (1006) and the client's supervisor decides where to go, with backoff and failover,
 * and resumes from the session's positions. A request that fails on the network does the
 * same (the relay is likely gone; pending publishes are sent again, same ids); an HTTP 401
 * closes it with 4003 (a fresh token from the provider on the next connection).
 */
export class SseSocket {
  constructor(http, { token = null, plan = [], resubscribe, EventSource, fetch, pingTimeoutMs = 2000 }) {
    this.http = http;
    this.url = `${http}/v1/sse`;
    this.readyState = 0;
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    this._token = token;
    this._resubscribe = resubscribe;
    this._EventSource = EventSource;
    this._fetch = fetch;
    this._pingTimeoutMs = pingTimeoutMs;
    this._es = null;
    this._channels = []; // the stream's channels: index = the ref the relay gives their replies
    this._opened = new Map(); // channel -> position JSON: opened with it, its subscribe not seen yet
    this._refs = new Map(); // channel -> the session's ref of its latest subscribe
    this._reopenQueued = false;
    this._queues = new Map(); // channel -> {items: Map(id -> request), busy, held}
    this._aborts = new Set();
    const { stream } = sseChannels(plan.map(([channel]) => channel));
    const positions = Object.fromEntries(plan.filter(([c, p]) => p && stream.includes(c)).map(([c, p]) => [c, p]));
    this._presence = plan.some(([c, , presence]) => presence && stream.includes(c));
    const presenceOf = Object.fromEntries(plan.map(([c, , presence]) => [c, Boolean(presence)]));
    // Refused channels are answered when their subscribe frame comes: it has the session's ref.
    for (const channel of stream) this._opened.set(channel, openedKey(positions[channel] ?? null, presenceOf[channel]));
    this._open(stream, positions, true);
  }

  send(text) {
    if (this.readyState !== 1) return;
    const request = httpRequest(text);
    switch (request.op) {
      case "publish":
        this._enqueue(request);
        return;
      case "history":
      case "presence.get":
        this._request(request).then((reply) => reply !== null && this._deliver(withRef(reply, request.ref)));
        return;
      case "presence.enter":
      case "presence.update":
      case "presence.leave":
        return; // nothing can carry them (the client fails them: presenceOnSse)
      case "subscribe": {
        this._refs.set(request.channel, request.ref);
        const { refused } = sseChannels([request.channel]);
        if (refused.length) {
          this._refuse(refused[0], request.ref);
          return;
        }
        // The first connection's resubscribes name what the stream was opened with.
        const opened = this._opened.get(request.channel);
        this._opened.delete(request.channel);
        if (opened !== undefined && opened === openedKey(request.position, request.presence)) return;
        this._reopenSoon();
        return;
      }
      case "unsubscribe":
        this._refs.delete(request.channel);
        this._reopenSoon();
        return;
      case "ping":
        this._ping();
        return;
      case "auth":
        this._token = request.token;
        this._reopenSoon();
        return;
      default:
    }
  }

  /** Publishes queued or held on `channel`: let them go, keeping only ids still `pending`
   * (after a temporary refusal the client sent every pending publish again). */
  retried(pending) {
    for (const [channel, queue] of this._queues) {
      for (const id of [...queue.items.keys()]) if (!Object.hasOwn(pending, id)) queue.items.delete(id);
      queue.held = false;
      this._pump(channel);
    }
  }

  close() {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this._es?.close();
    this._es = null;
    for (const controller of this._aborts) controller.abort();
    this._aborts.clear();
  }

  // --- the stream

  _open(channels, positions, first) {
    this._es?.close();
    this._es = null;
    this._channels = channels;
    if (!channels.length) {
      // No channel: nothing to stream (the relay wants at least one). Up once the relay
      // answers, for publishes and history; its directory says what it is.
      if (first) this._hello();
      return;
    }
    let es;
    try {
      es = new this._EventSource(sseUrl(this.http, channels, positions, this._token, this._presence));
    } catch {
      queueMicrotask(() => this._fail(1006, "could not open an event stream"));
      return;
    }
    this._es = es;
    es.onopen = () => {
      if (this._es !== es || this.readyState === 3) return;
      if (this.readyState === 0) {
        this.readyState = 1;
        this.onopen?.();
      }
    };
    // A failed request or a dropped stream; the relay's `error` frames (MessageEvents with
    // data) come here too and are delivered below.
    es.onerror = (event) => {
      if (this._es === es && typeof event?.data !== "string") this._fail(1006, "event stream lost");
    };
    for (const op of SSE_OPS) {
      es.addEventListener(op, (event) => {
        if (this._es !== es || this.readyState === 3 || typeof event.data !== "string") return;
        if (op === "end") {
          let end = {};
          try {
            end = JSON.parse(event.data);
          } catch {
            // a bad end is still an end
          }
          this._fail(Number.isInteger(end.code) ? end.code : 1006, isStr(end.reason) ? end.reason : "stream ended");
          return;
        }
        this._deliver(op === "subscribed" || op === "error" ? this._streamRef(event.data) : event.data);
      });
    }
  }

  /** The relay numbers the stream's subscribes 0, 1, …: the session knows them by its own refs. */
  _streamRef(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return text;
    }
    if (!frame || !Number.isInteger(frame.ref)) return text;
    const channel = this._channels[frame.ref];
    return JSON.stringify({ ...frame, ref: channel === undefined ? null : (this._refs.get(channel) ?? null) });
  }

  _reopenSoon() {
    if (this._reopenQueued) return;
    this._reopenQueued = true;
    queueMicrotask(() => {
      this._reopenQueued = false;
      if (this.readyState !== 1) return;
      this._opened.clear();
      const wanted = this._resubscribe().map((text) => httpRequest(text));
      const { stream, refused } = sseChannels(wanted.map((r) => r.channel));
      for (const r of wanted) this._refs.set(r.channel, r.ref);
      for (const reason of refused) this._refuse(reason, this._refs.get(reason[0]));
      const positions = Object.fromEntries(wanted.filter((r) => r.position && stream.includes(r.channel)).map((r) => [r.channel, r.position]));
      this._presence = wanted.some((r) => r.presence && stream.includes(r.channel));
      this._open(stream, positions, false);
    });
  }

  async _hello() {
    const reply = await this._request({ method: "GET", path: "/v1/edges", body: null });
    if (reply === null) return;
    let doc = null;
    try {
      doc = JSON.parse(reply);
    } catch {
      // not a directory: refused below
    }
    if (!doc || !isStr(doc.region)) {
      this._fail(1006, `${this.http}/v1/edges is not a relay's directory`);
      return;
    }
    if (this.readyState !== 0) return;
    this.readyState = 1;
    this.onopen?.();
    this._deliver(JSON.stringify({ op: "connected", region: doc.region, relay: isStr(doc.relay) ? doc.relay : "", connection_id: "" }));
  }

  _refuse([channel, code, message], ref) {
    const frame = JSON.stringify({ op: "error", code, message, channel, ref: ref ?? null, temporary: false });
    queueMicrotask(() => this._deliver(frame));
  }

  _deliver(text) {
    if (this.readyState !== 3) this.onmessage?.({ data: text });
  }

  _fail(code, reason) {
    if (this.readyState === 3) return;
    this.close();
    this.onclose?.({ code, reason });
  }

  // --- requests

  /** The response body of an HTTP API request, or null after closing this socket (network
   * error, a 401, or an answer that is not the API's). */
  async _request({ method, path, body }, { timeoutMs = null } = {}) {
    const controller = new AbortController();
    this._aborts.add(controller);
    const timer = timeoutMs === null ? null : setTimeout(() => controller.abort(), timeoutMs);
    const headers = {};
    if (this._token !== null && this._token !== undefined) headers.Authorization = `Bearer ${this._token}`;
    if (body !== null) headers["Content-Type"] = "application/json";
    try {
      const response = await this._fetch(`${this.http}${path}`, { method, headers, body, cache: "no-store", credentials: "omit", mode: "cors", redirect: "error", signal: controller.signal });
      const text = await response.text();
      if (this.readyState === 3) return null;
      if (response.status === 401) {
        this._fail(4003, "the HTTP API refused the token");
        return null;
      }
      const json = (response.headers.get("content-type") ?? "").startsWith("application/json");
      if (!json && path.startsWith("/v1/channels/")) {
        this._fail(1006, `HTTP ${response.status} from ${this.http}${path.split("?")[0]}`);
        return null;
      }
      return text;
    } catch (exc) {
      if (this.readyState !== 3 && timeoutMs === null) this._fail(1006, `HTTP request failed: ${exc?.message ?? exc}`);
      return null;
    } finally {
      clearTimeout(timer);
      this._aborts.delete(controller);
    }
  }

  async _ping() {
    const controller = { method: "GET", path: "/v1/ping", body: null };
    const reply = await this._request(controller, { timeoutMs: this._pingTimeoutMs });
    if (reply !== null && reply.trim() === "pong") this._deliver('{"op":"pong"}');
  }

  _enqueue(request) {
    let queue = this._queues.get(request.channel);
    if (!queue) {
      queue = { items: new Map(), busy: false, held: false };
      this._queues.set(request.channel, queue);
    }
    queue.items.set(request.id, request); // sent again: its place stays, its frame is the new one
    this._pump(request.channel);
  }

  async _pump(channel) {
    const queue = this._queues.get(channel);
    if (!queue || queue.busy || queue.held || this.readyState !== 1) return;
    const next = queue.items.entries().next();
    if (next.done) {
      this._queues.delete(channel);
      return;
    }
    const [id, request] = next.value;
    queue.items.delete(id);
    queue.busy = true;
    const reply = await this._request(request);
    queue.busy = false;
    if (reply === null) return;
    const text = withRef(reply, request.ref);
    if (/^\{"op":"error"/.test(reply) && temporaryError(reply)) {
      // First again, and nothing behind it goes before the client sends it again.
      queue.items = new Map([[id, request], ...queue.items]);
      queue.held = true;
    }
    this._deliver(text);
    this._pump(channel);
  }
}

// What an SSE stream was opened with for one channel: a subscribe asking for the same needs
// no new stream.
function openedKey(position, presence) {
  return JSON.stringify([position ?? null, Boolean(presence)]);
}

function presenceUnavailable(channel) {
  return new RelaynetError(
    "presence_unavailable",
    `presence in ${JSON.stringify(channel)}: enter, update and leave need a WebSocket, and this client is on SSE (WebSocket is blocked); it tries WebSocket again now and then, and enters what was entered before once it is back`,
    { temporary: true, channel },
  );
}

function temporaryError(text) {
  try {
    return JSON.parse(text).temporary === true;
  } catch {
    return false;
  }
}

/** A reply frame of the HTTP API (no ref: one request, one reply) as the answer to `ref`. */
function withRef(text, ref) {
  let frame;
  try {
    frame = JSON.parse(text);
  } catch {
    return text; // the session reports it as a bad frame
  }
  return frame !== null && typeof frame === "object" && !Array.isArray(frame) ? JSON.stringify({ ...frame, ref }) : text;
}

function detach(ws) {
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = null;
  ws.onopen = null;
}
