// The psql console (ttyS0) in an xterm.js terminal that fills its element
// and tells the guest its size.
import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import { Unicode11Addon } from "@xterm/addon-unicode11";

// A psql prompt at the end of the output: "postgres=# ", "postgres-# ",
// "postgres(# ", "postgres=> " ...
const PROMPT = /[=\-('"*]?[#>] $/;

// How long an Esc waits for a Tab (Esc then Tab leaves the terminal).
const ESC_TAB_MS = 800;

export interface Console {
  write(data: string | Uint8Array): void;
  send(data: string): void;
}

export class PsqlTerminal {
  readonly term: Terminal;
  private fit = new FitAddon();
  private tail = "";
  private idle = false; // at a prompt with nothing typed
  private guestSpoke = false; // the guest printed something since the last reset
  private lastSize = "";
  private resizeTimer = 0;
  private observer: ResizeObserver;
  private escTimer = 0;
  private escPending = false;
  onResize: ((rows: number, cols: number) => void) | null = null;
  // onCopy is told what was copied (the page confirms it).
  onCopy: ((text: string) => void) | null = null;
  // copyOnSelect copies a selection as soon as it is made.
  copyOnSelect = false;
  // pendingResize: the size changed and the guest has not confirmed it yet.
  pendingResize = false;

  constructor(readonly element: HTMLElement, private sendInput: (data: string) => void, fontSize = 15) {
    this.term = new Terminal({
      fontSize,
      fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
      // A blinking cursor redraws twice a second: ~20% of a core in an idle
      // tab (docs/web.md, "Idle CPU").
      cursorBlink: false,
      convertEol: false,
      scrollback: 5000,
      // The unicode11 addon's widths need the proposed API.
      allowProposedApi: true,
      theme: { background: "#101418", foreground: "#e6e6e6" },
    });
    this.term.loadAddon(this.fit);
    // psql lays out tables with its own wcwidth (Unicode 15: emoji and East
    // Asian wide characters take two columns); xterm's default (Unicode 6)
    // gives most emoji one column, and the table borders after them move.
    this.term.loadAddon(new Unicode11Addon());
    this.term.unicode.activeVersion = "11";
    this.term.open(element);
    this.term.onData(d => {
      this.idle = false;
      this.sendInput(d);
    });
    this.term.attachCustomKeyEventHandler(e => this.onKey(e));
    this.term.onSelectionChange(() => {
      if (this.copyOnSelect && this.term.hasSelection()) void this.copy(this.term.getSelection());
    });
    this.term.textarea?.setAttribute("aria-label", "psql terminal. Esc then Tab leaves it.");
    this.observer = new ResizeObserver(() => this.scheduleFit());
    this.observer.observe(element);
    this.scheduleFit();
  }

  // onKey handles what a terminal does before the application sees a key:
  // Ctrl+C with text selected copies it (and sends no ^C), Ctrl+Shift+C
  // copies, Ctrl+Shift+V pastes (the browser's paste event, which xterm
  // takes), and Esc then Tab moves the focus out of the terminal.
  private onKey(e: KeyboardEvent): boolean {
    if (e.type !== "keydown") return !(e.ctrlKey && e.shiftKey && /^[cv]$/i.test(e.key));
    if (this.escPending) {
      clearTimeout(this.escTimer);
      this.escPending = false;
      if (e.key === "Tab") {
        e.preventDefault();
        this.leave(e.shiftKey);
        return false;
      }
      this.idle = false;
      this.sendInput("\x1b"); // before this key, as it was typed
    }
    if (e.key === "Escape" && !e.ctrlKey && !e.altKey && !e.metaKey && !e.shiftKey) {
      this.escPending = true;
      this.escTimer = window.setTimeout(() => {
        this.escPending = false;
        this.idle = false;
        this.sendInput("\x1b");
      }, ESC_TAB_MS);
      return false;
    }
    if (e.ctrlKey && !e.altKey && !e.metaKey && e.key.toLowerCase() === "c" && (e.shiftKey || this.term.hasSelection())) {
      e.preventDefault();
      const text = this.term.getSelection();
      if (text) void this.copy(text);
      if (!e.shiftKey) this.term.clearSelection();
      return false;
    }
    if (e.ctrlKey && e.shiftKey && !e.altKey && e.key.toLowerCase() === "v") return false; // the browser pastes
    return true;
  }

  private async copy(text: string): Promise<void> {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // No clipboard API (an insecure origin) or no permission: the old way.
      const ta = document.createElement("textarea");
      ta.value = text;
      ta.style.position = "fixed";
      ta.style.opacity = "0";
      document.body.appendChild(ta);
      ta.select();
      const ok = document.execCommand("copy");
      ta.remove();
      this.term.focus();
      if (!ok) return;
    }
    this.onCopy?.(text);
  }

  // leave moves the focus to the next (or previous) control of the page.
  private leave(back: boolean): void {
    const sel = 'a[href], button:not([disabled]), input:not([disabled]), select:not([disabled]), textarea:not([disabled]), summary, [tabindex]:not([tabindex="-1"])';
    const all = Array.from(document.querySelectorAll<HTMLElement>(sel)).filter(
      el => !this.element.contains(el) && el.getClientRects().length > 0 && !el.closest("[hidden]"),
    );
    const after = all.filter(el => this.element.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING);
    const before = all.filter(el => this.element.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_PRECEDING);
    const target = back ? before[before.length - 1] : after[0];
    if (target) target.focus();
    else this.term.blur();
  }

  setFontSize(px: number): void {
    this.term.options.fontSize = px;
    this.scheduleFit();
  }

  // refit fits the terminal to its element now (the visible area changed).
  refit(): void {
    this.scheduleFit(0);
  }

  private scheduleFit(delay = 150): void {
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
    }, delay);
  }

  // output shows guest output.
  output(text: string): void {
    this.guestSpoke = true;
    this.tail = (this.tail + text).slice(-200);
    this.idle = PROMPT.test(this.tail);
    this.term.write(text);
  }

  // note writes a line of the page's own (dim) into the terminal, e.g.
  // boot progress, but only while the guest has printed nothing: after
  // that it would land in psql's output, after its prompt (a full boot's
  // 15-second progress note once did, in CI).
  note(text: string): void {
    if (this.guestSpoke) return;
    this.term.write(`\x1b[2m${text}\x1b[0m\r\n`);
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
    this.guestSpoke = false;
    this.tail = "";
    this.idle = false;
  }

  focus(): void {
    this.term.focus();
  }

  dispose(): void {
    clearTimeout(this.escTimer);
    this.observer.disconnect();
    this.term.dispose();
  }
}
