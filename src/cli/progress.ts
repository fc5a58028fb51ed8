import type cliProgress from "cli-progress";
import { createRequire } from "node:module";
import { formatBytes, formatCount, formatRate } from "./format.js";

/** Bars on the terminal now, so an interrupt can give the terminal back its cursor and its line. */
const showing = new Set<Progress>();

/** Stop every bar showing (an interrupt's last words then start on a line of their own). */
export function stopAllProgress(): void {
  for (const p of [...showing]) p.stop();
}

/**
 * A progress bar on stderr when it is a terminal: bytes and tensors done, rate and ETA. When output is
 * piped (or --quiet/--json) it does nothing at all.
 */
export class Progress {
  private bar: cliProgress.SingleBar | undefined;
  private readonly started = performance.now();

  constructor(
    enabled: boolean,
    label: string,
    private readonly totalBytes: number,
    private readonly totalTensors?: number,
  ) {
    if (!enabled || !process.stderr.isTTY) return;
    // Loaded only for a terminal: piped and scripted runs never pay for it.
    const bars = createRequire(import.meta.url)("cli-progress") as typeof cliProgress;
    const tensors = totalTensors !== undefined ? " | {tensors} tensors" : "";
    this.bar = new bars.SingleBar(
      {
        format: `${label} [{bar}] {percentage}% | {done}/{size}${tensors} | {rate} | ETA {eta_formatted}`,
        stream: process.stderr,
        hideCursor: true,
        clearOnComplete: true,
        barsize: 24,
        etaBuffer: 20,
        fps: 8,
      },
      bars.Presets.shades_classic,
    );
    this.bar.start(Math.max(totalBytes, 1), 0, this.payload(0, 0));
    showing.add(this);
  }

  private payload(bytes: number, tensors: number): Record<string, string> {
    return {
      done: formatBytes(bytes),
      size: formatBytes(this.totalBytes),
      tensors: `${formatCount(tensors)}/${formatCount(this.totalTensors ?? 0)}`,
      rate: formatRate(bytes, (performance.now() - this.started) / 1000),
    };
  }

  update(bytes: number, tensors = 0): void {
    this.bar?.update(bytes, this.payload(bytes, tensors));
  }

  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
    showing.delete(this);
  }
}
