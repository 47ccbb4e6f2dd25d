/**
 * The status: the connection badge, the metric badges (symbol state, epoch,
 * seq, checksum, verified, resyncs, gaps, latency, messages/s), the event
 * line, the "node unreachable" banner and the event log. Everything is
 * written in place from the page's redraw, and only when it changed.
 *
 * @module
 */
import type { ConnectionState } from "@orderbook/client";
import type { EventJournal } from "./events.js";
import { MAX_EVENTS } from "./events.js";
import type { PerfMirror } from "./mirror.js";
import type { NotableEvent, Selection, ViewFrame } from "./types.js";

const CONNECTION_TEXT: Record<ConnectionState, string> = {
  connecting: "connecting",
  live: "live",
  reconnecting: "reconnecting…",
  closed: "closed",
};

function clock(ms: number): string {
  const d = new Date(ms);
  const two = (n: number): string => String(n).padStart(2, "0");
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

function ms(v: number | null): string {
  if (v === null) return "—";
  return v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0);
}

/** Sets text only when it differs. */
function put(e: HTMLElement, text: string): void {
  if (e.textContent !== text) e.textContent = text;
}

function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const e = document.getElementById(id);
  if (e === null) throw new Error(`#${id} missing`);
  return e as T;
}

export class StatusView {
  private readonly conn = byId("conn");
  private readonly connText = byId("conn-text");
  private readonly state = byId("m-state");
  private readonly epoch = byId("m-epoch");
  private readonly seq = byId("m-seq");
  private readonly checksum = byId("m-checksum");
  private readonly verified = byId("m-verified");
  private readonly resyncs = byId("m-resyncs");
  private readonly gaps = byId("m-gaps");
  private readonly p50 = byId("m-p50");
  private readonly p99 = byId("m-p99");
  private readonly rate = byId("m-rate");
  private readonly levels = byId("m-levels");
  private readonly notice = byId("notice");
  private readonly noticeText = byId("notice-text");
  private readonly noticeTime = byId("notice-time");
  private readonly banner = byId("banner");
  private readonly log = byId("log");
  private readonly dSymbol = byId("d-symbol");
  private readonly dSub = byId("d-sub");
  private readonly dStart = byId("d-start");
  private readonly dSnapshots = byId("d-snapshots");
  private readonly dChkfail = byId("d-chkfail");
  private readonly dConnects = byId("d-connects");
  private readonly dMessages = byId("d-messages");
  private readonly dLast = byId("d-last");
  private readonly dPerf = byId("d-perf");
  private readonly dFrames = byId("d-frames");
  private readonly logRows: { li: HTMLElement; time: HTMLElement; text: HTMLElement }[] = [];
  private journalVersion = -1;
  private shownNotice: NotableEvent | null = null;
  private bannerText = "";

  constructor(private readonly journal: EventJournal) {
    for (let i = 0; i < MAX_EVENTS; i++) {
      const li = document.createElement("li");
      const time = document.createElement("span");
      time.className = "t";
      const text = document.createElement("span");
      text.className = "x";
      li.append(time, text);
      li.hidden = true;
      this.log.appendChild(li);
      this.logRows.push({ li, time, text });
    }
  }

  /** A persistent problem (null clears it), e.g. "node unreachable". */
  setBanner(text: string | null): void {
    this.bannerText = text ?? "";
  }

  render(frame: ViewFrame | null, connection: ConnectionState, selected: Selection | null, perf: PerfMirror, frames: number): void {
    // Connection: badge, and the body's data-connection for tests and CSS.
    if (this.conn.dataset.state !== connection) {
      this.conn.dataset.state = connection;
      document.body.dataset.connection = connection;
    }
    put(this.connText, CONNECTION_TEXT[connection]);

    const sym = selected !== null && frame !== null ? frame.symbols[selected.symbol] : undefined;
    const st = sym?.state ?? "subscribing";
    if (this.state.dataset.state !== st) this.state.dataset.state = st;
    put(this.state, st);
    put(this.epoch, sym?.epoch ?? "—");
    put(this.seq, sym?.seq ?? "—");
    put(this.checksum, sym === undefined ? "—" : `0x${sym.checksum.toString(16).padStart(8, "0")}`);
    const tip = sym === undefined ? "" : `CRC-32 of the top 10 levels per side: ${sym.checksum}`;
    if (this.checksum.title !== tip) this.checksum.title = tip;
    put(this.verified, sym === undefined ? "—" : String(sym.verified));
    put(this.resyncs, sym === undefined ? "—" : String(sym.resyncs));
    this.resyncs.classList.toggle("bad", (sym?.resyncs ?? 0) > 0);
    put(this.gaps, sym === undefined ? "—" : String(sym.gaps));
    this.gaps.classList.toggle("bad", (sym?.gaps ?? 0) > 0);
    const lat = frame?.stats.latency;
    put(this.p50, ms(lat?.p50Ms ?? null));
    put(this.p99, ms(lat?.p99Ms ?? null));
    put(this.rate, frame === null ? "—" : String(frame.messagesPerSecond));
    const l = frame?.ladder;
    put(this.levels, l != null && l.symbol === selected?.symbol ? `${l.bidLevels} / ${l.askLevels}` : "—");

    // The stream panel.
    put(this.dSymbol, selected?.symbol ?? "");
    put(this.dSub, selected === null ? "—" : `${selected.depth > 0 ? `top ${selected.depth}` : "full book"} · ${selected.intervalMs > 0 ? `every ${selected.intervalMs} ms` : "every change"}`);
    put(this.dStart, sym?.lastStart == null ? "—" : sym.lastStart === "resumed" ? "resumed" : `snapshot (${sym.lastReason}${sym.newEpoch ? ", new epoch" : ""})`);
    put(this.dSnapshots, sym === undefined ? "—" : `${sym.snapshots} / ${sym.resumes}`);
    put(this.dChkfail, sym === undefined ? "—" : String(sym.checksumFailures));
    this.dChkfail.classList.toggle("bad", (sym?.checksumFailures ?? 0) > 0);
    const stats = frame?.stats;
    put(this.dConnects, stats === undefined ? "—" : `${stats.connects} / ${stats.reconnects}`);
    put(this.dMessages, stats === undefined ? "—" : `${stats.messages} / ${stats.decodeErrors}`);
    put(this.dLast, stats?.latency.lastMs == null ? "—" : `${ms(stats.latency.lastMs)} ms`);
    const worker = perf.workerStreamMs !== null ? ` (worker ${perf.workerStreamMs.toFixed(0)})` : "";
    put(this.dPerf, `${perf.streamMs.toFixed(0)}${worker} / ${perf.renderMs.toFixed(0)} ms`);
    put(this.dFrames, `${frames} / ${perf.longTasks}`);

    if (this.banner.textContent !== this.bannerText) {
      this.banner.textContent = this.bannerText;
      this.banner.hidden = this.bannerText === "";
    }

    if (this.journal.version !== this.journalVersion) {
      this.journalVersion = this.journal.version;
      this.renderNotice();
      this.renderLog();
    }
  }

  private renderNotice(): void {
    const n = this.journal.notice;
    if (n === this.shownNotice) return;
    this.shownNotice = n;
    if (n === null) return;
    put(this.noticeText, n.notice ?? n.line);
    put(this.noticeTime, clock(n.at));
    this.notice.dataset.level = n.level;
    this.notice.dataset.kind = n.kind;
    // Highlighted for a few seconds, then it stays, plain, until the next one.
    const c = getComputedStyle(this.notice).getPropertyValue("--notice-flash").trim() || "rgba(76,154,255,0.22)";
    this.notice.animate(
      [{ backgroundColor: c }, { backgroundColor: c, offset: 0.6 }, { backgroundColor: "rgba(0,0,0,0)" }],
      { duration: 6000, easing: "ease-in" },
    );
  }

  private renderLog(): void {
    const events = this.journal.recent();
    for (let i = 0; i < this.logRows.length; i++) {
      const row = this.logRows[i]!;
      const e = events[i];
      if (e === undefined) {
        row.li.hidden = true;
        continue;
      }
      row.li.hidden = false;
      put(row.time, clock(e.at));
      put(row.text, e.line);
      if (row.li.dataset.level !== e.level) row.li.dataset.level = e.level;
    }
  }
}
