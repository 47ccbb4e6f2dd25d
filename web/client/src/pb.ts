/**
 * The generated protobuf types and schemas of `orderbook.v1`
 * (protoc-gen-es from `proto/orderbook/v1/`).
 *
 * @module
 */
export * from "./gen/orderbook/v1/book_pb.js";
export * from "./gen/orderbook/v1/stream_pb.js";
