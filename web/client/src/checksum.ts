/**
 * The book checksum: CRC-32 (ISO-HDLC, as zlib.crc32) of the top 10 asks,
 * lowest first, then the top 10 bids, highest first, each level written as
 * the decimal digits of its price in ticks followed by those of its size in
 * lots. With scales equal to an exchange's decimals this is Kraken's checksum.
 *
 * @module
 */
import CRC32 from "crc-32";

/** A price level: `[price in ticks, size in lots]`. */
export type Level = readonly [price: bigint, size: bigint];

/** Levels per side that the checksum covers. */
export const CHECKSUM_DEPTH = 10;

/** The string the checksum is computed over (exposed for diagnostics). */
export function checksumText(asks: Iterable<Level>, bids: Iterable<Level>): string {
  let text = "";
  let n = 0;
  for (const [p, s] of asks) {
    if (n++ === CHECKSUM_DEPTH) break;
    text += p.toString() + s.toString();
  }
  n = 0;
  for (const [p, s] of bids) {
    if (n++ === CHECKSUM_DEPTH) break;
    text += p.toString() + s.toString();
  }
  return text;
}

/** CRC-32 of an ASCII string as an unsigned 32-bit number. */
export function crc32(text: string): number {
  // The text is digits and "-" only, so its characters are its bytes.
  return CRC32.bstr(text) >>> 0;
}

/**
 * Checksum of a book given its levels best first (asks lowest first, bids
 * highest first); only the first 10 of each side are read.
 *
 * @example
 * ```ts
 * bookChecksum([[5005n, 500n]], [[5004n, 1000n]]);  // 3084897325
 * ```
 */
export function bookChecksum(asks: Iterable<Level>, bids: Iterable<Level>): number {
  return crc32(checksumText(asks, bids));
}
