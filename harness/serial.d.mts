// Types of serial.mjs for the browser app's TypeScript.
import type { ChannelWriter } from "./virtio-console.mjs";
export function serialWriter(emulator: () => any, port: number, chunk?: number): ChannelWriter;
