import type { PlannedTensor } from "../adapters/plan.js";
import { type DType, itemSize } from "../tensor/dtype.js";
import { type Tensor, type TensorInfo, byteLength } from "../tensor/tensor.js";
import { Scratch, transfer } from "../tensor/transfer.js";
import { type View, extent, rebase, simplifyPair } from "../tensor/view.js";
import { BufferPool } from "./buffer-pool.js";

/** Where a stream reads input tensors from: positional reads of a tensor's bytes. */
export interface TensorSource {
  info(name: string): TensorInfo;
  read(name: string, offset: number, buf: Uint8Array): Promise<void>;
  /**
   * The same read, done before returning. A stream prefers it: from the page cache a read is a copy the
   * main thread does faster itself than by handing it to another thread and waiting to hear it is done.
   */
  readSync?(name: string, offset: number, buf: Uint8Array): void;
  /** The bytes in place, without a copy, when the source holds them in memory. */
  view?(name: string, offset: number, length: number): Uint8Array | undefined;
}

/** Where finished bytes of output tensors go, `offset` bytes into the tensor. */
export interface TensorSink {
  write(name: string, offset: number, bytes: Uint8Array): Promise<void>;
  /**
   * Whether `next` is stored right after `previous` in the same file. When it is, one write starting in
   * `previous` may run on into `next`: small tensors then share a chunk and a system call.
   */
  follows?(previous: string, next: string): boolean;
}

export interface StreamOptions {
  readonly pool?: BufferPool;
  /** After each chunk is written: its bytes, and how many tensors it completed. */
  readonly onProgress?: (bytes: number, tensorsCompleted: number) => void;
}

/**
 * Small enough that a chunk's source and destination stay in a core's L2 cache (1 MB here) while it is
 * transposed, read from the page cache and written back; large enough to keep system calls few. Measured on
 * the bench checkpoint: 1 MB chunks cut user CPU by ~0.15 s against 4 MB (whose transposes ran from L3 at
 * 3–4 GB/s instead of 9), 512 KB chunks were slower again, and 4 MB beat 16 MB.
 */
const CHUNK_BYTES = 1024 * 1024;

/**
 * Chunk writes allowed in flight while the next chunk is read and transformed: enough that the writer
 * thread always has the next one queued, though the main thread only hears that a write is done when it
 * next waits.
 */
const MAX_PENDING_WRITES = 6;

interface PieceTask {
  readonly src: string;
  readonly srcDType: DType;
  /** Bytes of the input tensor this piece reads: [srcByteStart, srcByteStart + srcByteLength). */
  readonly srcByteStart: number;
  readonly srcByteLength: number;
  readonly srcView: View;
  readonly dstDType: DType;
  /** Byte offset, within the chunk, of the region `dstView` is relative to. */
  readonly dstBase: number;
  readonly dstView: View;
  /** Read straight into the chunk at this byte offset (same dtype, contiguous on both sides). */
  readonly directAt?: number;
}

interface Chunk {
  /** The output tensor the chunk starts in, and where in it; the chunk may run on into following tensors. */
  readonly tensor: string;
  readonly byteStart: number;
  readonly byteLength: number;
  readonly pieces: readonly PieceTask[];
  /** Tensors whose last byte is in this chunk. */
  readonly tensorsCompleted: number;
}

interface Segment {
  readonly src: string;
  readonly srcView: View;
  readonly dstView: View;
  readonly dstStart: number;
  readonly dstEnd: number;
}

function isRun(src: View, dst: View): { n: number } | undefined {
  const s = simplifyPair(src, dst);
  if (s.shape.length === 0) return { n: 1 };
  return s.shape.length === 1 && s.src[0] === 1 && s.dst[0] === 1 ? { n: s.shape[0]! } : undefined;
}

/** Pieces that are plain runs on both sides can be cut anywhere; others are taken whole. */
function segments(t: PlannedTensor, maxElements: number): Segment[] {
  const out: Segment[] = [];
  for (const p of t.pieces) {
    if (p.srcView.shape.some((d) => d === 0)) continue;
    const run = isRun(p.srcView, p.dstView);
    if (!run) {
      const e = extent(p.dstView);
      out.push({ src: p.src, srcView: p.srcView, dstView: p.dstView, dstStart: e.start, dstEnd: e.end });
      continue;
    }
    const perSeg = Math.max(1, Math.floor(maxElements));
    for (let at = 0; at < run.n; at += perSeg) {
      const len = Math.min(perSeg, run.n - at);
      const srcView: View = { offset: p.srcView.offset + at, shape: [len], strides: [1] };
      const dstView: View = { offset: p.dstView.offset + at, shape: [len], strides: [1] };
      out.push({ src: p.src, srcView, dstView, dstStart: dstView.offset, dstEnd: dstView.offset + len });
    }
  }
  return out.sort((a, b) => a.dstStart - b.dstStart || a.dstEnd - b.dstEnd);
}

function pieceTask(s: Segment, source: TensorSource, regionStart: number, dstDType: DType): PieceTask {
  const srcDType = source.info(s.src).dtype;
  const inItem = itemSize(srcDType);
  const { start, end } = extent(s.srcView);
  const srcView = rebase(s.srcView, start);
  const dstView = rebase(s.dstView, regionStart);
  const task = { src: s.src, srcDType, srcByteStart: start * inItem, srcByteLength: (end - start) * inItem, srcView, dstDType, dstBase: 0, dstView };
  return isRun(srcView, dstView) && srcDType === dstDType ? { ...task, directAt: dstView.offset * inItem } : task;
}

/**
 * Cut a planned tensor into chunks: contiguous byte ranges of the output, each filled by whole pieces.
 * A cut is only made where no earlier piece reaches past it, so interleaved pieces (a gated row) stay
 * together.
 */
function chunkTensor(t: PlannedTensor, source: TensorSource, chunkBytes: number): Chunk[] {
  const outItem = itemSize(t.dtype);
  const segs = segments(t, chunkBytes / Math.max(outItem, 8));
  const chunks: Chunk[] = [];
  let group: Segment[] = [];
  let start = 0;
  let end = 0;
  const flush = (last: boolean): void => {
    if (group.length === 0) return;
    const pieces = group.map((s) => pieceTask(s, source, start, t.dtype));
    chunks.push({ tensor: t.name, byteStart: start * outItem, byteLength: (end - start) * outItem, pieces, tensorsCompleted: last ? 1 : 0 });
    group = [];
  };
  for (const s of segs) {
    if (group.length > 0 && s.dstStart >= end && (end - start + (s.dstEnd - s.dstStart)) * outItem > chunkBytes) flush(false);
    if (group.length === 0) {
      start = s.dstStart;
      end = s.dstEnd;
    }
    group.push(s);
    end = Math.max(end, s.dstEnd);
  }
  flush(true);
  // A zero-size tensor has no bytes but still completes: an empty chunk says so.
  if (chunks.length === 0) chunks.push({ tensor: t.name, byteStart: 0, byteLength: 0, pieces: [], tensorsCompleted: 1 });
  return chunks;
}

/**
 * Chunks for a whole list of tensors, in order. Whole small tensors that follow each other in the output
 * file are packed into one chunk, so a shard of thousands of per-expert matrices is written in large
 * writes rather than one per tensor.
 */
function* planChunks(tensors: readonly PlannedTensor[], source: TensorSource, sink: TensorSink, chunkBytes: number): Generator<Chunk> {
  let packed: { tensor: string; last: string; byteLength: number; pieces: PieceTask[]; tensors: number } | undefined;
  const flush = function* (): Generator<Chunk> {
    if (packed) yield { tensor: packed.tensor, byteStart: 0, byteLength: packed.byteLength, pieces: packed.pieces, tensorsCompleted: packed.tensors };
    packed = undefined;
  };
  for (const t of tensors) {
    const size = byteLength(t);
    const chunks = chunkTensor(t, source, chunkBytes);
    const whole = chunks.length === 1 && chunks[0]!.byteStart === 0 && chunks[0]!.byteLength === size;
    if (!whole || size > chunkBytes / 2) {
      yield* flush();
      yield* chunks;
      continue;
    }
    const only = chunks[0]!;
    if (packed && (packed.byteLength + size > chunkBytes || !sink.follows?.(packed.last, t.name))) yield* flush();
    if (!packed) {
      packed = { tensor: t.name, last: t.name, byteLength: size, pieces: [...only.pieces], tensors: 1 };
      continue;
    }
    const base = packed.byteLength;
    for (const p of only.pieces) {
      packed.pieces.push(p.directAt === undefined ? { ...p, dstBase: base } : { ...p, dstBase: base, directAt: base + p.directAt });
    }
    packed.byteLength += size;
    packed.last = t.name;
    packed.tensors++;
  }
  yield* flush();
}

interface Prepared {
  readonly chunk: Chunk;
  readonly buf: Uint8Array;
  /** Per piece: where its source bytes were read to (undefined when read straight into the chunk). */
  readonly regions: (Uint8Array | undefined)[];
  /** The buffers behind `regions`, to release once the chunk is transformed. */
  readonly held: Uint8Array[];
}

/**
 * One read per run of pieces that read adjacent bytes of the same input: splitting a grouped tensor reads
 * consecutive experts' slabs, which become one large read instead of one per expert.
 */
function readRuns(chunk: Chunk): { src: string; start: number; end: number; pieces: number[] }[] {
  const order = chunk.pieces
    .map((_, i) => i)
    .filter((i) => chunk.pieces[i]!.directAt === undefined)
    .sort((a, b) => {
      const pa = chunk.pieces[a]!;
      const pb = chunk.pieces[b]!;
      return pa.src < pb.src ? -1 : pa.src > pb.src ? 1 : pa.srcByteStart - pb.srcByteStart;
    });
  const runs: { src: string; start: number; end: number; pieces: number[] }[] = [];
  for (const i of order) {
    const p = chunk.pieces[i]!;
    const last = runs[runs.length - 1];
    if (last && last.src === p.src && last.end === p.srcByteStart) {
      last.end += p.srcByteLength;
      last.pieces.push(i);
    } else runs.push({ src: p.src, start: p.srcByteStart, end: p.srcByteStart + p.srcByteLength, pieces: [i] });
  }
  return runs;
}

/**
 * Build planned tensors from a source into a sink, chunk by chunk: the next chunk's reads are in flight
 * while this one is transformed, and a few writes may trail behind. Memory stays at a few chunks.
 */
export async function streamTensors(
  tensors: readonly PlannedTensor[],
  source: TensorSource,
  sink: TensorSink,
  options: StreamOptions = {},
): Promise<void> {
  const pool = options.pool ?? new BufferPool();
  const scratch = new Scratch(pool);
  const release = (bufs: readonly Uint8Array[]): void => {
    for (const b of bufs) pool.release(b);
  };

  const prepare = async (chunk: Chunk): Promise<Prepared> => {
    const buf = pool.acquire(chunk.byteLength);
    const regions: (Uint8Array | undefined)[] = chunk.pieces.map(() => undefined);
    const held: Uint8Array[] = [];
    const reads: Promise<void>[] = [];
    const read = (name: string, offset: number, into: Uint8Array): void => {
      if (source.readSync) source.readSync(name, offset, into);
      else reads.push(source.read(name, offset, into));
    };
    let failure: { reason: unknown } | undefined;
    try {
      for (const run of readRuns(chunk)) {
        const region = pool.acquire(run.end - run.start);
        held.push(region);
        for (const i of run.pieces) {
          const p = chunk.pieces[i]!;
          regions[i] = region.subarray(p.srcByteStart - run.start, p.srcByteStart - run.start + p.srcByteLength);
        }
        read(run.src, run.start, region);
      }
      for (const p of chunk.pieces) {
        if (p.directAt !== undefined) read(p.src, p.srcByteStart, buf.subarray(p.directAt, p.directAt + p.srcByteLength));
      }
    } catch (reason) {
      failure = { reason };
    }
    // Memory goes back to the pool, and the caller may close the files, only once no read is using them.
    for (const r of await Promise.allSettled(reads)) if (r.status === "rejected") failure ??= { reason: r.reason };
    if (failure) {
      release([buf, ...held]);
      throw failure.reason;
    }
    return { chunk, buf, regions, held };
  };

  const iterator = planChunks(tensors, source, sink, CHUNK_BYTES);
  const pending: Promise<void>[] = [];
  let next: Promise<Prepared> | undefined;
  const startNext = (): void => {
    const r = iterator.next();
    next = r.done ? undefined : prepare(r.value);
    next?.catch(() => undefined);
  };
  // Reads in flight overlap this chunk's transform; reads done in place would only hold back its write.
  const readAheadFirst = source.readSync === undefined;
  try {
    startNext();
    while (next) {
      const current = next;
      next = undefined;
      const { chunk, buf, regions, held } = await current;
      if (readAheadFirst) startNext();
      let written: Promise<void>;
      try {
        chunk.pieces.forEach((p, i) => {
          const region = regions[i];
          if (region) transfer(region, p.srcDType, p.srcView, p.dstBase === 0 ? buf : buf.subarray(p.dstBase), p.dstDType, p.dstView, scratch);
        });
        written = sink.write(chunk.tensor, chunk.byteStart, buf);
      } catch (e) {
        pool.release(buf);
        throw e;
      } finally {
        release(held);
      }
      const w = written.finally(() => pool.release(buf)).then(() => options.onProgress?.(chunk.byteLength, chunk.tensorsCompleted));
      w.catch(() => undefined);
      pending.push(w);
      if (!readAheadFirst) startNext();
      while (pending.length > MAX_PENDING_WRITES) await pending.shift();
    }
    await Promise.all(pending);
  } finally {
    // Never leave reads or writes running behind a failure (the caller is about to delete their files and
    // close the sources), and give back what a chunk read ahead was holding.
    await Promise.allSettled(pending);
    const ahead = await next?.catch(() => undefined);
    if (ahead) release([ahead.buf, ...ahead.held]);
    scratch.release();
  }
}

/**
 * Build one planned tensor in memory (from the pool, so its transposes run in SIMD), reading only the byte
 * ranges its pieces need, or viewing them in place when the source already holds them in memory. The
 * caller releases `data` to the pool when done with it.
 */
export async function buildTensor(t: PlannedTensor, source: TensorSource, pool: BufferPool, scratch: Scratch): Promise<Tensor> {
  const data = pool.acquire(byteLength(t));
  try {
    for (const p of t.pieces) {
      const srcDType = source.info(p.src).dtype;
      const inItem = itemSize(srcDType);
      const { start, end } = extent(p.srcView);
      const inPlace = source.view?.(p.src, start * inItem, (end - start) * inItem);
      const region = inPlace ?? pool.acquire((end - start) * inItem);
      try {
        if (!inPlace) await source.read(p.src, start * inItem, region);
        transfer(region, srcDType, rebase(p.srcView, start), data, t.dtype, p.dstView, scratch);
      } finally {
        if (!inPlace) pool.release(region);
      }
    }
  } catch (e) {
    pool.release(data);
    throw e;
  }
  return { dtype: t.dtype, shape: [...t.shape], data };
}
