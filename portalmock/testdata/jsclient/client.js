// Joins the "client" channel of the snowgate mock portal with the official Phoenix JavaScript client and
// prints one JSON line: {"event":"init","payload":…} on success, {"error":"…"} on failure (exit code 1).
//
// usage: node client.js <ws://host:port> <token> <base64 public key>
//
// Node 20 has no global WebSocket, so the `ws` package is passed as Phoenix's transport. The Phoenix JS
// client cannot set headers: the token travels as the `token` query parameter, like every entry of
// `params`. Phoenix JS speaks the V2 serializer (vsn=2.0.0).
"use strict";
const { Socket } = require("phoenix");
const WebSocket = require("ws");

const [base, token, publicKey] = process.argv.slice(2);
if (!base || token === undefined || !publicKey) {
  console.error("usage: node client.js <ws://host:port> <token> <public key>");
  process.exit(64);
}

function finish(obj, code) {
  process.stdout.write(JSON.stringify(obj) + "\n", () => process.exit(code));
}

const timer = setTimeout(() => finish({ error: "timeout waiting for init" }, 1), 10000);
const socket = new Socket(base + "/client", {
  transport: WebSocket,
  params: { token, public_key: publicKey, name: "phoenix-js", external_id: "phoenix-js-test" },
  reconnectAfterMs: () => 60000,
  heartbeatIntervalMs: 10000,
});
socket.onError((err) => {
  clearTimeout(timer);
  const msg = (err && (err.message || (err.error && err.error.message))) || String(err);
  finish({ error: msg }, 1);
});

const channel = socket.channel("client", {});
channel.on("init", (payload) => {
  clearTimeout(timer);
  socket.disconnect(() => finish({ event: "init", payload }, 0));
});
socket.connect();
channel
  .join()
  .receive("error", (resp) => finish({ error: "join refused: " + JSON.stringify(resp) }, 1))
  .receive("timeout", () => finish({ error: "join timed out" }, 1));
