/**
 * The page's state in its URL, so that a link opens the same view:
 *
 * | parameter  | values                  | default |
 * |------------|-------------------------|---------|
 * | `symbol`   | a symbol of `/symbols`  | the first symbol |
 * | `depth`    | integer 0…1000 (0 = full book, shown as 20 rows) | 0 |
 * | `interval` | conflation in ms, integer 0…60000 (0 = live) | 0 |
 * | `encoding` | `proto` or `json`       | `proto` |
 * | `worker`   | `1` runs the client in a Web Worker | off |
 * | `token`    | the node's subscriber token, if it has one | none |
 * | `watch`    | `all`, or symbols separated by commas (`ETH-USD,AAPL`) | none |
 *
 * `watch` fills the markets panel: `watch=all` watches every symbol of
 * `/symbols` and follows the list as it is refreshed (new symbols are
 * added, vanished ones dropped); a list watches those of its symbols that
 * `/symbols` lists (the others are reported once, and added if they appear
 * later). `watch` may be repeated (`watch=A&watch=B`); `all` anywhere in it
 * means all. Each watched symbol other than the selected one is subscribed
 * to the full book, every change. Without `watch` nothing more is
 * subscribed and the panel is hidden.
 *
 * `symbol`, `depth` and `interval` are rewritten with `history.replaceState`
 * whenever they change; the others (`watch` among them) are kept exactly as
 * they were written.
 *
 * @module
 */
import type { Encoding } from "@orderbook/client";
import type { Selection } from "./types.js";

export const MAX_DEPTH = 1000;
export const MAX_INTERVAL_MS = 60_000;

/** What `?watch=` asks for: every symbol of `/symbols`, a list, or nothing (null). */
export type WatchParam = "all" | string[] | null;

/** Parses every `watch` parameter: "all" if any item is `all`, else the items in order, or null when there are none. */
export function parseWatch(values: readonly string[]): WatchParam {
  const items = values.flatMap((v) => v.split(",")).map((v) => v.trim()).filter((v) => v !== "");
  if (items.length === 0) return null;
  if (items.includes("all")) return "all";
  return [...new Set(items)];
}

export interface PageParams {
  symbol: string | null;
  depth: number;
  intervalMs: number;
  encoding: Encoding;
  worker: boolean;
  token: string | null;
  /** `?watch=`: `"all"`, the symbols listed (in order, without duplicates), or null without it. */
  watch: WatchParam;
  /** Parameters that were present but invalid, as messages to show. */
  problems: string[];
}

function integer(raw: string | null, name: string, max: number, problems: string[]): number {
  if (raw === null || raw === "") return 0;
  if (!/^\d+$/.test(raw) || Number(raw) > max) {
    problems.push(`${name}=${raw} is not an integer between 0 and ${max}: using 0`);
    return 0;
  }
  return Number(raw);
}

/** Reads the page's parameters from a query string. */
export function readParams(search: string): PageParams {
  const q = new URLSearchParams(search);
  const problems: string[] = [];
  const symbol = q.get("symbol")?.trim() || null;
  const depth = integer(q.get("depth"), "depth", MAX_DEPTH, problems);
  const intervalMs = integer(q.get("interval"), "interval", MAX_INTERVAL_MS, problems);
  const enc = q.get("encoding");
  let encoding: Encoding = "proto";
  if (enc === "json") encoding = "json";
  else if (enc !== null && enc !== "proto" && enc !== "") problems.push(`encoding=${enc} is unknown: using proto`);
  const w = q.get("worker");
  const worker = w === "1" || w === "true" || w === "";
  const watch = parseWatch(q.getAll("watch"));
  return { symbol, depth, intervalMs, encoding, worker, token: q.get("token") || null, watch, problems };
}

const SELECTION_KEYS = new Set(["symbol", "depth", "interval"]);

/** The name of one `name=value` part of a query string, decoded. */
function partName(part: string): string {
  for (const k of new URLSearchParams(part).keys()) return k;
  return "";
}

/**
 * The page's URL for a selection; the other parameters are kept as they were
 * written, in order (so `watch=ETH-USD,AAPL` keeps its commas).
 */
export function urlFor(selection: Selection, current: Location | URL = location): string {
  const q = new URLSearchParams();
  q.set("symbol", selection.symbol);
  q.set("depth", String(selection.depth));
  q.set("interval", String(selection.intervalMs));
  const kept = current.search
    .replace(/^\?/, "")
    .split("&")
    .filter((part) => part !== "" && !SELECTION_KEYS.has(partName(part)));
  return `${current.pathname}?${[q.toString(), ...kept].join("&")}${current.hash}`;
}

/** Puts a selection in the address bar without a history entry. */
export function writeSelection(selection: Selection): void {
  const url = urlFor(selection);
  if (url !== location.pathname + location.search + location.hash) history.replaceState(history.state, "", url);
}

/** An endpoint of the node beside the page (`/ws`, `/symbols`), relative to the page so a path prefix works. */
export function endpoint(path: "ws" | "symbols"): string {
  const u = new URL(path, location.href);
  u.search = "";
  u.hash = "";
  if (path === "ws") u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  return u.toString();
}
