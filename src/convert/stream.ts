import type { PlannedTensor } from "../adapters/plan.js";
import { type DType, itemSize } from "../tensor/dtype.js";
import { type Tensor, type TensorInfo, numel } from "../tensor/tensor.js";
import { Scratch, transfer } from "../tensor/transfer.js";
import { type View, extent, rebase, simplifyPair } from "../tensor/view.js";
import { BufferPool } from "./buffer-pool.js";

/** Where a stream reads input tensors from: positional reads of a tensor's bytes. */
export interface TensorSource {
  info(name: string): TensorInfo;
  read(name: string, offset: number, buf: Uint8Array): Promise<void>;
}

/** Where finished bytes of output tensors go, `offset` bytes into the tensor. */
export interface TensorSink {
  write(name: string, offset: number, bytes: Uint8Array): Promise<void>;
}

export interface StreamProgress {
  /** Called after each chunk is written; `tensorDone` when it completed its tensor. */
  (bytes: number, tensorDone: boolean): void;
}

export interface StreamOptions {
  /** Target bytes per chunk; bounds memory to a few chunks plus the largest unsplittable piece. */
  readonly chunkBytes?: number;
  /** Chunk writes allowed in flight while the next chunk is read and transformed. */
  readonly maxPendingWrites?: number;
  readonly pool?: BufferPool;
  readonly onProgress?: StreamProgress;
}

export const DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024;

interface PieceTask {
  readonly src: string;
  readonly srcDType: DType;
  /** Bytes of the input tensor this piece reads: [srcByteStart, srcByteStart + srcByteLength). */
  readonly srcByteStart: number;
  readonly srcByteLength: number;
  /** Read straight into the chunk at this byte offset (same dtype, contiguous both sides). */
  readonly directAt?: number;
  readonly srcView: View;
  readonly dstView: View;
}

export interface Chunk {
  readonly tensor: string;
  readonly dtype: DType;
  /** Byte range of the output tensor this chunk fills. */
  readonly byteStart: number;
  readonly byteLength: number;
  readonly pieces: readonly PieceTask[];
  readonly lastOfTensor: boolean;
}

interface Segment {
  readonly src: string;
  readonly srcView: View;
  readonly dstView: View;
  readonly dstStart: number;
  readonly dstEnd: number;
}

/** Pieces that are plain runs on both sides can be cut anywhere; others are taken whole. */
function segments(t: PlannedTensor, maxElements: number): Segment[] {
  const out: Segment[] = [];
  for (const p of t.pieces) {
    const simple = simplifyPair(p.srcView, p.dstView);
    const run = simple.shape.length === 0 || (simple.shape.length === 1 && simple.src[0] === 1 && simple.dst[0] === 1);
    if (!run) {
      const e = extent(p.dstView);
      if (e.end > e.start) out.push({ src: p.src, srcView: p.srcView, dstView: p.dstView, dstStart: e.start, dstEnd: e.end });
      continue;
    }
    const n = simple.shape[0] ?? 1;
    if (p.srcView.shape.some((d) => d === 0)) continue;
    const perSeg = Math.max(1, Math.floor(maxElements));
    for (let at = 0; at < n; at += perSeg) {
      const len = Math.min(perSeg, n - at);
      const srcView: View = { offset: p.srcView.offset + at, shape: [len], strides: [1] };
      const dstView: View = { offset: p.dstView.offset + at, shape: [len], strides: [1] };
      out.push({ src: p.src, srcView, dstView, dstStart: dstView.offset, dstEnd: dstView.offset + len });
    }
  }
  return out.sort((a, b) => a.dstStart - b.dstStart || a.dstEnd - b.dstEnd);
}

/**
 * Cut a planned tensor into chunks: contiguous byte ranges of the output, each filled by whole pieces.
 * A cut is only made where no earlier piece reaches past it, so interleaved pieces (a gated row) stay
 * together.
 */
export function chunkTensor(t: PlannedTensor, source: TensorSource, chunkBytes = DEFAULT_CHUNK_BYTES): Chunk[] {
  const outItem = itemSize(t.dtype);
  const segs = segments(t, chunkBytes / Math.max(outItem, 8));
  const chunks: Chunk[] = [];
  let group: Segment[] = [];
  let start = 0;
  let end = 0;
  const flush = (last: boolean): void => {
    if (group.length === 0) return;
    const pieces = group.map((s) => pieceTask(s, source, start, t.dtype));
    chunks.push({ tensor: t.name, dtype: t.dtype, byteStart: start * outItem, byteLength: (end - start) * outItem, pieces, lastOfTensor: last });
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
  return chunks;
}

function pieceTask(s: Segment, source: TensorSource, chunkStart: number, outDType: DType): PieceTask {
  const srcDType = source.info(s.src).dtype;
  const inItem = itemSize(srcDType);
  const { start, end } = extent(s.srcView);
  const srcView = rebase(s.srcView, start);
  const dstView = rebase(s.dstView, chunkStart);
  const simple = simplifyPair(srcView, dstView);
  const run = simple.shape.length === 0 || (simple.shape.length === 1 && simple.src[0] === 1 && simple.dst[0] === 1);
  const task = { src: s.src, srcDType, srcByteStart: start * inItem, srcByteLength: (end - start) * inItem, srcView, dstView };
  return run && srcDType === outDType ? { ...task, directAt: dstView.offset * inItem } : task;
}

interface Prepared {
  readonly chunk: Chunk;
  readonly buf: Uint8Array;
  readonly regions: (Uint8Array | undefined)[];
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
  const chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  const maxWrites = options.maxPendingWrites ?? 2;
  const scratch = new Scratch();
  const chunks = function* (): Generator<Chunk> {
    for (const t of tensors) yield* chunkTensor(t, source, chunkBytes);
  };

  const prepare = async (chunk: Chunk): Promise<Prepared> => {
    const buf = pool.acquire(chunk.byteLength);
    const regions = chunk.pieces.map((p) => (p.directAt === undefined ? pool.acquire(p.srcByteLength) : undefined));
    try {
      await Promise.all(
        chunk.pieces.map((p, i) =>
          source.read(p.src, p.srcByteStart, regions[i] ?? buf.subarray(p.directAt!, p.directAt! + p.srcByteLength)),
        ),
      );
    } catch (e) {
      pool.release(buf);
      for (const r of regions) if (r) pool.release(r);
      throw e;
    }
    return { chunk, buf, regions };
  };

  const iterator = chunks();
  const pending: Promise<void>[] = [];
  let next: Promise<Prepared> | undefined;
  const startNext = (): void => {
    const r = iterator.next();
    next = r.done ? undefined : prepare(r.value);
    next?.catch(() => undefined);
  };
  try {
    startNext();
    while (next) {
      const ready = await next;
      startNext();
      const { chunk, buf, regions } = ready;
      chunk.pieces.forEach((p, i) => {
        const region = regions[i];
        if (!region) return;
        transfer(region, p.srcDType, p.srcView, buf, chunk.dtype, p.dstView, scratch);
        pool.release(region);
      });
      const w = sink.write(chunk.tensor, chunk.byteStart, buf).then(() => {
        pool.release(buf);
        options.onProgress?.(chunk.byteLength, chunk.lastOfTensor);
      });
      w.catch(() => undefined);
      pending.push(w);
      while (pending.length > maxWrites) await pending.shift();
    }
    await Promise.all(pending);
  } finally {
    // Never leave reads or writes running behind a failure: the caller is about to delete their files.
    await Promise.allSettled([...pending, ...(next ? [next] : [])]);
  }
}

/** Build one planned tensor in memory, reading only the byte ranges its pieces need. */
export async function buildTensor(t: PlannedTensor, source: TensorSource, scratch = new Scratch()): Promise<Tensor> {
  const data = new Uint8Array(new ArrayBuffer(numel(t.shape) * itemSize(t.dtype)));
  for (const p of t.pieces) {
    const srcDType = source.info(p.src).dtype;
    const inItem = itemSize(srcDType);
    const { start, end } = extent(p.srcView);
    const region = new Uint8Array(new ArrayBuffer((end - start) * inItem));
    await source.read(p.src, start * inItem, region);
    transfer(region, srcDType, rebase(p.srcView, start), data, t.dtype, p.dstView, scratch);
  }
  return { dtype: t.dtype, shape: [...t.shape], data };
}
