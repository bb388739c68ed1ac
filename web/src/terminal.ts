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
  private lastSize = "";
  private resizeTimer = 0;
  private observer: ResizeObserver;
  onResize: ((rows: number, cols: number) => void) | null = null;
  // pendingResize: the size changed and the guest has not confirmed it yet.
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
        this.pendingResize = true;
        this.onResize?.(this.term.rows, this.term.cols);
      }
    }, 150);
  }

  // output shows guest output.
  output(text: string): void {
    this.tail = (this.tail + text).slice(-200);
    this.idle = PROMPT.test(this.tail);
    this.term.write(text);
  }

  // atPrompt: psql waits at a prompt and the user typed nothing since.
  atPrompt(): boolean {
    return this.idle;
  }

  // settled: at a prompt, and the guest has the terminal's size.
  settled(): boolean {
    return this.atPrompt() && !this.pendingResize;
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
