import assert from "node:assert/strict";
import { test } from "node:test";
import { Book } from "../src/book.js";
import { bookChecksum, checksumText } from "../src/checksum.js";

// The vectors of docs/protocol.md §6 and §9.
test("the snapshot and delta of §4.2", () => {
  const asks = [[6500050n, 25000000n], [6500100n, 150000000n]] as const;
  const bids = [[6500000n, 50000000n], [6499925n, 200000000n]] as const;
  assert.equal(checksumText(asks, bids), "65000502500000065001001500000006500000500000006499925200000000");
  assert.equal(bookChecksum(asks, bids), 485215763);
  const book = new Book();
  book.replace(bids, asks);
  assert.equal(book.checksum(), 485215763);
  book.setAsk(6500050n, 0n);
  book.setBid(6500025n, 10000000n);
  assert.equal(book.checksum(), 1540368275);
});

test("more vectors: one level each side, negative prices, empty book", () => {
  assert.equal(bookChecksum([[5005n, 500n]], [[5004n, 1000n]]), 3084897325);
  assert.equal(checksumText([[-100n, 3n]], [[-150n, 7n]]), "-1003-1507");
  assert.equal(bookChecksum([[-100n, 3n]], [[-150n, 7n]]), 4223563613);
  assert.equal(bookChecksum([], []), 0);
});

test("the depth-2 example of §9", () => {
  const book = new Book();
  book.replace([[10000n, 5n], [9990n, 3n]], [[10010n, 4n], [10020n, 6n]]);
  assert.equal(book.checksum(), 1290354095);
  book.setBid(10000n, 0n);
  book.setBid(9980n, 8n);
  assert.equal(checksumText(book.asks(10), book.bids(10)), "1001041002069990399808");
  assert.equal(book.checksum(), 2999167571);
  book.setAsk(10010n, 9n);
  assert.equal(book.checksum(), 2692548929);
});

test("only the top 10 levels per side count", () => {
  const book = new Book();
  for (let i = 1n; i <= 30n; i++) {
    book.setBid(1000n - i, i);
    book.setAsk(1000n + i, i);
  }
  const before = book.checksum();
  book.setBid(900n, 5n); // 11th and deeper change nothing
  book.setAsk(1100n, 5n);
  assert.equal(book.checksum(), before);
  book.setBid(995n, 77n); // inside the top 10
  assert.notEqual(book.checksum(), before);
});
