// The demo chat page served by every relay at GET /: one room (channel chat:<room>), the
// region and relay it is on, the measured RTTs and why it picked its edge, every message
// with its origin region and vector timestamp, and who is online in every region (presence:
// the page enters as its ?name= when it joins and leaves when it is closed).
//
// Query parameters: ?room=NAME (default lobby), ?seeds=ws://a/v1/ws,ws://b/v1/ws (default:
// this page's own relay), ?name=NICK, ?prefer=eu-west (that region first while it is usable,
// the others kept for failover), ?regions=us-east,eu-west (connect only to these, never
// elsewhere), ?websocket_retry_ms=N (on the SSE fallback, how often to try WebSocket again;
// default the client's 30 s). The header shows the transport in use: websocket, or sse (EventSource +
// fetch, when WebSocket cannot be opened). Tests read window.relaynetDemo and data-testid
// elements.

import { createClient } from "./v1/client.js";

const params = new URLSearchParams(location.search);
const room = params.get("room") || "lobby";
const channel = `chat:${room}`;
const name = params.get("name") || `guest-${Math.random().toString(16).slice(2, 6)}`;
const seeds = (params.get("seeds") || location.origin).split(",").map((s) => s.trim()).filter(Boolean);
// ?regions=eu-west: only these regions (on one machine every region is about as near).
const regions = params.get("regions")?.split(",").map((s) => s.trim()).filter(Boolean) ?? null;
// ?prefer=eu-west: that region first, but failing over to the others (what `relaynet demo` prints).
const prefer = params.get("prefer")?.trim() || null;
const websocketRetryMs = params.has("websocket_retry_ms") ? Number(params.get("websocket_retry_ms")) : null;

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "class") node.className = value;
    else node[key] = value;
  }
  node.append(...children);
  return node;
};
const clockText = (clock) =>
  `{${Object.entries(clock)
    .map(([region, n]) => `${region}:${n}`)
    .join(", ")}}`;

const demo = {
  client: null,
  room,
  channel,
  name,
  seeds,
  regions,
  prefer,
  state: "connecting",
  stateDetail: "",
  states: [], // every state change: {state, at, ...info}
  messages: [], // delivered messages: {id, text, name, origin, ts, position, mine}
  // Ids this page published: they are random, so "mine" is looked up, not read off the id.
  sent: new Set(),
  redirects: [], // every redirect a relay sent: {from, url, region, reason, followed, ignored, at}
  errors: [],
  members: [], // the room's members as the client last listed them: {clientId, connection, region, relay, status, data}
  online: [], // the same by person: {name, regions: [{region, status}], status}, as shown
  presenceNote: "", // why this page is not (yet) listed itself, e.g. on the SSE fallback
  presenceEvents: [], // the latest 200: {action, clientId (null for a sync), region, count (members after), at}
  send,
};
window.relaynetDemo = demo;

$("room").textContent = room;
$("name").textContent = name;
document.title = `#${room} · relaynet`;

function log(text) {
  const list = $("log");
  list.prepend(el("li", { textContent: `${new Date().toLocaleTimeString()} ${text}` }));
  while (list.children.length > 50) list.lastChild.remove();
}

function showState(state, info) {
  demo.state = state;
  demo.states.push({ state, at: Date.now(), code: info.code ?? null, reason: info.reason ?? null, region: info.region ?? null, transport: info.transport ?? null });
  const badge = $("state");
  badge.textContent = state;
  badge.dataset.state = state;
  const detail = [];
  if (info.reason) detail.push(info.reason);
  if (info.code) detail.push(`code ${info.code}`);
  demo.stateDetail = detail.join(" · ");
  $("state-detail").textContent = demo.stateDetail;
  // Sending works in every state but the final ones: publishes wait for the next connection.
  $("input").disabled = $("send").disabled = state === "failed" || state === "closed";
  log(`${state}${info.transport ? ` via ${info.transport}` : ""}${detail.length ? ` (${detail.join(", ")})` : ""}`);
  showWhere();
}

function showWhere() {
  const c = demo.client;
  $("region").textContent = c?.region ?? "–";
  $("relay").textContent = c?.relay ?? "–";
  $("transport").textContent = c?.state === "connected" ? c.transport : "–";
  const survey = c?.survey;
  if (!survey) return;
  const { choice, directory, samples, candidates } = survey;
  const tbody = $("rtt");
  tbody.replaceChildren();
  for (const region of choice.order) {
    // The region's RTT is that of its first candidate edge (the first that answered a probe).
    const [, url] = candidates.find(([r]) => r === region) ?? [region, null];
    const health = directory.edges.find((e) => e.region === region)?.health ?? "?";
    const rtt = choice.rttMs[region];
    tbody.append(
      el(
        "tr",
        { dataset: { testid: "rtt-row", region }, class: region === c.region ? "chosen" : "", title: `${url}: ${choice.reasons[region]}` },
        el("td", { textContent: region }),
        el("td", { textContent: health }),
        el("td", { textContent: rtt === null ? "–" : `${rtt.toFixed(1)} ms`, dataset: { testid: "rtt" } }),
        el("td", { textContent: (samples[url] ?? []).map((s) => (s === null ? "✕" : s.toFixed(1))).join(" ") }),
      ),
    );
  }
  const nearest = choice.order[0];
  const first = prefer !== null && nearest === prefer ? "preferred" : "nearest";
  const on = c.region;
  let why = `${first}: ${nearest}, ${choice.reasons[nearest]}`;
  if (on && on === nearest && c.state === "connected") why = `on ${on} because it is the ${choice.reasons[on]}`;
  else if (on && c.state === "connected") why = `on ${on} (${choice.reasons[on] ?? "not in the directory"}); ${first} is ${nearest}: ${choice.reasons[nearest]}`;
  if (regions?.length) why += ` (only ${regions.join(", ")}: ?regions=)`;
  if (prefer !== null) why += ` (?prefer=${prefer}; the others for failover)`;
  $("choice-reason").textContent = why;
  $("directory-from").textContent = `directory from ${directory.source} · failover order ${choice.order.join(" → ")}`;
}

function showMessage(message) {
  const data = message.data;
  const text = typeof data === "string" ? data : typeof data?.text === "string" ? data.text : JSON.stringify(data);
  const who = typeof data?.name === "string" ? data.name : "?";
  const mine = demo.sent.has(message.id);
  const entry = { id: message.id, text, name: who, origin: message.origin, ts: message.ts, position: message.position, mine, at: Date.now() };
  demo.messages.push(entry);
  const list = $("messages");
  list.append(
    el(
      "li",
      { class: mine ? "mine" : "", dataset: { testid: "message", id: message.id, origin: message.origin, ts: JSON.stringify(message.ts) } },
      el("span", { class: "who", textContent: who }),
      el("span", { class: "text", textContent: text, dataset: { testid: "message-text" } }),
      el(
        "span",
        { class: "meta mono" },
        "from ",
        el("span", { textContent: message.origin, dataset: { testid: "message-origin" } }),
        " · ts ",
        el("span", { textContent: clockText(message.ts), dataset: { testid: "message-ts" } }),
      ),
    ),
  );
  const chat = $("chat");
  chat.scrollTop = chat.scrollHeight;
}

/**
 * Who is online, one row per name (a person reconnecting shows once, whatever connections the
 * relays still list), with the region of each of their connections; a member whose relay or
 * region is not heard from is "unreachable", greyed. Replaced whole at every change: the
 * client hands over the list after each one.
 */
function showMembers({ action, member, members }) {
  demo.members = members;
  demo.presenceEvents.push({ action, clientId: member?.clientId ?? null, region: member?.region ?? null, count: members.length, at: Date.now() });
  if (demo.presenceEvents.length > 200) demo.presenceEvents.shift();
  if (member) log(`${member.clientId} (${member.region}) ${action === "update" ? `is ${member.status}` : `${action}s`}`);
  if (demo.presenceNote && members.some((m) => m.connection === demo.client.connectionId)) {
    demo.presenceNote = ""; // listed: entered once back on a WebSocket
    $("presence-note").textContent = "";
  }
  const people = new Map();
  for (const member of members) {
    const name = typeof member.data?.name === "string" ? member.data.name : member.clientId;
    if (!people.has(member.clientId)) people.set(member.clientId, { name, regions: [] });
    const person = people.get(member.clientId);
    const seen = person.regions.find((r) => r.region === member.region);
    if (!seen) person.regions.push({ region: member.region, status: member.status });
    else if (member.status === "present") seen.status = "present";
  }
  demo.online = [...people.values()].map((p) => ({ ...p, status: p.regions.some((r) => r.status === "present") ? "present" : "unreachable" }));
  const list = $("members");
  list.replaceChildren(
    ...[...people].map(([clientId, person], i) => {
      const status = demo.online[i].status;
      return el(
        "li",
        { class: status, title: status === "unreachable" ? "its region or relay is not heard from: shown until it is, or until it times out" : "", dataset: { testid: "member", clientId, status, regions: person.regions.map((r) => r.region).join(",") } },
        el("span", { class: "who", textContent: person.name + (clientId === name ? " (you)" : "") }),
        " ",
        ...person.regions.map((r) => el("span", { class: `region mono ${r.status}`, textContent: r.region, dataset: { testid: "member-region", status: r.status } })),
      );
    }),
  );
  $("online-count").textContent = String(people.size);
}

/** Publish one chat line; resolves with the ack (retried across reconnects until acked). */
function send(text) {
  const promise = demo.client.publish(channel, { text, name });
  if (promise.id) demo.sent.add(promise.id); // before any message with it can arrive
  // A publish refused at once (too large for the relay) has no id.
  const item = el("li", { textContent: `${promise.id ?? "refused"} sending… ${text.slice(0, 40)}`, dataset: { testid: "outbox-item", id: promise.id ?? "" } });
  $("outbox").prepend(item);
  promise.then(
    (ack) => {
      item.textContent = `${ack.id} acked at ${clockText(ack.position)}`;
      item.dataset.acked = "true";
      setTimeout(() => item.remove(), 5000);
    },
    (error) => {
      item.textContent = `${promise.id ?? "refused"} failed: ${error.message}`;
      demo.errors.push({ code: error.code, message: error.message });
    },
  );
  return promise;
}

function showPresenceNote(error) {
  demo.presenceNote = error.message;
  $("presence-note").textContent = "you are not listed: on SSE a page cannot enter presence (it will once WebSocket works)";
  log(`presence: ${error.message}`);
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("input");
  const text = input.value.trim();
  if (!text || !demo.client) return;
  input.value = "";
  send(text).catch(() => {});
});

try {
  const client = createClient(seeds, {
    clientId: name,
    ...(regions?.length ? { regions } : {}),
    ...(prefer ? { prefer } : {}),
    ...(websocketRetryMs !== null ? { websocketRetryMs } : {}),
  });
  demo.client = client;
  client.on("state", showState);
  client.on("redirect", (redirect) => {
    demo.redirects.push({ ...redirect, at: Date.now() });
    if (redirect.followed) log(`redirected to ${redirect.url} (${redirect.region}): ${redirect.reason}`);
    else log(`redirect to ${redirect.url} from ${redirect.from}: ${redirect.ignored}`);
  });
  client.on("survey", showWhere);
  client.on("retry", ({ inMs }) => {
    $("state-detail").textContent = `${demo.stateDetail ? `${demo.stateDetail} · ` : ""}next attempt in ${inMs} ms`;
  });
  client.on("error", (error) => {
    demo.errors.push({ code: error.code ?? null, message: String(error.message ?? error) });
    log(`error ${error.code ?? ""}: ${error.message ?? error}`);
  });
  client.subscribe(channel, showMessage, { presence: true, onPresence: showMembers });
  // Joining the chat is entering its presence as ?name=; the client enters again by itself
  // on every new connection. On the SSE fallback it cannot: once on a WebSocket, enter then.
  const enter = () =>
    client.presence(channel).enter({ name }).then(
      () => log(`entered ${channel} as ${name}`),
      (error) => {
        if (error.code === "presence_unavailable") showPresenceNote(error);
        else if (error.code !== "closed") demo.errors.push({ code: error.code ?? null, message: String(error.message ?? error) });
      },
    );
  enter();
  client.on("connected", ({ transport }) => {
    if (transport === "websocket" && !client.presence(channel).entered) enter();
  });
  // Leave at once rather than after the relay's leave_after_s (the leave goes out before the
  // close frame, on the same connection).
  window.addEventListener("pagehide", () => {
    client.presence(channel).leave().catch(() => {});
    client.close();
  });
} catch (error) {
  demo.state = "failed";
  demo.errors.push({ code: "setup", message: String(error.message ?? error) });
  $("state").textContent = "failed";
  $("state").dataset.state = "failed";
  $("state-detail").textContent = String(error.message ?? error);
}
