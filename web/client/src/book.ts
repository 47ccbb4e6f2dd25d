/**
 * An exact L2 book: integer ticks and lots (`bigint`), one side of prices
 * kept sorted best first beside a map of sizes.
 *
 * @module
 */
import { bookChecksum, CHECKSUM_DEPTH, type Level } from "./checksum.js";

/** Which side of the book. */
export type Side = "bid" | "ask";

/**
 * One side: a map price → size and the prices sorted best first.
 * Lookups are O(1); inserting or removing a level is O(log n) to find plus
 * an array splice, which for books of a few thousand levels costs less than
 * a tree's allocations.
 */
class BookSide {
  readonly sizes = new Map<bigint, bigint>();
  readonly prices: bigint[] = [];

  constructor(private readonly descending: boolean) {}

  /** Index of the first price not better than `price`. */
  private position(price: bigint): number {
    const a = this.prices;
    let lo = 0;
    let hi = a.length;
    if (this.descending) {
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (a[mid]! > price) lo = mid + 1;
        else hi = mid;
      }
    } else {
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (a[mid]! < price) lo = mid + 1;
        else hi = mid;
      }
    }
    return lo;
  }

  set(price: bigint, size: bigint): void {
    if (size === 0n) {
      if (this.sizes.delete(price)) this.prices.splice(this.position(price), 1);
      return;
    }
    if (!this.sizes.has(price)) this.prices.splice(this.position(price), 0, price);
    this.sizes.set(price, size);
  }

  clear(): void {
    this.sizes.clear();
    this.prices.length = 0;
  }

  *levels(limit = Infinity): Generator<Level> {
    const n = Math.min(limit, this.prices.length);
    for (let i = 0; i < n; i++) {
      const p = this.prices[i]!;
      yield [p, this.sizes.get(p)!];
    }
  }
}

/**
 * A price-level book. Sizes are set, not added: `setBid(p, q)` makes the
 * level at `p` hold `q` lots, and `q = 0n` removes it.
 *
 * @example
 * ```ts
 * const book = new Book();
 * book.setAsk(6500050n, 25000000n);
 * book.setBid(6500000n, 50000000n);
 * book.bestAsk();     // [6500050n, 25000000n]
 * book.checksum();    // CRC-32 of the top 10 levels per side
 * ```
 */
export class Book {
  private readonly bidSide = new BookSide(true);
  private readonly askSide = new BookSide(false);

  /** Sets a bid level's size in lots; `0n` removes it. Negative sizes throw. */
  setBid(price: bigint, size: bigint): void {
    if (size < 0n) throw new RangeError(`negative size ${size} at ${price}`);
    this.bidSide.set(price, size);
  }

  /** Sets an ask level's size in lots; `0n` removes it. Negative sizes throw. */
  setAsk(price: bigint, size: bigint): void {
    if (size < 0n) throw new RangeError(`negative size ${size} at ${price}`);
    this.askSide.set(price, size);
  }

  /** Sets a level on either side. */
  set(side: Side, price: bigint, size: bigint): void {
    if (side === "bid") this.setBid(price, size);
    else this.setAsk(price, size);
  }

  /** Removes every level. */
  clear(): void {
    this.bidSide.clear();
    this.askSide.clear();
  }

  /** Replaces the whole book with these levels (any order; zero sizes are skipped). */
  replace(bids: Iterable<Level>, asks: Iterable<Level>): void {
    this.clear();
    for (const [p, s] of bids) this.setBid(p, s);
    for (const [p, s] of asks) this.setAsk(p, s);
  }

  /** Bids, highest price first; at most `limit` levels. */
  bids(limit?: number): Level[] {
    return [...this.bidSide.levels(limit)];
  }

  /** Asks, lowest price first; at most `limit` levels. */
  asks(limit?: number): Level[] {
    return [...this.askSide.levels(limit)];
  }

  /** The best bid, or `undefined` when there is none. */
  bestBid(): Level | undefined {
    const p = this.bidSide.prices[0];
    return p === undefined ? undefined : [p, this.bidSide.sizes.get(p)!];
  }

  /** The best ask, or `undefined` when there is none. */
  bestAsk(): Level | undefined {
    const p = this.askSide.prices[0];
    return p === undefined ? undefined : [p, this.askSide.sizes.get(p)!];
  }

  /** Size at a price on one side, `0n` if the level is absent. */
  sizeAt(side: Side, price: bigint): bigint {
    return (side === "bid" ? this.bidSide : this.askSide).sizes.get(price) ?? 0n;
  }

  /** Number of bid levels. */
  get bidCount(): number {
    return this.bidSide.prices.length;
  }

  /** Number of ask levels. */
  get askCount(): number {
    return this.askSide.prices.length;
  }

  /** The protocol checksum of the top 10 levels per side. */
  checksum(): number {
    return bookChecksum(this.askSide.levels(CHECKSUM_DEPTH), this.bidSide.levels(CHECKSUM_DEPTH));
  }
}
