/**
 * The price ladder: asks above (best ask nearest the middle), the spread and
 * mid, bids below (best bid nearest the middle). Each row shows price, size
 * and cumulative size, with a cumulative-depth bar and a size bar behind it.
 *
 * Rows are a fixed pool of elements, made once per row count and updated in
 * place (`textContent`, a `transform`), each write skipped when the value is
 * unchanged. A row whose size changed flashes briefly.
 *
 * @module
 */
import type { LadderLevel, LadderModel } from "./types.js";

/** Splits a decimal into its significant part and its trailing zeros (shown dimmer). */
function splitZeros(text: string): [string, string] {
  if (!text.includes(".")) return [text, ""];
  let end = text.length;
  while (end > 0 && text.charCodeAt(end - 1) === 48 /* 0 */) end--;
  return [text.slice(0, end), text.slice(end)];
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, className: string, parent?: HTMLElement): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  e.className = className;
  parent?.appendChild(e);
  return e;
}

class Row {
  readonly el: HTMLDivElement;
  private readonly totalBar: HTMLDivElement;
  private readonly sizeBar: HTMLDivElement;
  private readonly flash: HTMLDivElement;
  private readonly price: HTMLSpanElement;
  private readonly sizeSig: HTMLSpanElement;
  private readonly sizePad: HTMLSpanElement;
  private readonly totalSig: HTMLSpanElement;
  private readonly totalPad: HTMLSpanElement;
  private shownPrice = "";
  private shownSize = "";
  private shownTotal = "";
  private shownSizeN = 0;
  private sizeScale = -1;
  private totalScale = -1;
  private empty = false;
  private animation: Animation | null = null;

  constructor(parent: HTMLElement, side: "bid" | "ask") {
    this.el = el("div", `row ${side}`, parent);
    this.totalBar = el("div", "bar bar-total", this.el);
    this.sizeBar = el("div", "bar bar-size", this.el);
    this.flash = el("div", "flash", this.el);
    this.price = el("span", "c price", this.el);
    const size = el("span", "c size", this.el);
    this.sizeSig = el("span", "sig", size);
    this.sizePad = el("span", "pad", size);
    const total = el("span", "c total", this.el);
    this.totalSig = el("span", "sig", total);
    this.totalPad = el("span", "pad", total);
    this.clear();
  }

  clear(): void {
    if (this.empty) return;
    this.empty = true;
    this.el.classList.add("empty");
    this.price.textContent = this.sizeSig.textContent = this.sizePad.textContent = "";
    this.totalSig.textContent = this.totalPad.textContent = "";
    this.shownPrice = this.shownSize = this.shownTotal = "";
    this.setBar(this.sizeBar, 0, "sizeScale");
    this.setBar(this.totalBar, 0, "totalScale");
  }

  set(level: LadderLevel, maxSize: number, maxTotal: number, animate: boolean): void {
    if (this.empty) {
      this.empty = false;
      this.el.classList.remove("empty");
    }
    const samePrice = level.price === this.shownPrice;
    if (!samePrice) {
      this.price.textContent = level.price;
      this.shownPrice = level.price;
    }
    if (level.size !== this.shownSize) {
      const [sig, pad] = splitZeros(level.size);
      this.sizeSig.textContent = sig;
      this.sizePad.textContent = pad;
      if (samePrice && animate && this.shownSize !== "") this.pulse(level.sizeN > this.shownSizeN);
      this.shownSize = level.size;
      this.shownSizeN = level.sizeN;
    }
    if (level.total !== this.shownTotal) {
      const [sig, pad] = splitZeros(level.total);
      this.totalSig.textContent = sig;
      this.totalPad.textContent = pad;
      this.shownTotal = level.total;
    }
    this.setBar(this.sizeBar, maxSize > 0 ? level.sizeN / maxSize : 0, "sizeScale");
    this.setBar(this.totalBar, maxTotal > 0 ? level.totalN / maxTotal : 0, "totalScale");
  }

  private setBar(bar: HTMLDivElement, fraction: number, key: "sizeScale" | "totalScale"): void {
    const f = Math.round(Math.min(1, Math.max(0, fraction)) * 1000) / 1000;
    if (f === this[key]) return;
    this[key] = f;
    bar.style.transform = `scaleX(${f})`;
  }

  private pulse(up: boolean): void {
    this.animation?.cancel();
    this.flash.className = up ? "flash up" : "flash down";
    this.animation = this.flash.animate([{ opacity: 0.5 }, { opacity: 0 }], { duration: 450, easing: "ease-out" });
  }
}

/** What the ladder shows now: `window.orderbook.ladder()`. */
export interface LadderShown {
  symbol: string;
  seq: string;
  bids: [string, string][];
  asks: [string, string][];
}

export class LadderView {
  private readonly root: HTMLElement;
  private readonly body: HTMLElement;
  private readonly asksEl: HTMLElement;
  private readonly bidsEl: HTMLElement;
  private readonly spreadEl: HTMLElement;
  private readonly midEl: HTMLElement;
  private readonly placeholderEl: HTMLElement;
  private readonly colPrice: HTMLElement;
  private readonly colSize: HTMLElement;
  private readonly colTotal: HTMLElement;
  private askRows: Row[] = [];
  private bidRows: Row[] = [];
  private rows = 0;
  private center = true;
  private shown: LadderShown = { symbol: "", seq: "0", bids: [], asks: [] };
  private shownSymbol = "";
  private units = "";

  constructor(root: HTMLElement) {
    const q = (sel: string): HTMLElement => {
      const e = root.querySelector<HTMLElement>(sel);
      if (e === null) throw new Error(`ladder: ${sel} missing`);
      return e;
    };
    this.root = root;
    this.body = q(".ladder-body");
    this.asksEl = q(".side.asks");
    this.bidsEl = q(".side.bids");
    this.spreadEl = q(".spread-value");
    this.midEl = q(".mid-value");
    this.placeholderEl = q(".ladder-placeholder");
    this.colPrice = q(".col-price");
    this.colSize = q(".col-size");
    this.colTotal = q(".col-total");
  }

  /** Makes the pool for `rows` rows per side (only when the count changes). */
  setRows(rows: number): void {
    if (rows === this.rows) return;
    this.rows = rows;
    this.asksEl.replaceChildren();
    this.bidsEl.replaceChildren();
    // Asks: the first element is the top of the screen, the worst ask shown.
    this.askRows = Array.from({ length: rows }, () => new Row(this.asksEl, "ask"));
    this.bidRows = Array.from({ length: rows }, () => new Row(this.bidsEl, "bid"));
    this.center = true;
  }

  /** What the ladder shows now. */
  snapshot(): LadderShown {
    return { symbol: this.shown.symbol, seq: this.shown.seq, bids: this.shown.bids.map((l) => [...l]), asks: this.shown.asks.map((l) => [...l]) };
  }

  /** Draws a model (null: nothing to show yet for `symbol`). */
  render(model: LadderModel | null, symbol: string, placeholder: string): void {
    const n = this.rows;
    const current = model !== null && model.symbol === symbol ? model : null;
    const animate = current !== null && current.symbol === this.shownSymbol;
    if (current === null) {
      for (const r of this.askRows) r.clear();
      for (const r of this.bidRows) r.clear();
      this.spreadEl.textContent = "—";
      this.midEl.textContent = "—";
      this.placeholderEl.textContent = placeholder;
      this.root.dataset.state = "empty";
      this.shown = { symbol, seq: "0", bids: [], asks: [] };
      this.shownSymbol = "";
    } else {
      const { asks, bids, maxSize, maxTotal } = current;
      for (let i = 0; i < n; i++) {
        // Row i from the top holds ask level n-1-i: the best ask is the lowest row.
        const level = asks[n - 1 - i];
        if (level === undefined) this.askRows[i]!.clear();
        else this.askRows[i]!.set(level, maxSize, maxTotal, animate);
        const bid = bids[i];
        if (bid === undefined) this.bidRows[i]!.clear();
        else this.bidRows[i]!.set(bid, maxSize, maxTotal, animate);
      }
      this.spreadEl.textContent = current.spread ?? "—";
      this.midEl.textContent = current.mid ?? "—";
      this.placeholderEl.textContent = "";
      this.root.dataset.state = current.state;
      const units = `${current.quote}|${current.base}`;
      if (units !== this.units) {
        this.units = units;
        this.colPrice.textContent = current.quote ? `Price (${current.quote})` : "Price";
        this.colSize.textContent = current.base ? `Size (${current.base})` : "Size";
        this.colTotal.textContent = current.base ? `Total (${current.base})` : "Total";
      }
      this.shown = {
        symbol: current.symbol,
        seq: current.seq,
        bids: bids.slice(0, n).map((l) => [l.price, l.size]),
        asks: asks.slice(0, n).map((l) => [l.price, l.size]),
      };
      this.shownSymbol = current.symbol;
    }
    if (this.center) {
      this.center = false;
      this.recenter();
    }
  }

  /** Scrolls so that the spread row is in the middle (after a change of rows or symbol). */
  requestCenter(): void {
    this.center = true;
  }

  private recenter(): void {
    // The spread row is sticky: place by the asks above it instead.
    const spread = this.spreadEl.closest<HTMLElement>(".spread-row");
    const below = this.asksEl.offsetTop + this.asksEl.offsetHeight;
    const top = below - (this.body.clientHeight - (spread?.offsetHeight ?? 0)) / 2;
    this.body.scrollTop = Math.max(0, top);
  }
}
