/**
 * The symbol list from `GET /symbols`, refreshed every 5 s so that symbols
 * published later appear; after a failure it retries with a growing,
 * jittered delay (1 s doubling to 30 s) and reports the node unreachable.
 *
 * @module
 */

/** One entry of `GET /symbols` (the fields the page uses). */
export interface SymbolInfo {
  symbol: string;
  price_scale: number;
  size_scale: number;
  venue: string;
  base: string;
  quote: string;
}

export interface DirectoryHandlers {
  /** A successful answer (also when unchanged). `changed` says whether the names differ from before. */
  onList(list: SymbolInfo[], changed: boolean): void;
  /** A failed request; the next try is in `retryInMs`. */
  onFailure(message: string, retryInMs: number): void;
}

const REFRESH_MS = 5000;
const RETRY_BASE_MS = 1000;
const RETRY_CAP_MS = 30_000;
const TIMEOUT_MS = 4000;

export class SymbolDirectory {
  private list: SymbolInfo[] = [];
  private failures = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private stopped = false;
  private inFlight = false;

  constructor(
    private readonly url: string,
    private readonly handlers: DirectoryHandlers,
    /** Sent as `Authorization: Bearer <token>` (a node with `--http-token`); null: none. */
    private readonly token: string | null = null,
  ) {}

  get symbols(): readonly SymbolInfo[] {
    return this.list;
  }

  /** Whether a list has been received at least once. */
  loaded = false;

  has(symbol: string): boolean {
    return this.list.some((s) => s.symbol === symbol);
  }

  start(): void {
    void this.poll();
  }

  /** Asks again now (e.g. after an unknown-symbol error). */
  refreshNow(): void {
    clearTimeout(this.timer);
    void this.poll();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private async poll(): Promise<void> {
    if (this.inFlight) return;
    this.inFlight = true;
    let delay = REFRESH_MS;
    try {
      const ctrl = new AbortController();
      const t = setTimeout(() => ctrl.abort(), TIMEOUT_MS);
      let body: unknown;
      try {
        const headers: Record<string, string> = { accept: "application/json" };
        if (this.token) headers.authorization = `Bearer ${this.token}`;
        const r = await fetch(this.url, { cache: "no-store", signal: ctrl.signal, headers });
        if (!r.ok) throw new Error(`HTTP ${r.status}`);
        body = await r.json();
      } finally {
        clearTimeout(t);
      }
      const list = parse(body);
      const changed = list.map((s) => s.symbol).join("\n") !== this.list.map((s) => s.symbol).join("\n");
      this.list = list;
      this.loaded = true;
      this.failures = 0;
      this.handlers.onList(list, changed);
    } catch (e) {
      const ceiling = Math.min(RETRY_CAP_MS, RETRY_BASE_MS * 2 ** this.failures);
      this.failures++;
      delay = ceiling / 2 + (Math.random() * ceiling) / 2;
      const message = e instanceof Error ? (e.name === "AbortError" ? "timed out" : e.message) : String(e);
      this.handlers.onFailure(message, delay);
    } finally {
      this.inFlight = false;
    }
    if (!this.stopped) {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => void this.poll(), delay);
    }
  }
}

function parse(body: unknown): SymbolInfo[] {
  const raw = (body as { symbols?: unknown })?.symbols;
  if (!Array.isArray(raw)) throw new Error("unexpected /symbols answer");
  const out: SymbolInfo[] = [];
  for (const s of raw) {
    if (typeof s !== "object" || s === null || typeof (s as SymbolInfo).symbol !== "string") continue;
    const o = s as Partial<SymbolInfo>;
    out.push({
      symbol: o.symbol!,
      price_scale: Number(o.price_scale ?? 0),
      size_scale: Number(o.size_scale ?? 0),
      venue: String(o.venue ?? ""),
      base: String(o.base ?? ""),
      quote: String(o.quote ?? ""),
    });
  }
  return out;
}
