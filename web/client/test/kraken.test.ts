// Every checksum of a real Kraken capture, through this library's Book and
// checksum: prices and volumes become integer ticks and lots at the decimals
// Kraken writes, and the book's checksum must equal Kraken's on all 4,269
// updates (see ../shared/data/kraken-book-2021-04-17/README.md).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { Book, type Side } from "../src/book.js";
import { parseUnits } from "../src/decimal.js";
import { missingData, sharedData } from "./shared.js";

type Entry = [string, string, ...unknown[]];
const SIDES = [["as", "ask"], ["bs", "bid"], ["a", "ask"], ["b", "bid"]] as const;

function decimals(text: string): number {
  const dot = text.indexOf(".");
  return dot === -1 ? 0 : text.length - dot - 1;
}

/** Replays the capture keeping `depth` levels per side; counts checksums. */
function replay(depth: number) {
  const file = join(sharedData()!, "kraken-book-2021-04-17", "KRAKEN.ws.50.0");
  const books = new Map<string, Book>();
  const scales = new Map<string, [number, number]>();
  const perPair = new Map<string, number>();
  let checked = 0;
  let matched = 0;
  for (const line of readFileSync(file, "utf8").split("\n")) {
    const at = line.indexOf(": ");
    if (at === -1 || line.startsWith("wss://")) continue;
    const msg: unknown = JSON.parse(line.slice(at + 2));
    if (!Array.isArray(msg)) continue; // events: status, subscription, heartbeat
    const pair = msg[msg.length - 1] as string;
    const parts = msg.slice(1, -2) as Record<string, Entry[] | string>[];
    const book = books.get(pair) ?? new Book();
    books.set(pair, book);
    let expected: string | undefined;
    for (const part of parts) {
      for (const [key, side] of SIDES) {
        for (const [p, v] of (part[key] as Entry[] | undefined) ?? []) {
          // The scales are the decimals Kraken writes for the pair.
          if (!scales.has(pair)) scales.set(pair, [decimals(p), decimals(v)]);
          const [ps, ss] = scales.get(pair)!;
          book.set(side as Side, parseUnits(p, ps), parseUnits(v, ss));
        }
      }
      if (typeof part.c === "string") expected = part.c;
    }
    // Kraken sends no removal for levels pushed beyond the subscribed depth.
    for (const [p] of book.bids().slice(depth)) book.setBid(p, 0n);
    for (const [p] of book.asks().slice(depth)) book.setAsk(p, 0n);
    if (expected === undefined) continue; // a snapshot
    checked++;
    if (book.checksum() === Number(expected)) {
      matched++;
      perPair.set(pair, (perPair.get(pair) ?? 0) + 1);
    }
  }
  return { books, checked, matched, perPair };
}

test("all 4,269 checksums of the Kraken capture match", { skip: missingData() }, () => {
  const { books, checked, matched, perPair } = replay(1000);
  assert.equal(books.size, 10);
  assert.equal(checked, 4269);
  assert.equal(matched, 4269);
  assert.equal(perPair.get("XMR/USD"), 846);
  assert.equal(perPair.get("SC/EUR"), 818);
  assert.equal(perPair.get("GRT/ETH"), 20);
});

test("a book kept only 10 deep fails most of them (the check can fail)", { skip: missingData() }, () => {
  const { checked, matched } = replay(10);
  assert.equal(checked, 4269);
  assert.ok(matched < checked * 0.5, `${matched} of ${checked} matched with a 10-deep book`);
});
