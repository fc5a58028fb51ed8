import type { MessagePort } from "node:worker_threads";
import { applyDeltaRange } from "../lora/delta-range.js";
import type { DeltaHelper, DeltaJob } from "../lora/delta.js";
import { inArena } from "../tensor/wasm/kernels.js";
import { KERNELS_WASM } from "../tensor/wasm/kernels.generated.js";
import { JobThread } from "./job-thread.js";

/**
 * The helper thread's whole program, run as CommonJS source in a worker (as the writer thread's is), with
 * `applyDeltaRange` handed in as source text so both threads compute deltas with one function. It runs
 * its own instance of the kernels: their memory is the module's own, so it copies a job's factors (once
 * per region) and weights into it, computes, and copies the weights back into the shared arena. Between
 * jobs it sleeps on a shared counter the main thread bumps after each batch it posts.
 */
function deltaThreadMain(require: (id: string) => unknown, apply: typeof applyDeltaRange): void {
  type Job = { region: number; left: number; leftBytes: number; right: number; rightBytes: number; w: number; g0: number; g1: number; cols: number; rank: number; scale: number; dtype: "BF16" | "F32" };
  type Kernels = {
    memory: WebAssembly.Memory;
    lora_matmul_f32(l: number, ls: number, r: number, rs: number, o: number, os: number, rows: number, cols: number, rank: number, s: number): void;
    lora_add_bf16(w: number, d: number, n: number): void;
    lora_add_f32(w: number, d: number, n: number): void;
  };
  const threads = require("node:worker_threads") as typeof import("node:worker_threads");
  const { arena, wasm, signal, jobs } = threads.workerData as { arena: SharedArrayBuffer; wasm: string; signal: Int32Array; jobs: MessagePort };
  const e = new WebAssembly.Instance(new WebAssembly.Module(Buffer.from(wasm, "base64"))).exports as unknown as Kernels;
  const shared = new Uint8Array(arena);
  const TILE = 64 * 1024;
  const align = (n: number): number => Math.ceil(n / 64) * 64;
  let own = new Uint8Array(e.memory.buffer);
  const ensure = (bytes: number): void => {
    const have = e.memory.buffer.byteLength;
    if (bytes > have) e.memory.grow(Math.ceil((bytes - have) / 65536));
    own = new Uint8Array(e.memory.buffer);
  };
  const kernels = {
    matmul: (l: Uint8Array, ls: number, r: Uint8Array, rs: number, o: Uint8Array, os: number, rows: number, cols: number, rank: number, s: number): void =>
      e.lora_matmul_f32(l.byteOffset, ls, r.byteOffset, rs, o.byteOffset, os, rows, cols, rank, Math.fround(s)),
    add: (dtype: "BF16" | "F16" | "F32", w: Uint8Array, d: Uint8Array, n: number): void =>
      dtype === "BF16" ? e.lora_add_bf16(w.byteOffset, d.byteOffset, n) : e.lora_add_f32(w.byteOffset, d.byteOffset, n),
  };
  let cached = -1;
  let seen = 0;
  for (;;) {
    const message = threads.receiveMessageOnPort(jobs);
    if (!message) {
      const now = Atomics.load(signal, 0);
      if (now === seen) Atomics.wait(signal, 0, now);
      seen = now;
      continue;
    }
    const batch = message.message as { id: number; jobs: Job[] };
    try {
      for (const j of batch.jobs) {
        const wBytes = (j.g1 - j.g0) * (j.dtype === "F32" ? 4 : 2);
        const leftAt = align(TILE * 4);
        const rightAt = leftAt + align(j.leftBytes);
        const wAt = rightAt + align(j.rightBytes);
        ensure(wAt + wBytes);
        if (j.region !== cached) {
          own.set(shared.subarray(j.left, j.left + j.leftBytes), leftAt);
          own.set(shared.subarray(j.right, j.right + j.rightBytes), rightAt);
          cached = j.region;
        }
        own.set(shared.subarray(j.w, j.w + wBytes), wAt);
        apply(
          kernels,
          own.subarray(leftAt, leftAt + j.leftBytes),
          own.subarray(rightAt, rightAt + j.rightBytes),
          own.subarray(0, TILE * 4),
          TILE,
          own.subarray(wAt, wAt + wBytes),
          j.g0,
          j.g1,
          j.cols,
          j.rank,
          j.scale,
          j.dtype,
        );
        shared.set(own.subarray(wAt, wAt + wBytes), j.w);
      }
      threads.parentPort!.postMessage({ id: batch.id });
    } catch (err) {
      threads.parentPort!.postMessage({ id: batch.id, error: { message: (err as Error).message } });
    }
  }
}

/**
 * A thread on the other core that computes half of each chunk's LoRA deltas while the main thread computes
 * the other half. Measured on the bench merge (rank 16 on every linear layer and expert): see bench/lora.ts.
 */
export class DeltaThread implements DeltaHelper {
  private readonly thread: JobThread;

  constructor(readonly arena: SharedArrayBuffer) {
    this.thread = new JobThread(
      `(${deltaThreadMain.toString()})(require, ${applyDeltaRange.toString()})`,
      { arena, wasm: KERNELS_WASM },
      "delta thread",
      (f) => new Error(`internal: the delta thread failed: ${f.message}`),
    );
  }

  get alive(): boolean {
    return this.thread.alive;
  }

  run(jobs: readonly DeltaJob[]): Promise<void> {
    for (const j of jobs) {
      if (j.left.buffer !== this.arena || j.right.buffer !== this.arena || j.w.buffer !== this.arena) {
        return Promise.reject(new Error("internal: a delta job outside the kernels' arena"));
      }
    }
    return this.thread.post({
      jobs: jobs.map((j) => ({
        region: j.region,
        left: j.left.byteOffset,
        leftBytes: j.left.byteLength,
        right: j.right.byteOffset,
        rightBytes: j.right.byteLength,
        w: j.w.byteOffset,
        g0: j.g0,
        g1: j.g1,
        cols: j.cols,
        rank: j.rank,
        scale: j.scale,
        dtype: j.dtype,
      })),
    });
  }
}

let shared: DeltaThread | null | undefined;

/** The process's delta thread for the kernels' arena, started on first use; undefined without one. */
export function deltaThreadFor(memory: ArrayBufferLike | undefined): DeltaThread | undefined {
  if (!(memory instanceof SharedArrayBuffer) || !inArena(memory)) return undefined;
  if (shared === undefined || (shared !== null && !shared.alive)) {
    try {
      shared = new DeltaThread(memory);
    } catch {
      shared = null;
    }
  }
  return shared ?? undefined;
}
