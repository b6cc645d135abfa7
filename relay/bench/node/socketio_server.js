'use strict';
// A Socket.IO 4 server, one of the peers of `relaynet bench compare`, written
// the way its docs teach a chat room: every socket joins one room, and a
// `publish` event goes out with `socket.to(room).emit(...)` (to everyone in the
// room but the sender; Socket.IO encodes the packet once for all of them), then
// the publisher's acknowledgement callback is called. Nothing is stored:
// at-most-once. WebSocket transport only, like every other system measured
// (no HTTP long-polling, no compression).
//
//   node socketio_server.js [--port 0]
//
// prints `socketio ready on ws://127.0.0.1:<port>` once listening (127.0.0.1
// only) and runs until SIGTERM or SIGINT.

const http = require('node:http');
const { Server } = require('socket.io');

const ROOM = 'bench';

function portArgument(argv) {
  const at = argv.indexOf('--port');
  return at >= 0 ? Number(argv[at + 1]) : 0;
}

function main() {
  const httpServer = http.createServer();
  const io = new Server(httpServer, {
    transports: ['websocket'],
    serveClient: false,
    perMessageDeflate: false,
    maxHttpBufferSize: 16 * 2 ** 20,
  });
  io.on('connection', (socket) => {
    socket.join(ROOM);
    socket.on('publish', (data, ack) => {
      socket.to(ROOM).emit('msg', data);
      if (typeof ack === 'function') ack();
    });
  });
  httpServer.listen(portArgument(process.argv), '127.0.0.1', () => {
    process.stdout.write(`socketio ready on ws://127.0.0.1:${httpServer.address().port}\n`);
  });
  // Nothing is stored, so there is nothing to finish: stop at once.
  process.on('SIGTERM', () => process.exit(0));
  process.on('SIGINT', () => process.exit(0));
}

main();
