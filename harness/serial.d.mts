// Types of serial.mjs for the browser app's TypeScript.
export function serialWriter(emulator: () => any, port: number, chunk?: number): (bytes: Uint8Array) => void;
