/**
 * The worker of `?worker=1`: runs the {@link StreamEngine} (the WebSocket,
 * decoding, verification, the books) off the main thread. It tells the page
 * when it has news (one small "dirty" message until the next pull) and
 * answers each pull with one {@link ViewFrame}: only what is drawn.
 *
 * @module
 */
import type { ConnectionState } from "@orderbook/client";
import { StreamEngine } from "./engine.js";
import type { FromWorker, ToWorker } from "./types.js";

interface WorkerScope {
  postMessage(message: FromWorker): void;
  onmessage: ((ev: MessageEvent<ToWorker>) => void) | null;
}

const scope = globalThis as unknown as WorkerScope;

let engine: StreamEngine | null = null;
let notified = false;
let streamMs = 0;

function connection(): ConnectionState {
  return engine?.connection ?? "connecting";
}

scope.onmessage = (ev) => {
  const m = ev.data;
  switch (m.type) {
    case "init":
      if (engine !== null) return;
      engine = new StreamEngine({
        url: m.url,
        encoding: m.encoding,
        token: m.token,
        onChange: () => {
          if (notified) return;
          notified = true;
          scope.postMessage({ type: "dirty", connection: connection() });
        },
        onEvent: (event) => scope.postMessage({ type: "event", event, connection: connection() }),
        onStreamTime: (ms) => {
          streamMs += ms;
        },
      });
      break;
    case "select":
      engine?.select(m.selection);
      break;
    case "watch":
      engine?.watch(m.symbols);
      break;
    case "pull":
      if (engine === null) return;
      notified = false;
      scope.postMessage({ type: "frame", frame: engine.frame(), streamMs });
      break;
  }
};
