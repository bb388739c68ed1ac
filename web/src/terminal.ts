// The psql console (ttyS0) in an xterm.js terminal that fills its element
// and tells the guest its size.
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";

// A psql prompt at the end of the output: "postgres=# ", "postgres-# ",
// "postgres(# ", "postgres=> " ...
const PROMPT = /[=\-('"*]?[#>] $/;

export interface Console {
  write(data: string | Uint8Array): void;
  send(data: string): void;
}

export class PsqlTerminal {
  readonly term: Terminal;
  private fit = new FitAddon();
  private tail = "";
  private idle = false; // at a prompt with nothing typed
  private muted: { resolve: () => void; seen: string } | null = null;
  private lastSize = "";
  private resizeTimer = 0;
  private observer: ResizeObserver;
  onResize: ((rows: number, cols: number) => void) | null = null;
  // pendingResize: the size changed while psql was busy; tell it at the
  // next idle prompt.
  pendingResize = false;

  constructor(readonly element: HTMLElement, private sendInput: (data: string) => void, fontSize = 15) {
    this.term = new Terminal({
      fontSize,
      fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
      cursorBlink: true,
      convertEol: false,
      scrollback: 5000,
      theme: { background: "#101418", foreground: "#e6e6e6" },
    });
    this.term.loadAddon(this.fit);
    this.term.open(element);
    this.term.onData(d => {
      this.idle = false;
      // Typing during a hidden command: show everything from here on, so
      // nothing the user typed is swallowed.
      if (this.muted) {
        const m = this.muted;
        this.muted = null;
        m.resolve();
      }
      this.sendInput(d);
    });
    this.observer = new ResizeObserver(() => this.scheduleFit());
    this.observer.observe(element);
    this.scheduleFit();
  }

  setFontSize(px: number): void {
    this.term.options.fontSize = px;
    this.scheduleFit();
  }

  private scheduleFit(): void {
    clearTimeout(this.resizeTimer);
    this.resizeTimer = window.setTimeout(() => {
      try {
        this.fit.fit();
      } catch {
        return; // not visible yet
      }
      const size = `${this.term.rows}x${this.term.cols}`;
      if (size !== this.lastSize) {
        this.lastSize = size;
        this.onResize?.(this.term.rows, this.term.cols);
      }
    }, 150);
  }

  // output shows guest output, unless a hidden command is running.
  output(text: string): void {
    this.tail = (this.tail + text).slice(-200);
    this.idle = PROMPT.test(this.tail);
    if (this.idle && this.pendingResize && !this.muted) {
      this.pendingResize = false;
      window.setTimeout(() => this.onResize?.(this.term.rows, this.term.cols), 50);
    }
    if (this.muted) {
      this.muted.seen += text;
      if (/\n[^\n]*[#>] $/.test(this.muted.seen)) {
        const m = this.muted;
        this.muted = null;
        // Show only the fresh prompt.
        this.term.write("\r" + m.seen.slice(m.seen.lastIndexOf("\n") + 1));
        m.resolve();
      }
      return;
    }
    this.term.write(text);
  }

  // atPrompt: psql waits at a prompt and the user typed nothing since.
  atPrompt(): boolean {
    return this.idle && !this.muted;
  }

  // settled: at a prompt with no size change still to tell psql.
  settled(): boolean {
    return this.atPrompt() && !this.pendingResize;
  }

  // hidden types a psql line whose echo and output are not shown (the
  // terminal shows the next prompt instead).
  hidden(line: string, timeoutMs = 15000): Promise<void> {
    return new Promise(resolve => {
      const t = window.setTimeout(() => {
        if (this.muted) {
          this.term.write(this.muted.seen);
          this.muted = null;
        }
        resolve();
      }, timeoutMs);
      this.muted = {
        seen: "",
        resolve: () => {
          clearTimeout(t);
          resolve();
        },
      };
      // Ctrl-U clears anything half-typed; psql's readline honours it.
      this.sendInput("\x15" + line + "\r");
    });
  }

  size(): { rows: number; cols: number } {
    return { rows: this.term.rows, cols: this.term.cols };
  }

  // text returns the terminal's buffer as lines (tests read it).
  text(): string {
    const b = this.term.buffer.active;
    const lines: string[] = [];
    for (let i = 0; i < b.length; i++) lines.push(b.getLine(i)?.translateToString(true) ?? "");
    return lines.join("\n");
  }

  reset(): void {
    this.term.reset();
    this.tail = "";
    this.idle = false;
  }

  focus(): void {
    this.term.focus();
  }

  dispose(): void {
    this.observer.disconnect();
    this.term.dispose();
  }
}
