import { BufferPool } from "../../src/convert/buffer-pool.js";
import { inArena, kernelArena } from "../../src/tensor/wasm/kernels.js";

/** Whether the whole kernels' arena is free again: only then does one buffer of its full size fit in it. */
export function arenaAllFree(): boolean {
  const size = kernelArena(0)?.byteLength;
  if (size === undefined) return true;
  const pool = new BufferPool();
  const whole = pool.acquire(size);
  const fits = inArena(whole.buffer);
  pool.release(whole);
  return fits;
}
