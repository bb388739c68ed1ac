// Types of yield.mjs for the browser app's TypeScript.
export function wholeMillisecondWaits(emulator: any): boolean;
