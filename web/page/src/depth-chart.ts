/**
 * The depth chart: cumulative bid depth (green, left of the mid) and ask
 * depth (red, right of it) over the levels the ladder shows, as steps.
 * Drawn on a `<canvas>` at the device pixel ratio, only from the page's
 * once-per-animation-frame redraw. Every label is an exact decimal string
 * from the view model; the numbers only place things.
 *
 * @module
 */
import type { LadderLevel, LadderModel } from "./types.js";

const FONT = '11px ui-monospace, "SF Mono", SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace';

function css(name: string, fallback: string): string {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

interface Palette {
  bid: string;
  ask: string;
  bidFill: string;
  askFill: string;
  grid: string;
  text: string;
  muted: string;
  tooltip: string;
}

export class DepthChart {
  private readonly canvas: HTMLCanvasElement;
  private readonly ctx: CanvasRenderingContext2D;
  private palette: Palette | null = null;
  private hoverX: number | null = null;
  private last: LadderModel | null = null;
  private width = 0;
  private height = 0;

  constructor(canvas: HTMLCanvasElement, invalidate: () => void) {
    this.canvas = canvas;
    const ctx = canvas.getContext("2d", { alpha: true });
    if (ctx === null) throw new Error("no 2d canvas context");
    this.ctx = ctx;
    // The size comes from the observer, so drawing never forces a layout.
    new ResizeObserver((entries) => {
      const box = entries[entries.length - 1]!.contentRect;
      this.width = box.width;
      this.height = box.height;
      invalidate();
    }).observe(canvas);
    canvas.addEventListener("pointermove", (e) => {
      this.hoverX = e.offsetX;
      invalidate();
    });
    canvas.addEventListener("pointerleave", () => {
      this.hoverX = null;
      invalidate();
    });
  }

  /** Draws the latest model (or the previous one when called with `undefined`, after a resize or hover). */
  render(model: LadderModel | null | undefined): void {
    if (model !== undefined) this.last = model;
    const m = this.last;
    const dpr = window.devicePixelRatio || 1;
    const w = this.width;
    const h = this.height;
    if (w === 0 || h === 0) return;
    const pw = Math.round(w * dpr);
    const ph = Math.round(h * dpr);
    if (this.canvas.width !== pw || this.canvas.height !== ph) {
      this.canvas.width = pw;
      this.canvas.height = ph;
    }
    const ctx = this.ctx;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const p = (this.palette ??= {
      bid: css("--bid", "#1fc08a"),
      ask: css("--ask", "#f0505e"),
      bidFill: css("--bid-fill", "rgba(31,192,138,0.18)"),
      askFill: css("--ask-fill", "rgba(240,80,94,0.18)"),
      grid: css("--grid", "#1a212b"),
      text: css("--text", "#d5dde6"),
      muted: css("--muted", "#7d8896"),
      tooltip: css("--panel-2", "#151c25"),
    });
    ctx.font = FONT;
    ctx.textBaseline = "middle";

    const left = 10;
    const right = w - 10;
    const top = 26;
    const bottom = h - 22;

    // Grid.
    ctx.strokeStyle = p.grid;
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let i = 0; i <= 4; i++) {
      const y = Math.round(top + ((bottom - top) * i) / 4) + 0.5;
      ctx.moveTo(left, y);
      ctx.lineTo(right, y);
    }
    ctx.stroke();

    if (m === null || (m.bids.length === 0 && m.asks.length === 0)) {
      ctx.fillStyle = p.muted;
      ctx.textAlign = "center";
      ctx.fillText(m === null ? "waiting for the book…" : "empty book", w / 2, (top + bottom) / 2);
      return;
    }

    const worstBid = m.bids[m.bids.length - 1];
    const worstAsk = m.asks[m.asks.length - 1];
    const bestBid = m.bids[0];
    const bestAsk = m.asks[0];
    let center: number;
    let half: number;
    if (m.midN !== null && worstBid !== undefined && worstAsk !== undefined) {
      center = m.midN;
      half = Math.max(center - worstBid.priceN, worstAsk.priceN - center);
    } else {
      const lo = worstBid?.priceN ?? bestAsk!.priceN;
      const hi = worstAsk?.priceN ?? bestBid!.priceN;
      center = (lo + hi) / 2;
      half = (hi - lo) / 2;
    }
    if (!(half > 0)) half = Math.abs(center) * 0.001 || 1;
    half *= 1.04;
    const x = (price: number): number => left + ((price - (center - half)) / (2 * half)) * (right - left);
    const yMax = (m.maxTotal || 1) * 1.1;
    const y = (total: number): number => bottom - (total / yMax) * (bottom - top);

    this.side(m.bids, x, y, left, bottom, p.bid, p.bidFill);
    this.side(m.asks, x, y, right, bottom, p.ask, p.askFill);

    // Mid line.
    const xm = Math.round(x(center)) + 0.5;
    ctx.strokeStyle = p.muted;
    ctx.setLineDash([3, 3]);
    ctx.beginPath();
    ctx.moveTo(xm, top - 6);
    ctx.lineTo(xm, bottom);
    ctx.stroke();
    ctx.setLineDash([]);

    // Exact labels: range and mid along the bottom, side totals at the top.
    const by = bottom + 11;
    ctx.fillStyle = p.muted;
    ctx.textAlign = "left";
    if (worstBid !== undefined) ctx.fillText(worstBid.price, left, by);
    ctx.textAlign = "right";
    if (worstAsk !== undefined) ctx.fillText(worstAsk.price, right, by);
    ctx.textAlign = "center";
    if (m.mid !== null) {
      ctx.fillStyle = p.text;
      ctx.fillText(m.mid, xm, by);
    }
    ctx.textAlign = "left";
    ctx.fillStyle = p.bid;
    if (worstBid !== undefined) ctx.fillText(`BIDS Σ ${worstBid.total}`, left, 12);
    ctx.textAlign = "right";
    ctx.fillStyle = p.ask;
    if (worstAsk !== undefined) ctx.fillText(`ASKS Σ ${worstAsk.total}`, right, 12);

    if (this.hoverX !== null) this.hover(m, this.hoverX, x, y, center, top, bottom, w, p);
  }

  /** One side as steps from the best level outwards to the edge. */
  private side(
    levels: LadderLevel[],
    x: (p: number) => number,
    y: (t: number) => number,
    edge: number,
    base: number,
    stroke: string,
    fill: string,
  ): void {
    if (levels.length === 0) return;
    const ctx = this.ctx;
    // One staircase, stroked open and filled closed down to the base line.
    const line = new Path2D();
    line.moveTo(x(levels[0]!.priceN), base);
    let prev = 0;
    for (const l of levels) {
      const xi = x(l.priceN);
      line.lineTo(xi, y(prev));
      line.lineTo(xi, y(l.totalN));
      prev = l.totalN;
    }
    line.lineTo(edge, y(prev));
    const area = new Path2D(line);
    area.lineTo(edge, base);
    area.closePath();
    ctx.fillStyle = fill;
    ctx.fill(area);
    ctx.strokeStyle = stroke;
    ctx.lineWidth = 1.5;
    ctx.stroke(line);
  }

  /** A crosshair on the deepest level at or beyond the pointer, with its exact price and depth. */
  private hover(
    m: LadderModel,
    px: number,
    x: (p: number) => number,
    y: (t: number) => number,
    center: number,
    top: number,
    bottom: number,
    w: number,
    p: Palette,
  ): void {
    const isBid = px < x(center);
    const levels = isBid ? m.bids : m.asks;
    let hit: LadderLevel | undefined;
    for (const l of levels) {
      const xl = x(l.priceN);
      if (isBid ? xl >= px : xl <= px) hit = l;
      else break;
    }
    if (hit === undefined) return;
    const ctx = this.ctx;
    const hx = Math.round(x(hit.priceN)) + 0.5;
    const hy = y(hit.totalN);
    ctx.strokeStyle = p.muted;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(hx, top);
    ctx.lineTo(hx, bottom);
    ctx.stroke();
    ctx.fillStyle = isBid ? p.bid : p.ask;
    ctx.beginPath();
    ctx.arc(hx, hy, 3.5, 0, Math.PI * 2);
    ctx.fill();
    const lines = [`${isBid ? "≥" : "≤"} ${hit.price}`, `Σ ${hit.total}`];
    const tw = Math.max(...lines.map((t) => ctx.measureText(t).width)) + 14;
    const th = 36;
    let bx = hx + 8;
    if (bx + tw > w - 4) bx = hx - 8 - tw;
    const by = Math.min(Math.max(top, hy - th - 6), bottom - th);
    ctx.fillStyle = p.tooltip;
    ctx.strokeStyle = p.grid;
    ctx.beginPath();
    ctx.rect(bx, by, tw, th);
    ctx.fill();
    ctx.stroke();
    ctx.textAlign = "left";
    ctx.fillStyle = p.text;
    ctx.fillText(lines[0]!, bx + 7, by + 11);
    ctx.fillStyle = isBid ? p.bid : p.ask;
    ctx.fillText(lines[1]!, bx + 7, by + 25);
  }
}
