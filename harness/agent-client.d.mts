// Types of agent-client.mjs for the browser app's TypeScript.
import type { ChannelWriter } from "./virtio-console.mjs";

export const CLIENT_PROTOCOL: number;
export const MAX_LINE: number;
export const PIECE_CHARS: number;
export function protocolOf(ev: { version?: string; protocol?: number }): number;
export function splitSQL(sql: string, n?: number): string[];

export interface ColumnInfo {
  name: string;
  type: string;
  type_oid?: number;
}

// Judge decides what a request past its limit does next: "wait" or a
// reason to give up. waitedMs counts from the request's send.
export type Judge = (op: string, waitedMs: number, limitMs: number) => "wait" | string;

export type RowsCallback = (statement: number, columns: ColumnInfo[] | null, rows: (string | null)[][]) => void;

export interface RequestOptions {
  timeoutMs?: number;
  judged?: boolean;
  stream?: boolean | { chunkBytes?: number; maxBytes?: number };
  onRows?: RowsCallback | null;
  keepRows?: boolean;
}

export interface RowBatch {
  statement: number;
  columns: ColumnInfo[] | null;
  rows: (string | null)[][];
}

export class AgentClient {
  constructor(write: ChannelWriter, options?: { onReady?: (ev: any) => void });
  version: string;
  protocol: number;
  ready: boolean;
  noise: string[];
  judge: Judge | null;
  lastAnswer: number;
  dead: string;
  readonly busy: boolean;
  feed(bytes: Uint8Array): void;
  reset(why: string): void;
  failAll(why: string): void;
  revive(): void;
  request(req: Record<string, unknown>, options?: RequestOptions): Promise<any>;
  call(req: Record<string, unknown>, options?: RequestOptions): Promise<any>;
  rows(req: Record<string, unknown>, options?: RequestOptions): AsyncGenerator<RowBatch, any, void>;
  waitReady(timeoutMs: number, restored: boolean): Promise<void>;
}
