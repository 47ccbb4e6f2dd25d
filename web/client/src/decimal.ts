/**
 * Exact conversion between integer units (ticks, lots) and decimal strings.
 *
 * Prices and sizes travel as integers scaled by the instrument's decimal
 * scales (`price = ticks / 10^price_scale`). They stay `bigint` here: a
 * binary float cannot hold `0.29` exactly, and values above 2^53 are not
 * exact as `number`.
 *
 * @module
 */

/** Error raised for a decimal string that is malformed or has more decimals than its scale allows. */
export class InexactValueError extends Error {
  override readonly name = "InexactValueError";
}

/**
 * Formats `units / 10^scale` with exactly `scale` decimals.
 *
 * @example
 * ```ts
 * formatUnits(6500050n, 2);   // "65000.50"
 * formatUnits(500n, 8);       // "0.00000500"
 * formatUnits(-5n, 2);        // "-0.05"
 * ```
 */
export function formatUnits(units: bigint, scale: number): string {
  const negative = units < 0n;
  let digits = (negative ? -units : units).toString();
  if (digits.length < scale + 1) digits = "0".repeat(scale + 1 - digits.length) + digits;
  const sign = negative ? "-" : "";
  if (scale === 0) return sign + digits;
  const cut = digits.length - scale;
  return `${sign}${digits.slice(0, cut)}.${digits.slice(cut)}`;
}

const DECIMAL = /^([+-]?)([0-9]*)(?:\.([0-9]*))?$/;

/**
 * Parses a decimal string into integer units at `scale`, exactly.
 *
 * A value needing more than `scale` decimals (after trailing zeros are
 * removed) is not representable and throws {@link InexactValueError}; it is
 * never rounded.
 *
 * @example
 * ```ts
 * parseUnits("65000.5", 2);   // 6500050n
 * parseUnits("0.001", 2);     // throws InexactValueError
 * ```
 */
export function parseUnits(text: string, scale: number): bigint {
  const m = DECIMAL.exec(text.trim());
  if (m === null || (m[2] === "" && (m[3] ?? "") === "")) {
    throw new InexactValueError(`not a decimal number: ${JSON.stringify(text)}`);
  }
  const sign = m[1] === "-" ? -1n : 1n;
  const whole = m[2] === "" ? "0" : m[2]!;
  const fraction = (m[3] ?? "").replace(/0+$/, "");
  if (fraction.length > scale) {
    throw new InexactValueError(`${text} has more than ${scale} decimal places`);
  }
  return sign * BigInt(whole + fraction.padEnd(scale, "0"));
}
