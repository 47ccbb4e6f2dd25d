// A reference node for the tests: a plain-map book that stamps each change
// with (epoch, seq) and the checksum, producing the messages a node sends.
import { create } from "@bufbuild/protobuf";
import { bookChecksum, type Level } from "../src/checksum.js";
import { InstrumentSchema } from "../src/gen/orderbook/v1/book_pb.js";
import {
  ServerMessageSchema,
  SnapshotReason,
  Start,
  type ServerMessage,
} from "../src/gen/orderbook/v1/stream_pb.js";

export const instrument = create(InstrumentSchema, { symbol: "BTC-USD", priceScale: 2, sizeScale: 8 });

export class ModelBook {
  bids = new Map<bigint, bigint>();
  asks = new Map<bigint, bigint>();
  seq = 0n;
  constructor(
    readonly symbol: string,
    public epoch = 7n,
  ) {}

  sortedBids(): Level[] {
    return [...this.bids].sort((a, b) => (a[0] > b[0] ? -1 : a[0] < b[0] ? 1 : 0));
  }
  sortedAsks(): Level[] {
    return [...this.asks].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  }
  checksum(): number {
    return bookChecksum(this.sortedAsks(), this.sortedBids());
  }

  /** Applies a change and returns its Delta. */
  change(bids: Level[], asks: Level[]): ServerMessage {
    for (const [p, q] of bids) q === 0n ? this.bids.delete(p) : this.bids.set(p, q);
    for (const [p, q] of asks) q === 0n ? this.asks.delete(p) : this.asks.set(p, q);
    const prevSeq = this.seq;
    this.seq++;
    return delta(this.symbol, this.epoch, this.seq, prevSeq, bids, asks, this.checksum());
  }

  snapshot(): ServerMessage {
    return create(ServerMessageSchema, {
      kind: {
        case: "snapshot",
        value: {
          symbol: this.symbol,
          epoch: this.epoch,
          seq: this.seq,
          instrument: { ...instrument, symbol: this.symbol },
          bids: this.sortedBids().map(([price, size]) => ({ price, size })),
          asks: this.sortedAsks().map(([price, size]) => ({ price, size })),
          checksum: this.checksum(),
        },
      },
    });
  }

  subscribed(requestId: bigint, start: Start, reason = SnapshotReason.UNSPECIFIED, seq = this.seq): ServerMessage {
    return create(ServerMessageSchema, {
      kind: {
        case: "subscribed",
        value: { symbol: this.symbol, requestId, start, reason, epoch: this.epoch, seq, instrument: { ...instrument, symbol: this.symbol } },
      },
    });
  }

  heartbeat(seq = this.seq, stale = false): ServerMessage {
    return create(ServerMessageSchema, {
      kind: { case: "heartbeat", value: { symbol: this.symbol, epoch: this.epoch, seq, stale } },
    });
  }
}

export function delta(
  symbol: string,
  epoch: bigint,
  seq: bigint,
  prevSeq: bigint,
  bids: Level[],
  asks: Level[],
  checksum: number,
): ServerMessage {
  return create(ServerMessageSchema, {
    kind: {
      case: "delta",
      value: {
        symbol,
        epoch,
        seq,
        prevSeq,
        bids: bids.map(([price, size]) => ({ price, size })),
        asks: asks.map(([price, size]) => ({ price, size })),
        checksum,
        publishTimeNs: BigInt(Date.now()) * 1_000_000n,
      },
    },
  });
}
