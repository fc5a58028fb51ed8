import type { PlannedTensor } from "../adapters/plan.js";
import { throwIfAborted } from "../errors.js";
import type { Checkpoint } from "../safetensors/checkpoint.js";
import { equalBytes } from "../safetensors/encode.js";
import { type DType, isFloat, itemSize } from "../tensor/dtype.js";
import { toFloat64 } from "../tensor/cast.js";
import { type Tensor, type TensorInfo, sameShape } from "../tensor/tensor.js";
import { Scratch } from "../tensor/transfer.js";
import { COMPONENTS, type Component, componentOf } from "./components.js";
import { checkpointSource } from "./checkpoint-source.js";
import { type Layout, requireLayout } from "./layout.js";
import { loadPlanInput, planConversion } from "./planner.js";
import { BufferPool } from "./buffer-pool.js";
import { type TensorSource, buildTensor } from "./stream.js";

export interface ComponentCheck {
  readonly component: Component;
  readonly tensors: number;
  /** Bit for bit equal. */
  readonly exact: number;
  /** Same values in a wider dtype (a documented upcast: Mamba A_log/D/dt_bias, the routing bias). */
  readonly upcast: number;
  readonly differ: number;
  /** In the checkpoint but not produced by the round trip (dropped by a rule). */
  readonly missing: number;
}

export interface VerifyReport {
  readonly dir: string;
  readonly path: readonly [Layout, Layout, Layout];
  readonly tensors: number;
  readonly bytes: number;
  readonly components: readonly ComponentCheck[];
  /** The first differences, one line each. */
  readonly problems: readonly string[];
  readonly exact: boolean;
  readonly seconds: number;
}

export interface VerifyOptions {
  readonly signal?: AbortSignal;
  readonly onProgress?: (bytesDone: number, tensorsDone: number, bytesTotal: number, tensorsTotal: number) => void;
}

const COMPARE_CHUNK = 16 * 1024 * 1024;
const MAX_PROBLEMS = 20;

/** Whether two runs of float elements hold the same values (any NaN equal to any NaN). */
function sameValues(a: Uint8Array, aType: DType, b: Uint8Array, bType: DType): boolean {
  const x = toFloat64(a, aType);
  const y = toFloat64(b, bType);
  for (let i = 0; i < x.length; i++) if (!(x[i] === y[i] || (Number.isNaN(x[i]) && Number.isNaN(y[i])))) return false;
  return true;
}

/**
 * Prove that converting a checkpoint to the other layout and back returns every tensor bit for bit,
 * without writing the converted copy anywhere: the intermediate tensors are built in memory one at a
 * time, and each final tensor is compared with the original as it is read back in chunks.
 */
export async function verifyRoundTrip(ckpt: Checkpoint, options: VerifyOptions = {}): Promise<VerifyReport> {
  const started = performance.now();
  const dir = ckpt.where;
  const configFile = await ckpt.readConfig(options.signal);
  const input = await loadPlanInput(ckpt, options.signal);
  const probe = requireLayout(input.headers.keys(), input.where);
  const there: Layout = probe === "hf" ? "native" : "hf";
  const forward = planConversion(input, configFile, { to: there });
  const middle = new Map<string, PlannedTensor>(forward.tensors.map((t) => [t.name, t]));
  const middleHeaders = new Map<string, TensorInfo>(forward.tensors.map((t) => [t.name, { dtype: t.dtype, shape: t.shape }]));
  const backward = planConversion({ headers: middleHeaders, where: `${dir} (converted in memory)` }, forward.outputConfig ?? configFile, { to: probe });

  const disk = checkpointSource(ckpt.tensors);
  const pool = new BufferPool();
  const scratch = new Scratch(pool);
  let held = new Map<string, Tensor>();
  const heldData = (name: string): Uint8Array => {
    const t = held.get(name);
    if (!t) throw new Error(`internal: intermediate ${name} not built`);
    return t.data;
  };
  const intermediate: TensorSource = {
    info: (name) => middleHeaders.get(name)!,
    read: async (name, offset, buf) => buf.set(heldData(name).subarray(offset, offset + buf.byteLength)),
    view: (name, offset, length) => heldData(name).subarray(offset, offset + length),
  };

  // Finals that read the same intermediate run back to back, so each intermediate is built once.
  const order = new Map(forward.tensors.map((t, i) => [t.name, i]));
  const finals = [...backward.tensors].sort((a, b) => (order.get(a.pieces[0]?.src ?? "") ?? 0) - (order.get(b.pieces[0]?.src ?? "") ?? 0));
  const counts = new Map<Component, { tensors: number; exact: number; upcast: number; differ: number; missing: number }>();
  const bump = (name: string, key: "exact" | "upcast" | "differ" | "missing"): void => {
    const c = componentOf(name);
    const entry = counts.get(c) ?? { tensors: 0, exact: 0, upcast: 0, differ: 0, missing: 0 };
    entry.tensors++;
    entry[key]++;
    counts.set(c, entry);
  };
  const problems: string[] = [];
  const note = (line: string): void => {
    if (problems.length < MAX_PROBLEMS) problems.push(line);
  };
  const bytesTotal = ckpt.totalBytes;
  let bytesDone = 0;
  let tensorsDone = 0;

  /** Compare one round-tripped tensor with the checkpoint's, reading the original back in chunks. */
  async function compareWithOriginal(name: string, built: Tensor): Promise<void> {
    const original = ckpt.tensors.get(name);
    if (!original) {
      note(`${name}: produced by the round trip but not in the checkpoint`);
      bump(name, "differ");
      return;
    }
    const size = original.entry.end - original.entry.begin;
    const exact = original.dtype === built.dtype;
    // Besides an exact copy, only a float widened by rule can come back with the same values.
    const widened = isFloat(original.dtype) && isFloat(built.dtype) && itemSize(built.dtype) > itemSize(original.dtype);
    let same = sameShape(original.shape, built.shape) && (exact || widened);
    if (same) {
      // The original is read back in chunks, whole elements each, and compared with its part of `built`.
      const inItem = itemSize(original.dtype);
      const outItem = itemSize(built.dtype);
      const step = Math.max(inItem, COMPARE_CHUNK - (COMPARE_CHUNK % inItem));
      const chunk = pool.acquire(Math.min(step, size));
      try {
        for (let at = 0; at < size && same; at += step) {
          const part = chunk.subarray(0, Math.min(step, size - at));
          await disk.read(name, at, part, options.signal);
          const mine = built.data.subarray((at / inItem) * outItem, ((at + part.byteLength) / inItem) * outItem);
          same = exact ? equalBytes(part, mine) : sameValues(part, original.dtype, mine, built.dtype);
        }
      } finally {
        pool.release(chunk);
      }
    }
    if (same && exact) bump(name, "exact");
    else if (same) {
      bump(name, "upcast");
      note(`${name}: ${original.dtype} came back as ${built.dtype} with the same values (upcast by rule)`);
    } else {
      bump(name, "differ");
      note(
        exact && sameShape(original.shape, built.shape)
          ? `${name}: bytes differ after the round trip`
          : `${name}: ${original.dtype}[${original.shape.join(", ")}] came back as ${built.dtype}[${built.shape.join(", ")}]`,
      );
    }
    bytesDone += size;
    options.onProgress?.(bytesDone, ++tensorsDone, bytesTotal, ckpt.tensors.size);
  }

  // Every buffer goes back to the pool, on failure too: a library caller's process lives on.
  try {
    for (const final of finals) {
      throwIfAborted(options.signal);
      const needed = new Set(final.pieces.map((p) => p.src));
      const next = new Map<string, Tensor>();
      try {
        for (const name of needed) next.set(name, held.get(name) ?? (await buildTensor(middle.get(name)!, disk, pool, scratch)));
      } catch (e) {
        for (const [name, t] of next) if (!held.has(name)) pool.release(t.data);
        throw e;
      }
      for (const [name, t] of held) if (!next.has(name)) pool.release(t.data);
      held = next;
      const built = await buildTensor(final, intermediate, pool, scratch);
      try {
        await compareWithOriginal(final.name, built);
      } finally {
        pool.release(built.data);
      }
    }
  } finally {
    for (const t of held.values()) pool.release(t.data);
    held = new Map();
    scratch.release();
  }

  const produced = new Set(backward.tensors.map((t) => t.name));
  for (const name of ckpt.tensors.keys()) {
    if (produced.has(name)) continue;
    bump(name, "missing");
    note(`${name}: lost in the round trip (a conversion rule drops it)`);
  }
  const components = COMPONENTS.filter((c) => counts.has(c)).map((component) => ({ component, ...counts.get(component)! }));
  const exact = components.every((c) => c.exact === c.tensors);
  return {
    dir,
    path: [probe, there, probe],
    tensors: ckpt.tensors.size,
    bytes: bytesTotal,
    components,
    problems,
    exact,
    seconds: (performance.now() - started) / 1000,
  };
}
