'use strict';
// A `ws` broadcast server, one of the peers of `relaynet bench compare`.
//
// Every text message a client sends goes to every other connected client: the
// bytes that came in are the frame that goes out, one Buffer for all of them
// (no parsing, no storage, no acks, at-most-once). That is the floor of a Node
// fan-out.
//
// A binary message is the load generator measuring its own ceiling: it holds
// many complete server-to-client WebSocket frames, and the server writes those
// bytes as they are to every other client's socket. One write per subscriber
// per batch makes this source far cheaper than any system under test, so what
// it measures is how much the generator can take in.
//
//   node ws_server.js [--port 0]
//
// prints `ws ready on ws://127.0.0.1:<port>` once listening (127.0.0.1 only)
// and runs until SIGTERM or SIGINT.

const { WebSocketServer, WebSocket } = require('ws');

function portArgument(argv) {
  const at = argv.indexOf('--port');
  return at >= 0 ? Number(argv[at + 1]) : 0;
}

function broadcast(wss, sender, data) {
  for (const client of wss.clients) {
    if (client !== sender && client.readyState === WebSocket.OPEN) {
      client.send(data, { binary: false });
    }
  }
}

function writeRaw(wss, sender, frames) {
  for (const client of wss.clients) {
    // `_socket` is not public API, but it is the only way to hand ws pre-framed bytes;
    // nothing else writes to these sockets while the ceiling is measured.
    if (client !== sender && client.readyState === WebSocket.OPEN) client._socket.write(frames);
  }
}

function main() {
  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: portArgument(process.argv),
    perMessageDeflate: false, // as every other server measured: the same bytes on the wire
    maxPayload: 16 * 2 ** 20,
  });
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => {
      if (isBinary) writeRaw(wss, ws, data);
      else broadcast(wss, ws, data);
    });
    ws.on('error', () => ws.terminate());
  });
  wss.on('listening', () => {
    process.stdout.write(`ws ready on ws://127.0.0.1:${wss.address().port}\n`);
  });
  // Nothing is stored, so there is nothing to finish: stop at once.
  process.on('SIGTERM', () => process.exit(0));
  process.on('SIGINT', () => process.exit(0));
}

main();
