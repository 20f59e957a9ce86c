// The player: an xterm.js terminal fed from the API a window at a time.
//
// Seeking asks the server for the screen at a moment (/seek: one keyframe drawn plus the frames
// after it), so a seek costs the same anywhere in any session. Playing reads the next window of
// frames (/frames) while the buffer ahead runs low and drops what it has written, so memory is
// bounded by the window size (plus xterm's scrollback) whatever the session's size. A live
// session is followed with long polls (/frames?wait_ms=...).

import { Terminal } from "@xterm/xterm";
import { b64bytes, get, type SeekAnswer, type Session, sessionPath, type WindowAnswer } from "./api";

interface Frame {
  t: number;
  stream: string;
  data: Uint8Array;
}

export interface Marker {
  t: number;
  kind: "hit" | "alert" | "kube" | "event" | "resize" | "command";
  label: string;
}

const WINDOW_BYTES = 256 * 1024;
const LOW_WATER_BYTES = 128 * 1024;
const SCREEN = new Set(["o", "e", "r"]);
const SPEEDS = [0.25, 0.5, 1, 2, 4, 8, 16, 32, 100];

function toFrames(wire: [number, string, string][]): Frame[] {
  return wire.map(([t, stream, data]) => ({ t, stream, data: b64bytes(data) }));
}

function parseSize(data: Uint8Array): [number, number] | null {
  const m = /^(\d+)x(\d+)$/i.exec(new TextDecoder().decode(data));
  return m ? [Math.max(1, Math.min(1000, +m[1])), Math.max(1, Math.min(1000, +m[2]))] : null;
}

export class Player {
  readonly term: Terminal;
  session: Session;
  pos = 0; // session time shown (ms)
  playing = false;
  speed = 1;
  idleCapMs = 2000;
  live = false;
  lastSeekMs = 0; // how long the last seek took, click to screen drawn (ms)
  onChange: () => void = () => {};
  onInput: (f: Frame) => void = () => {};

  private queue: Frame[] = [];
  private queuedBytes = 0;
  private next = { seq: 0, skip: 0 };
  private end = false;
  private fetching: Promise<void> | null = null;
  private generation = 0; // bumps on every seek: stale answers are dropped
  private clockBase = 0; // performance.now() when `pos` was `clockPos`
  private clockPos = 0;
  private timer = 0;

  constructor(
    host: HTMLElement,
    session: Session,
    /** The leaf the session is on, read through the root (docs/federation.md); "" here. */
    private readonly leaf = "",
  ) {
    this.session = session;
    this.term = new Terminal({
      cols: session.cols,
      rows: session.rows,
      scrollback: 1000,
      convertEol: false,
      disableStdin: true,
      fontSize: 14,
      theme: { background: "#101418" },
    });
    this.term.open(host);
  }

  get duration(): number {
    return Math.max(this.session.duration_ms, this.pos);
  }

  dispose(): void {
    this.generation++;
    window.clearTimeout(this.timer);
    this.term.dispose();
  }

  private write(data: Uint8Array | string): Promise<void> {
    return new Promise((resolve) => this.term.write(data, resolve));
  }

  /** Write `frames` in order: output as one write per run between resizes (awaiting each
   *  write separately would cost one timer round trip per frame), resizes once the output
   *  before them is on the screen. */
  private async apply(frames: Frame[]): Promise<void> {
    let run: Uint8Array[] = [];
    let size = 0;
    const flush = async () => {
      if (!run.length) return;
      const data = new Uint8Array(size);
      let at = 0;
      for (const part of run) {
        data.set(part, at);
        at += part.length;
      }
      run = [];
      size = 0;
      await this.write(data);
    };
    for (const f of frames) {
      if (f.stream === "r") {
        const dims = parseSize(f.data);
        await flush();
        if (dims) this.term.resize(dims[0], dims[1]);
      } else if (SCREEN.has(f.stream)) {
        run.push(f.data);
        size += f.data.length;
      } else if (f.stream === "i") {
        this.onInput(f);
      }
    }
    await flush();
  }

  /** Show the screen at `ms` (clamped to the session), keeping play/pause as it was. */
  async seek(ms: number): Promise<void> {
    const started = performance.now();
    const gen = ++this.generation;
    // Within the session (a live one grows: its end is wherever the recording is now).
    const at = Math.max(0, Math.round(this.live ? ms : Math.min(ms, this.duration)));
    const answer = await get<SeekAnswer>(
      sessionPath(this.session.sid, this.leaf, "/seek"),
      { at_ms: at },
    );
    if (gen !== this.generation) return;
    this.term.reset();
    this.term.resize(answer.cols, answer.rows);
    await this.apply(toFrames(answer.frames));
    if (gen !== this.generation) return;
    this.pos = at;
    this.queue = [];
    this.queuedBytes = 0;
    this.next = answer.next;
    this.end = false;
    this.fetching = null;
    this.restartClock();
    // Drawn: xterm paints on the next animation frame.
    await new Promise((r) => requestAnimationFrame(() => r(null)));
    this.lastSeekMs = performance.now() - started;
    this.onChange();
    this.schedule();
  }

  private restartClock(): void {
    this.clockBase = performance.now();
    this.clockPos = this.pos;
  }

  private fill(): Promise<void> {
    if (this.fetching || this.end) return this.fetching ?? Promise.resolve();
    const gen = this.generation;
    const wait = this.live ? 1000 : 0;
    this.fetching = get<WindowAnswer>(
      sessionPath(this.session.sid, this.leaf, "/frames"),
      { seq: this.next.seq, skip: this.next.skip, max_bytes: WINDOW_BYTES, wait_ms: wait },
    )
      .then((w) => {
        if (gen !== this.generation) return;
        for (const f of toFrames(w.frames)) {
          this.queue.push(f);
          this.queuedBytes += f.data.length;
        }
        this.next = w.next;
        this.session = { ...this.session, status: w.status, duration_ms: w.duration_ms };
        // A live session has no end until it is closed; an ended one ends at its last window.
        this.end = w.end && w.status !== "active";
        if (w.status !== "active") this.live = false;
      })
      .finally(() => {
        if (gen === this.generation) this.fetching = null;
      });
    return this.fetching;
  }

  play(): void {
    if (this.playing) return;
    if (this.end && this.queue.length === 0 && this.pos >= this.duration) {
      void this.seek(0).then(() => this.play());
      return;
    }
    this.playing = true;
    this.restartClock();
    this.onChange();
    this.schedule();
  }

  pause(): void {
    this.playing = false;
    this.onChange();
  }

  toggle(): void {
    if (this.playing) this.pause();
    else this.play();
  }

  /** Follow a live session: jump to its end and write new frames as they are stored. */
  async followLive(): Promise<void> {
    this.live = true;
    await this.seek(this.session.duration_ms + 1);
    this.playing = true;
    this.restartClock();
    this.onChange();
    this.schedule();
  }

  /** Paused: step to the next moment (asciinema's `.`): the next frame and every frame
   * stored at the same millisecond, so the screen is the one a seek there shows. */
  async step(): Promise<void> {
    this.pause();
    if (this.queue.length === 0) await this.fill();
    const first = this.queue[0];
    if (!first) return;
    const batch = [];
    for (;;) {
      while (this.queue.length > 0 && this.queue[0].t === first.t) {
        const f = this.queue.shift();
        if (!f) break;
        this.queuedBytes -= f.data.length;
        batch.push(f);
      }
      // Frames of the same moment may continue in the next window.
      if (this.queue.length > 0 || this.end) break;
      await this.fill();
      if (this.queue.length === 0) break;
    }
    await this.apply(batch);
    this.pos = first.t;
    this.onChange();
  }

  faster(): void {
    const i = SPEEDS.indexOf(this.speed);
    this.setSpeed(SPEEDS[Math.min(SPEEDS.length - 1, i + 1)]);
  }

  slower(): void {
    const i = SPEEDS.indexOf(this.speed);
    this.setSpeed(SPEEDS[Math.max(0, i - 1)]);
  }

  setSpeed(s: number): void {
    this.restartClock();
    this.speed = s;
    this.onChange();
  }

  private schedule(delay = 0): void {
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => void this.tick(), delay);
  }

  private async tick(): Promise<void> {
    const gen = this.generation;
    if (this.queuedBytes < LOW_WATER_BYTES && !this.end) {
      const pending = this.fill();
      if (this.queue.length === 0) {
        await pending;
        if (gen !== this.generation) return;
        if (this.queue.length === 0) {
          if (this.end) {
            this.playing = false;
            this.onChange();
            return;
          }
          if (this.playing || this.live) this.schedule(this.live ? 0 : 100);
          return;
        }
      }
    }
    if (!this.playing) return;
    let target = this.clockPos + (performance.now() - this.clockBase) * this.speed;
    const first = this.queue[0];
    if (first && this.live) target = Math.max(target, first.t);
    if (first && first.t - this.pos > this.idleCapMs && target < first.t) {
      // Idle time above the cap is skipped (asciinema's --idle-time-limit).
      const skip = first.t - this.pos - this.idleCapMs;
      this.clockPos += skip;
      target += skip;
    }
    const due: Frame[] = [];
    while (this.queue.length && this.queue[0].t <= target) {
      const f = this.queue.shift()!;
      this.queuedBytes -= f.data.length;
      due.push(f);
    }
    if (due.length) {
      await this.apply(due);
      if (gen !== this.generation) return;
      this.pos = Math.max(this.pos, due[due.length - 1].t);
    }
    this.pos = Math.max(this.pos, Math.min(target, this.queue.length ? this.queue[0].t : target));
    this.onChange();
    const nextAt = this.queue.length ? (this.queue[0].t - target) / this.speed : 50;
    this.schedule(Math.max(0, Math.min(nextAt, 50)));
  }

  /** The text of the screen as it stands (trailing blanks dropped), one line per row. */
  screenText(): string {
    const buf = this.term.buffer.active;
    const out: string[] = [];
    for (let y = 0; y < this.term.rows; y++) {
      out.push(buf.getLine(buf.viewportY + y)?.translateToString(true) ?? "");
    }
    return out.join("\n");
  }

  /** Select the first occurrence of `text` on the screen (case-insensitive); false: none. */
  highlight(text: string): boolean {
    const needle = text.toLowerCase();
    if (!needle) return false;
    const buf = this.term.buffer.active;
    for (let y = 0; y < this.term.rows; y++) {
      const line = buf.getLine(buf.viewportY + y)?.translateToString(false) ?? "";
      const x = line.toLowerCase().indexOf(needle);
      if (x >= 0) {
        this.term.select(x, buf.viewportY + y, text.length);
        return true;
      }
    }
    return false;
  }
}
