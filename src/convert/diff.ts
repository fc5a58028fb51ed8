import { InputError, throwIfAborted } from "../errors.js";
import type { Checkpoint, StoredTensor } from "../safetensors/checkpoint.js";
import { equalBytes } from "../safetensors/encode.js";
import { toFloat64 } from "../tensor/cast.js";
import { type DType, isFloat, itemSize } from "../tensor/dtype.js";
import { type TensorInfo, byteLength, formatShape, numel, sameShape } from "../tensor/tensor.js";
import { checkpointSource } from "./checkpoint-source.js";
import { type Layout, detectLayout, layoutName, layoutShortName } from "./layout.js";
import { loadPlanInput, losslessExpertDType, planConversion } from "./planner.js";
import { type TensorSink, streamTensors } from "./stream.js";

export type DifferenceKind = "only-a" | "only-b" | "dtype" | "shape" | "content";

export interface TensorDifference {
  readonly name: string;
  readonly kind: DifferenceKind;
  readonly detail: string;
  /** Largest |a − b| over the elements (content differences of equal dtype). */
  readonly maxAbsDiff?: number;
  readonly differingElements?: number;
}

export interface DiffReport {
  readonly a: string;
  readonly b: string;
  readonly tensorsA: number;
  readonly tensorsB: number;
  /** Tensors equal in name, dtype, shape and bytes. */
  readonly same: number;
  readonly differences: readonly TensorDifference[];
  /** sha256 of each compared tensor's bytes, in A and in B; empty unless asked for. */
  readonly hashes: ReadonlyMap<string, { readonly a: string; readonly b: string }>;
  readonly identical: boolean;
  /** Set when the checkpoints are in different layouts: B was converted into A's, in memory, to be compared. */
  readonly converted?: { readonly from: Layout; readonly to: Layout };
  readonly seconds: number;
}

/** An incremental hash of a tensor's bytes (the Node entry gives sha256). */
export interface Hasher {
  update(bytes: Uint8Array): void;
  digest(): string;
}

export interface CompareOptions {
  /** Hash every compared tensor with hashers from here (reported in `hashes`); the comparison itself does not need it. */
  readonly hasher?: () => Hasher;
  readonly signal?: AbortSignal;
  readonly onProgress?: (bytesDone: number, bytesTotal: number) => void;
}

const CHUNK = 16 * 1024 * 1024;

/** Elementwise |a − b| statistics of two equal-dtype chunks; integers compare exactly as BigInt where needed. */
function chunkDelta(a: Uint8Array, b: Uint8Array, dtype: DType): { max: number; count: number } {
  const size = itemSize(dtype);
  const n = a.byteLength / size;
  let max = 0;
  let count = 0;
  if (isFloat(dtype)) {
    const wa = toFloat64(a, dtype);
    const wb = toFloat64(b, dtype);
    for (let i = 0; i < n; i++) {
      const x = wa[i]!;
      const y = wb[i]!;
      // Equal values (a NaN payload difference included) are not counted; -0 against 0 is, with distance 0.
      if (Object.is(x, y) || (Number.isNaN(x) && Number.isNaN(y))) continue;
      const d = Number.isNaN(x) || Number.isNaN(y) ? Number.POSITIVE_INFINITY : Math.abs(x - y);
      count++;
      if (d > max || Number.isNaN(d)) max = d;
    }
    return { max, count };
  }
  const view = (u: Uint8Array): DataView => new DataView(u.buffer, u.byteOffset, u.byteLength);
  const va = view(a);
  const vb = view(b);
  for (let i = 0; i < n; i++) {
    let x: number;
    let y: number;
    switch (size) {
      case 1:
        x = dtype === "I8" ? va.getInt8(i) : va.getUint8(i);
        y = dtype === "I8" ? vb.getInt8(i) : vb.getUint8(i);
        break;
      case 2:
        x = dtype === "I16" ? va.getInt16(2 * i, true) : va.getUint16(2 * i, true);
        y = dtype === "I16" ? vb.getInt16(2 * i, true) : vb.getUint16(2 * i, true);
        break;
      case 4:
        x = dtype === "I32" ? va.getInt32(4 * i, true) : va.getUint32(4 * i, true);
        y = dtype === "I32" ? vb.getInt32(4 * i, true) : vb.getUint32(4 * i, true);
        break;
      default: {
        // 64-bit integers: the distance is exact in BigInt, then reported as a number.
        const p = dtype === "I64" ? va.getBigInt64(8 * i, true) : va.getBigUint64(8 * i, true);
        const q = dtype === "I64" ? vb.getBigInt64(8 * i, true) : vb.getBigUint64(8 * i, true);
        x = 0;
        y = Number(p > q ? p - q : q - p);
      }
    }
    if (x !== y) {
      count++;
      max = Math.max(max, Math.abs(x - y));
    }
  }
  return { max, count };
}

interface Pair {
  readonly name: string;
  readonly a: StoredTensor;
  readonly b: StoredTensor;
}

interface PairChunk {
  readonly pair: Pair;
  readonly a: Uint8Array;
  readonly b: Uint8Array;
  readonly last: boolean;
}

/**
 * The bytes of every pair of tensors, chunk by chunk, from two reused double buffers: the next chunk is
 * read while the caller hashes and compares this one (which it must finish before asking for the next).
 */
async function* pairedChunks(pairs: readonly Pair[], signal?: AbortSignal): AsyncGenerator<PairChunk> {
  const slots = [0, 1].map(() => ({ a: new Uint8Array(new ArrayBuffer(CHUNK)), b: new Uint8Array(new ArrayBuffer(CHUNK)) }));
  const jobs = function* () {
    for (const pair of pairs) {
      const size = pair.a.entry.end - pair.a.entry.begin;
      for (let at = 0; at < size || (at === 0 && size === 0); at += CHUNK) {
        const len = Math.min(CHUNK, size - at);
        yield { pair, at, len, last: at + len >= size };
        if (size === 0) break;
      }
    }
  };
  let k = 0;
  const start = (job: { pair: Pair; at: number; len: number; last: boolean }) => {
    const slot = slots[k++ % 2]!;
    const a = slot.a.subarray(0, job.len);
    const b = slot.b.subarray(0, job.len);
    // Both reads end before a failure is reported: the caller closes the files next.
    const done = Promise.allSettled([
      job.pair.a.file.readRange(job.pair.a.entry, job.at, a, signal),
      job.pair.b.file.readRange(job.pair.b.entry, job.at, b, signal),
    ]).then((results) => {
      for (const r of results) if (r.status === "rejected") throw r.reason;
      return { pair: job.pair, a, b, last: job.last };
    });
    done.catch(() => undefined);
    return done;
  };
  const it = jobs();
  let next = it.next();
  let pending = next.done ? undefined : start(next.value);
  while (pending) {
    const ready = await pending;
    next = it.next();
    pending = next.done ? undefined : start(next.value);
    yield ready;
  }
}

/**
 * Names, dtypes and shapes of A's tensors against B's: the differences, and the pairs whose bytes are to
 * be compared, in name order.
 */
function classify<T extends TensorInfo>(
  a: ReadonlyMap<string, StoredTensor>,
  b: ReadonlyMap<string, T>,
  pathA: string,
  pathB: string,
): { differences: TensorDifference[]; pairs: { name: string; a: StoredTensor; b: T }[] } {
  const differences: TensorDifference[] = [];
  const pairs: { name: string; a: StoredTensor; b: T }[] = [];
  const names = [...new Set([...a.keys(), ...b.keys()])].sort();
  for (const name of names) {
    const ta = a.get(name);
    const tb = b.get(name);
    if (!tb) differences.push({ name, kind: "only-a", detail: `only in ${pathA} (${ta!.dtype}${formatShape(ta!.shape)})` });
    else if (!ta) differences.push({ name, kind: "only-b", detail: `only in ${pathB} (${tb.dtype}${formatShape(tb.shape)})` });
    else if (ta.dtype !== tb.dtype) differences.push({ name, kind: "dtype", detail: `dtype ${ta.dtype} vs ${tb.dtype}` });
    else if (!sameShape(ta.shape, tb.shape)) {
      differences.push({ name, kind: "shape", detail: `shape ${formatShape(ta.shape)} vs ${formatShape(tb.shape)}` });
    } else pairs.push({ name, a: ta, b: tb });
  }
  return { differences, pairs };
}

/** How one tensor's bytes compared: equal so far, and the statistics of the elements that are not. */
class TensorComparison {
  private delta = { max: 0, count: 0 };
  private equal = true;
  private readonly ha: Hasher | undefined;
  private readonly hb: Hasher | undefined;

  constructor(
    readonly name: string,
    private readonly info: TensorInfo,
    hasher: (() => Hasher) | undefined,
  ) {
    this.ha = hasher?.();
    this.hb = hasher?.();
  }

  add(a: Uint8Array, b: Uint8Array): void {
    this.ha?.update(a);
    this.hb?.update(b);
    if (equalBytes(a, b)) return;
    this.equal = false;
    const d = chunkDelta(a, b, this.info.dtype);
    this.delta = { max: Math.max(this.delta.max, d.max), count: this.delta.count + d.count };
  }

  /** The tensor's difference (undefined when equal), and its hashes when asked for. */
  finish(): { difference?: TensorDifference; hashes?: { a: string; b: string } } {
    const hashes = this.ha && this.hb ? { a: this.ha.digest(), b: this.hb.digest() } : undefined;
    const difference: TensorDifference | undefined = this.equal
      ? undefined
      : {
          name: this.name,
          kind: "content",
          detail: `${this.delta.count} of ${numel(this.info.shape)} elements differ, max |a - b| = ${this.delta.max}`,
          maxAbsDiff: this.delta.max,
          differingElements: this.delta.count,
        };
    return { ...(difference ? { difference } : {}), ...(hashes ? { hashes } : {}) };
  }
}

/**
 * Compare two checkpoints tensor by tensor, streaming their bytes. When they are in different layouts, B
 * is converted into A's layout tensor by tensor in memory (nothing is written) by the same plan `convert`
 * follows, and its tensors compared with A's.
 */
export async function compareCheckpoints(a: Checkpoint, b: Checkpoint, options: CompareOptions = {}): Promise<DiffReport> {
  const started = performance.now();
  const pathA = a.where;
  const pathB = b.where;
  const la = detectLayout(a.tensors.keys()).layout;
  const lb = detectLayout(b.tensors.keys()).layout;
  if (la && lb && la !== lb) return compareAcrossLayouts(a, b, la, lb, options, started);
  const hashes = new Map<string, { a: string; b: string }>();
  let same = 0;
  let bytesDone = 0;
  let bytesTotal = 0;
  for (const t of a.tensors.values()) if (b.tensors.has(t.name)) bytesTotal += t.entry.end - t.entry.begin;
  const { differences, pairs } = classify(a.tensors, b.tensors, pathA, pathB);
  let current: TensorComparison | undefined;
  for await (const c of pairedChunks(pairs, options.signal)) {
    current ??= new TensorComparison(c.pair.name, c.pair.a, options.hasher);
    current.add(c.a, c.b);
    bytesDone += c.a.byteLength;
    throwIfAborted(options.signal);
    if (!c.last) continue;
    const r = current.finish();
    current = undefined;
    if (r.hashes) hashes.set(c.pair.name, r.hashes);
    if (r.difference) differences.push(r.difference);
    else same++;
    options.onProgress?.(bytesDone, bytesTotal);
  }
  differences.sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
  return {
    a: pathA,
    b: pathB,
    tensorsA: a.tensors.size,
    tensorsB: b.tensors.size,
    same,
    differences,
    hashes,
    identical: differences.length === 0,
    seconds: (performance.now() - started) / 1000,
  };
}

/** B converted into A's layout chunk by chunk, each chunk compared with A's bytes as it is built. */
async function compareAcrossLayouts(a: Checkpoint, b: Checkpoint, la: Layout, lb: Layout, options: CompareOptions, started: number): Promise<DiffReport> {
  if (b.folder === undefined) {
    throw new InputError(`${b.where} is in the ${layoutName(lb)} layout but ${a.where} is ${layoutName(la)}; converting it to compare needs its folder (with config.json), not a single file`);
  }
  const config = await b.readConfig(options.signal);
  // Grouped in a dtype that holds B's experts exactly: rounding them to convert's default bf16 could make
  // float32 experts that differ look the same as A's.
  const dtype = la === "native" ? losslessExpertDType(b.tensors.values()) : undefined;
  const plan = planConversion(await loadPlanInput(b, options.signal), config, { to: la, ...(dtype !== undefined ? { dtype } : {}) });
  const converted = new Map(plan.tensors.map((t) => [t.name, t]));
  const { differences, pairs } = classify(a.tensors, converted, a.where, `${b.where} (converted to ${layoutShortName(la)})`);
  // What the conversion leaves out of B (a gate_proj of ungated experts, …) is a difference too.
  const read = new Set(plan.tensors.flatMap((t) => t.pieces.map((p) => p.src)));
  for (const [name, t] of b.tensors) {
    if (read.has(name)) continue;
    differences.push({ name, kind: "only-b", detail: `only in ${b.where} (${t.dtype}${formatShape(t.shape)}), which the conversion to ${layoutShortName(la)} leaves out` });
  }
  const hashes = new Map<string, { a: string; b: string }>();
  const bytesTotal = pairs.reduce((n, p) => n + byteLength(p.b), 0);
  let bytesDone = 0;
  let same = 0;
  const open = new Map<string, { cmp: TensorComparison; seen: number; size: number }>();
  for (const p of pairs) open.set(p.name, { cmp: new TensorComparison(p.name, p.a, options.hasher), seen: 0, size: byteLength(p.b) });
  const finish = (name: string): void => {
    const entry = open.get(name)!;
    open.delete(name);
    const r = entry.cmp.finish();
    if (r.hashes) hashes.set(name, r.hashes);
    if (r.difference) differences.push(r.difference);
    else same++;
  };
  // Zero-size tensors have no chunk to compare.
  for (const [name, e] of open) if (e.size === 0) finish(name);
  const mine = a.tensors;
  let theirs = new Uint8Array(0);
  let queue: Promise<void> = Promise.resolve();
  // Chunks are compared one after another, in the order they are built, so the hashes see the bytes in order.
  const sink: TensorSink = {
    write: (name, offset, bytes) => {
      queue = queue.then(async () => {
        const t = mine.get(name)!;
        if (theirs.byteLength < bytes.byteLength) theirs = new Uint8Array(bytes.byteLength);
        const ours = theirs.subarray(0, bytes.byteLength);
        await t.file.readRange(t.entry, offset, ours, options.signal);
        const e = open.get(name)!;
        e.cmp.add(ours, bytes);
        e.seen += bytes.byteLength;
        bytesDone += bytes.byteLength;
        if (e.seen === e.size) finish(name);
        options.onProgress?.(bytesDone, bytesTotal);
      });
      return queue;
    },
  };
  const toBuild = plan.tensors.filter((t) => open.has(t.name) && byteLength(t) > 0);
  await streamTensors(toBuild, checkpointSource(b.tensors), sink, options.signal ? { signal: options.signal } : {});
  differences.sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
  return {
    a: a.where,
    b: b.where,
    tensorsA: a.tensors.size,
    tensorsB: b.tensors.size,
    same,
    differences,
    hashes,
    identical: differences.length === 0,
    converted: { from: lb, to: la },
    seconds: (performance.now() - started) / 1000,
  };
}
