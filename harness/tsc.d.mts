// Types of tsc.mjs for the browser app's TypeScript.
export function keepTSCOnRestore(emulator: any): boolean;
