import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { Book } from "../src/book.js";
import { ModelBook } from "./model.js";

const change = fc.record({
  side: fc.constantFrom("bid" as const, "ask" as const),
  price: fc.bigInt(-50n, 50n),
  size: fc.oneof(fc.constant(0n), fc.bigInt(1n, 2n ** 64n - 1n)),
});

test("property: the book equals a plain-map model after every change", () => {
  fc.assert(
    fc.property(fc.array(change, { maxLength: 300 }), (changes) => {
      const book = new Book();
      const model = new ModelBook("X");
      for (const c of changes) {
        book.set(c.side, c.price, c.size);
        model.change(c.side === "bid" ? [[c.price, c.size]] : [], c.side === "ask" ? [[c.price, c.size]] : []);
        assert.deepEqual(book.bids(), model.sortedBids());
        assert.deepEqual(book.asks(), model.sortedAsks());
        assert.equal(book.checksum(), model.checksum());
        assert.equal(book.sizeAt(c.side, c.price), c.size);
      }
      assert.equal(book.bidCount, model.bids.size);
      assert.equal(book.askCount, model.asks.size);
      assert.deepEqual(book.bestBid(), model.sortedBids()[0]);
      assert.deepEqual(book.asks(3), model.sortedAsks().slice(0, 3));
    }),
  );
});

test("removing an absent level is a no-op; negative sizes are refused", () => {
  const book = new Book();
  book.setBid(5n, 0n);
  assert.equal(book.bidCount, 0);
  assert.throws(() => book.setAsk(5n, -1n), RangeError);
  book.replace([[1n, 2n], [3n, 0n]], [[4n, 5n]]);
  assert.deepEqual(book.bids(), [[1n, 2n]]);
  assert.deepEqual(book.bestAsk(), [4n, 5n]);
  book.clear();
  assert.equal(book.bestAsk(), undefined);
});
