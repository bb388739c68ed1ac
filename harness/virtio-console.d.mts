// Types of virtio-console.mjs for the browser app's TypeScript.
export function virtioConsoleWriter(emulator: () => any, port: number): (bytes: Uint8Array) => void;
