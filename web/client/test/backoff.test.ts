import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { Backoff } from "../src/backoff.js";

test("property: every delay lies in [0, min(cap, base * 2^attempt))", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 5000 }),
      fc.integer({ min: 1, max: 100 }),
      fc.array(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), { minLength: 1, maxLength: 80 }),
      (base, factor, randoms) => {
        const cap = base * factor;
        let i = 0;
        const b = new Backoff({ baseMs: base, capMs: cap, random: () => randoms[i++ % randoms.length]! });
        for (let attempt = 0; attempt < randoms.length; attempt++) {
          const ceiling = Math.min(cap, base * 2 ** attempt);
          assert.equal(b.ceiling(), ceiling);
          const d = b.next();
          assert.ok(d >= 0 && d < ceiling, `attempt ${attempt}: ${d} not below ${ceiling}`);
        }
      },
    ),
  );
});

test("the ceiling doubles up to the cap, and reset starts over", () => {
  const b = new Backoff({ baseMs: 250, capMs: 30_000, random: () => 0.999999 });
  const ceilings = [];
  for (let i = 0; i < 10; i++) {
    ceilings.push(b.ceiling());
    b.next();
  }
  assert.deepEqual(ceilings, [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  assert.equal(b.attempts, 10);
  b.reset();
  assert.equal(b.ceiling(), 250);
  for (let i = 0; i < 2000; i++) b.next(); // 2^2000 is Infinity: the cap still holds
  assert.ok(b.next() < 30_000);
});

test("Retry-After is a floor", () => {
  const b = new Backoff({ random: () => 0 });
  assert.equal(b.nextAfter(5), 5000);
  const c = new Backoff({ baseMs: 60_000, capMs: 60_000, random: () => 0.5 });
  assert.equal(c.nextAfter(5), 30_000);
  assert.throws(() => new Backoff({ baseMs: 0 }), RangeError);
});
