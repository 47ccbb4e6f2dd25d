/**
 * The toolbar: symbol picker (from `/symbols`, grouped by venue when there
 * are several), depth and conflation selects. It reports the user's choices
 * and shows the current selection; options are updated in place.
 *
 * @module
 */
import type { SymbolInfo } from "./symbols.js";
import type { Selection } from "./types.js";

export const DEPTHS: readonly [number, string][] = [
  [0, "Full book"],
  [10, "10"],
  [25, "25"],
  [50, "50"],
  [100, "100"],
];

export const INTERVALS: readonly [number, string][] = [
  [0, "Live"],
  [100, "100 ms"],
  [1000, "1 s"],
];

function byId<T extends HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (e === null) throw new Error(`#${id} missing`);
  return e as T;
}

function option(value: string, text: string): HTMLOptionElement {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  return o;
}

/** Makes sure a select has an option for `value` (a value from the URL outside the list). */
function ensure(select: HTMLSelectElement, value: number, label: (v: number) => string): void {
  const v = String(value);
  if (![...select.options].some((o) => o.value === v)) {
    const o = option(v, label(value));
    o.dataset.custom = "1";
    const after = [...select.options].find((x) => Number(x.value) > value);
    select.insertBefore(o, after ?? null);
  }
  if (select.value !== v) select.value = v;
}

export interface ControlHandlers {
  onSymbol(symbol: string): void;
  onDepth(depth: number): void;
  onInterval(intervalMs: number): void;
}

export class Controls {
  private readonly symbol = byId<HTMLSelectElement>("symbol");
  private readonly depth = byId<HTMLSelectElement>("depth");
  private readonly interval = byId<HTMLSelectElement>("interval");
  private names = "";

  constructor(handlers: ControlHandlers) {
    for (const [v, t] of DEPTHS) this.depth.appendChild(option(String(v), t));
    for (const [v, t] of INTERVALS) this.interval.appendChild(option(String(v), t));
    this.symbol.addEventListener("change", () => {
      if (this.symbol.value) handlers.onSymbol(this.symbol.value);
    });
    this.depth.addEventListener("change", () => handlers.onDepth(Number(this.depth.value)));
    this.interval.addEventListener("change", () => handlers.onInterval(Number(this.interval.value)));
  }

  /** Fills the symbol picker (only rebuilt when the list changed), keeping `selected`. */
  setSymbols(list: readonly SymbolInfo[], selected: string | null): void {
    const names = list.map((s) => `${s.venue}\u0000${s.symbol}`).join("\n");
    if (names !== this.names) {
      this.names = names;
      const venues = [...new Set(list.map((s) => s.venue))];
      const children: HTMLElement[] = [];
      if (venues.length > 1) {
        for (const venue of venues) {
          const g = document.createElement("optgroup");
          g.label = venue || "—";
          for (const s of list) if (s.venue === venue) g.appendChild(option(s.symbol, s.symbol));
          children.push(g);
        }
      } else {
        for (const s of list) children.push(option(s.symbol, s.symbol));
      }
      this.symbol.replaceChildren(...children);
      this.symbol.disabled = list.length === 0;
    }
    this.showSymbol(selected);
  }

  /** Shows a selection in the controls. */
  show(selection: Selection): void {
    this.showSymbol(selection.symbol);
    ensure(this.depth, selection.depth, (v) => String(v));
    ensure(this.interval, selection.intervalMs, (v) => (v % 1000 === 0 ? `${v / 1000} s` : `${v} ms`));
  }

  private showSymbol(symbol: string | null): void {
    if (symbol === null || symbol === "") return;
    if (![...this.symbol.options].some((o) => o.value === symbol)) {
      // Not (yet) in the list: keep it visible as the choice.
      const o = option(symbol, symbol);
      o.dataset.custom = "1";
      this.symbol.prepend(o);
    }
    for (const o of [...this.symbol.options]) if (o.dataset.custom === "1" && o.value !== symbol) o.remove();
    if (this.symbol.value !== symbol) this.symbol.value = symbol;
  }
}
