/**
 * The two encodings of the subscriber protocol, both through the code that
 * protoc-gen-es generates from `proto/orderbook/v1/*.proto`: binary protobuf
 * (the default, in binary frames) and protobuf's canonical JSON mapping (in
 * text frames).
 *
 * @module
 */
import { create, fromBinary, fromJsonString, toBinary, toJsonString } from "@bufbuild/protobuf";
import {
  ClientMessageSchema,
  ServerMessageSchema,
  type ClientMessage,
  type ServerMessage,
} from "./gen/orderbook/v1/stream_pb.js";

/** `"proto"`: binary protobuf (default); `"json"`: protobuf's JSON mapping. */
export type Encoding = "proto" | "json";

/** The WebSocket subprotocol that selects each encoding. */
export const SUBPROTOCOLS: Readonly<Record<Encoding, string>> = {
  proto: "orderbook.v1.proto",
  json: "orderbook.v1.json",
};

/** A frame that could not be decoded in the negotiated encoding. */
export class DecodeError extends Error {
  override readonly name = "DecodeError";
}

/** Encodes one client envelope: bytes for `"proto"`, a string for `"json"`. */
export function encodeClient(message: ClientMessage, encoding: Encoding): Uint8Array | string {
  return encoding === "proto"
    ? toBinary(ClientMessageSchema, message)
    : toJsonString(ClientMessageSchema, message);
}

/**
 * Decodes one server envelope. Unknown fields and unknown envelope kinds are
 * accepted (the protocol only ever adds them); anything else that does not
 * decode throws {@link DecodeError}.
 */
export function decodeServer(data: ArrayBuffer | Uint8Array | string, encoding: Encoding): ServerMessage {
  try {
    if (typeof data === "string") {
      if (encoding !== "json") throw new DecodeError("text frame on the binary encoding");
      return fromJsonString(ServerMessageSchema, data, { ignoreUnknownFields: true });
    }
    if (encoding !== "proto") throw new DecodeError("binary frame on the JSON encoding");
    return fromBinary(ServerMessageSchema, data instanceof Uint8Array ? data : new Uint8Array(data));
  } catch (e) {
    if (e instanceof DecodeError) throw e;
    throw new DecodeError(e instanceof Error ? e.message : String(e));
  }
}

/** Encodes a server envelope (for test servers and tools). */
export function encodeServer(message: ServerMessage, encoding: Encoding): Uint8Array | string {
  return encoding === "proto"
    ? toBinary(ServerMessageSchema, message)
    : toJsonString(ServerMessageSchema, message);
}

/** Decodes a client envelope (for test servers and tools). */
export function decodeClient(data: ArrayBuffer | Uint8Array | string, encoding: Encoding): ClientMessage {
  if (typeof data === "string") {
    if (encoding !== "json") throw new DecodeError("text frame on the binary encoding");
    return fromJsonString(ClientMessageSchema, data, { ignoreUnknownFields: true });
  }
  if (encoding !== "proto") throw new DecodeError("binary frame on the JSON encoding");
  return fromBinary(ClientMessageSchema, data instanceof Uint8Array ? data : new Uint8Array(data));
}

export { create };
