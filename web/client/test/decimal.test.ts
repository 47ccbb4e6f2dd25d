import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { formatUnits, InexactValueError, parseUnits } from "../src/decimal.js";

test("the worked examples of docs/protocol.md §3.1", () => {
  assert.equal(formatUnits(6500050n, 2), "65000.50");
  assert.equal(formatUnits(7n, 2), "0.07");
  assert.equal(formatUnits(-5n, 2), "-0.05");
  assert.equal(formatUnits(25000000n, 8), "0.25000000");
  assert.equal(formatUnits(500n, 8), "0.00000500");
  assert.equal(formatUnits(150000000n, 8), "1.50000000");
  assert.equal(formatUnits(162501250000000n, 10), "16250.1250000000");
  assert.equal(formatUnits(42n, 0), "42");
  assert.equal(formatUnits(0n, 3), "0.000");
});

test("values beyond 2^53 stay exact", () => {
  assert.equal(formatUnits(9007199254740993n, 2), "90071992547409.93");
  assert.equal(parseUnits("90071992547409.93", 2), 9007199254740993n);
});

test("parsing is exact and refuses to round", () => {
  assert.equal(parseUnits("65000.5", 2), 6500050n);
  assert.equal(parseUnits("0.29", 2), 29n);
  assert.equal(parseUnits("-0.05", 2), -5n);
  assert.equal(parseUnits("1.500000", 2), 150n);
  assert.equal(parseUnits(".5", 1), 5n);
  assert.equal(parseUnits("7.", 0), 7n);
  assert.throws(() => parseUnits("0.001", 2), InexactValueError);
  for (const bad of ["", ".", "1e5", "NaN", "1,5", "--1", "0x10", " "]) {
    assert.throws(() => parseUnits(bad, 2), InexactValueError, bad);
  }
});

test("property: parse(format(units)) == units at every scale", () => {
  fc.assert(
    fc.property(fc.bigInt(-(2n ** 70n), 2n ** 70n), fc.integer({ min: 0, max: 18 }), (units, scale) => {
      const text = formatUnits(units, scale);
      assert.equal(parseUnits(text, scale), units);
      const dot = text.indexOf(".");
      assert.equal(dot === -1 ? 0 : text.length - dot - 1, scale);
    }),
  );
});
