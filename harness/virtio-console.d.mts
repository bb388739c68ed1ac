// Types of virtio-console.mjs for the browser app's TypeScript.
export interface ChannelWriter {
  (bytes: Uint8Array): void;
  reset(): void;
}
export function virtioConsoleWriter(emulator: () => any, port: number): ChannelWriter;
