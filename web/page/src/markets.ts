/**
 * The markets panel (`?watch=`): one row per watched symbol (and the
 * selected one) with its state, best bid, best ask, spread, seq and verified
 * count. Clicking a row (or Enter on it) selects that symbol, as the symbol
 * picker does.
 *
 * Rows are made once per symbol and updated in place from the page's redraw,
 * each write skipped when the value is unchanged. Without `?watch=` the panel
 * stays hidden.
 *
 * @module
 */
import type { MarketRow, SymbolMirror } from "./types.js";

const STATE_TEXT: Record<SymbolMirror["state"], string> = {
  subscribing: "subscribing",
  live: "live",
  resyncing: "resyncing",
  stale: "stale",
  failed: "failed",
};

function el<K extends keyof HTMLElementTagNameMap>(tag: K, className: string, parent?: HTMLElement): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  e.className = className;
  parent?.appendChild(e);
  return e;
}

/** Sets text only when it differs. */
function put(e: HTMLElement, text: string): void {
  if (e.textContent !== text) e.textContent = text;
}

class MarketLine {
  readonly el: HTMLDivElement;
  private readonly name: HTMLSpanElement;
  private readonly bid: HTMLSpanElement;
  private readonly ask: HTMLSpanElement;
  private readonly spread: HTMLSpanElement;
  private readonly seq: HTMLSpanElement;
  private readonly verified: HTMLSpanElement;
  private shownState = "";
  private shownSelected: boolean | null = null;

  constructor(readonly symbol: string) {
    this.el = el("div", "mrow");
    this.el.dataset.symbol = symbol;
    this.el.setAttribute("role", "row");
    this.el.tabIndex = 0;
    const cell = el("span", "mc sym", this.el);
    cell.setAttribute("role", "cell");
    el("i", "mdot", cell);
    this.name = el("span", "name", cell);
    this.name.textContent = symbol;
    this.bid = this.cell("bid");
    this.ask = this.cell("ask");
    this.spread = this.cell("spread");
    this.seq = this.cell("seq");
    this.verified = this.cell("verified");
  }

  private cell(name: string): HTMLSpanElement {
    const c = el("span", `mc ${name}`, this.el);
    c.setAttribute("role", "cell");
    return c;
  }

  set(row: MarketRow, mirror: SymbolMirror | undefined, selected: boolean): void {
    if (row.state !== this.shownState) {
      this.shownState = row.state;
      this.el.dataset.state = row.state;
      this.el.title = `${row.symbol}: ${STATE_TEXT[row.state]}`;
    }
    if (selected !== this.shownSelected) {
      this.shownSelected = selected;
      this.el.classList.toggle("selected", selected);
      if (selected) this.el.setAttribute("aria-current", "true");
      else this.el.removeAttribute("aria-current");
    }
    put(this.bid, row.bid ?? "—");
    put(this.ask, row.ask ?? "—");
    put(this.spread, row.spread ?? "—");
    put(this.seq, row.seq === "0" ? "—" : row.seq);
    put(this.verified, mirror === undefined ? "—" : String(mirror.verified));
  }
}

export class MarketsView {
  private readonly body: HTMLElement;
  private readonly note: HTMLElement;
  private readonly lines = new Map<string, MarketLine>();
  private order = "";
  private shown = false;

  /**
   * @param root the panel (`#markets`), hidden until {@link show}.
   * @param onSelect called with the symbol of a row the user picked.
   */
  constructor(private readonly root: HTMLElement, onSelect: (symbol: string) => void) {
    this.body = root.querySelector<HTMLElement>(".markets-body")!;
    this.note = root.querySelector<HTMLElement>(".markets-note")!;
    const pick = (target: EventTarget | null): void => {
      const row = (target as Element | null)?.closest?.<HTMLElement>(".mrow");
      const symbol = row?.dataset.symbol;
      if (symbol) onSelect(symbol);
    };
    this.body.addEventListener("click", (ev) => pick(ev.target));
    this.body.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        pick(ev.target);
      } else if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
        const row = (ev.target as Element).closest?.<HTMLElement>(".mrow");
        const next = ev.key === "ArrowDown" ? row?.nextElementSibling : row?.previousElementSibling;
        if (next instanceof HTMLElement) {
          ev.preventDefault();
          next.focus();
        }
      }
    });
  }

  /** Shows the panel (the page was asked to watch symbols); `note` goes in its header. */
  show(note: string): void {
    this.shown = true;
    this.root.hidden = false;
    this.root.parentElement?.classList.add("with-markets");
    put(this.note, note);
  }

  /** Draws the rows (nothing while the panel is hidden). */
  render(rows: readonly MarketRow[], symbols: Record<string, SymbolMirror>, selected: string): void {
    if (!this.shown) return;
    const order = rows.map((r) => r.symbol).join("\n");
    if (order !== this.order) {
      this.order = order;
      const keep = new Set(rows.map((r) => r.symbol));
      for (const [symbol, line] of this.lines) {
        if (!keep.has(symbol)) {
          line.el.remove();
          this.lines.delete(symbol);
        }
      }
      const els: HTMLElement[] = [];
      for (const r of rows) {
        let line = this.lines.get(r.symbol);
        if (line === undefined) this.lines.set(r.symbol, (line = new MarketLine(r.symbol)));
        els.push(line.el);
      }
      // Moves only what is out of place (keeps focus and hover on the others).
      els.forEach((e, i) => {
        if (this.body.children[i] !== e) this.body.insertBefore(e, this.body.children[i] ?? null);
      });
    }
    for (const r of rows) this.lines.get(r.symbol)!.set(r, symbols[r.symbol], r.symbol === selected);
  }
}
