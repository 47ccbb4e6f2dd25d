/**
 * `@orderbook/client`: verified, exact order books from an orderbook node.
 *
 * - {@link OrderbookClient}: the client (WebSocket, reconnect, resume, events).
 * - {@link Session}: the same logic without I/O, to drive from any transport.
 * - {@link Book}, {@link bookChecksum}, {@link formatUnits}, {@link parseUnits}:
 *   exact books in integer ticks and lots (`bigint`), the protocol checksum,
 *   and decimal strings for display.
 * - The generated protobuf types and schemas of `orderbook.v1` under `pb`.
 *
 * @packageDocumentation
 */
export { OrderbookClient } from "./client.js";
export type {
  ClientEvents,
  ClientOptions,
  ClientStats,
  ConnectionState,
  ConnectionStateEvent,
  Listener,
  WebSocketFactory,
  WebSocketLike,
} from "./client.js";
export { Session, RESYNC_REASONS } from "./session.js";
export type {
  ResyncReason,
  SessionEvent,
  SessionOptions,
  SessionOutput,
  SubscriptionOptions,
  SymbolCounters,
  SymbolState,
  SymbolView,
} from "./session.js";
export { Book } from "./book.js";
export type { Side } from "./book.js";
export { bookChecksum, checksumText, crc32, CHECKSUM_DEPTH } from "./checksum.js";
export type { Level } from "./checksum.js";
export { formatUnits, parseUnits, InexactValueError } from "./decimal.js";
export { Backoff } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export { decodeServer, encodeClient, decodeClient, encodeServer, DecodeError, SUBPROTOCOLS } from "./codec.js";
export type { Encoding } from "./codec.js";
export { LatencyWindow } from "./latency.js";
export type { LatencySummary } from "./latency.js";
export * as pb from "./pb.js";
