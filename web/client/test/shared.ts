// Where the project's recorded market data lives: $ORDERBOOK_SHARED_DATA, or
// ../shared/data beside the repository (as the Python tests find it).
import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

// dist/test/shared.js -> the repository root is four folders up.
export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");

export function sharedData(): string | undefined {
  const path = process.env.ORDERBOOK_SHARED_DATA || resolve(REPO, "..", "shared", "data");
  return existsSync(path) ? path : undefined;
}

/** The reason to skip a test that needs the data, or fail under CI. */
export function missingData(): string | undefined {
  if (sharedData() !== undefined) return undefined;
  if (process.env.CI) throw new Error("../shared/data (or $ORDERBOOK_SHARED_DATA) is missing in CI");
  return "recorded market data not found: set ORDERBOOK_SHARED_DATA";
}
