// Types of lines.mjs for the browser app's TypeScript.
export interface LineCollector {
  (bytes: Uint8Array): void;
  reset(): void;
}
export function lineCollector(onLine: (line: string) => void): LineCollector;
