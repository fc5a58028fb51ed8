import type { PlannedTensor } from "../adapters/plan.js";
import type { BufferPool } from "../convert/buffer-pool.js";
import type { ChunkSpan } from "../convert/chunks.js";
import { type TensorSource, buildTensor } from "../convert/stream.js";
import { itemSize } from "../tensor/dtype.js";
import { byteLength } from "../tensor/tensor.js";
import { Scratch } from "../tensor/transfer.js";
import { type MergeDType, addDelta, matmulScaled } from "../tensor/wasm/matmul.js";

/**
 * One weight matrix of the output that takes a LoRA delta: `rows × cols` contiguous elements from element
 * `offset` of output tensor `tensor`, and `delta = scale · left·right` with `left` [rows, rank] and
 * `right` [rank, cols] (float32 plans over the adapter's tensors). In the HF layout left is B and right
 * is A; where the output holds the weight transposed (a native grouped expert tensor), left is Aᵀ and
 * right is Bᵀ.
 */
export interface DeltaRegion {
  readonly tensor: string;
  readonly offset: number;
  readonly rows: number;
  readonly cols: number;
  readonly rank: number;
  readonly scale: number;
  readonly dtype: MergeDType;
  readonly left: PlannedTensor;
  readonly right: PlannedTensor;
}

/** Float32 deltas are computed this many elements at a time (256 KB: a core's L2 holds it with the factors). */
const TILE_ELEMENTS = 64 * 1024;

/**
 * Adapter tensors kept in memory beyond the ones in use are given back past this size. In write order a
 * layer's experts come together, so only about one layer's adapter tensors are ever held; the limit
 * guards against an order that scatters them (they are read again when needed).
 */
const MAX_CACHED_BYTES = 256 * 1024 * 1024;

interface State {
  readonly region: DeltaRegion;
  /** Adapter tensors the region's factors are read from. */
  readonly sources: readonly string[];
  done: number;
  left?: Uint8Array;
  right?: Uint8Array;
}

/**
 * Adds LoRA deltas to the weights of each chunk a stream writes (`streamTensors`' `transform`): for the
 * elements of a region a chunk holds, which may start and end mid-row, the delta rows are computed by the
 * SIMD matmul and added in the weight's dtype. A region's factors are built from the adapter on its first
 * chunk and freed with its last; the adapter tensors they come from are read whole once and freed when no
 * unfinished region needs them.
 */
export class DeltaApplier {
  private readonly byTensor = new Map<string, State[]>();
  private readonly refs = new Map<string, number>();
  private readonly cached = new Map<string, Uint8Array>();
  private cachedBytes = 0;
  private readonly scratch: Scratch;
  private tile: Uint8Array | undefined;
  private readonly views: TensorSource;
  private remaining: number;

  constructor(
    regions: readonly DeltaRegion[],
    private readonly source: TensorSource,
    private readonly pool: BufferPool,
  ) {
    this.scratch = new Scratch(pool);
    for (const region of regions) {
      const sources = [...new Set([...region.left.pieces, ...region.right.pieces].map((p) => p.src))];
      for (const s of sources) this.refs.set(s, (this.refs.get(s) ?? 0) + 1);
      const list = this.byTensor.get(region.tensor) ?? [];
      list.push({ region, sources, done: 0 });
      this.byTensor.set(region.tensor, list);
    }
    for (const list of this.byTensor.values()) list.sort((a, b) => a.region.offset - b.region.offset);
    this.remaining = regions.length;
    this.views = {
      info: (name) => source.info(name),
      read: () => Promise.reject(new Error("internal: an adapter tensor was not read before its factors were built")),
      view: (name, offset, length) => this.cached.get(name)?.subarray(offset, offset + length),
    };
  }

  /** Regions not yet complete: zero once every delta is in. */
  get pending(): number {
    return this.remaining;
  }

  /** The stream's transform: add the deltas of every region part the chunk holds. */
  readonly transform = async (bytes: Uint8Array, spans: readonly ChunkSpan[]): Promise<void> => {
    for (const span of spans) {
      const states = this.byTensor.get(span.tensor.name);
      if (!states) continue;
      const item = itemSize(span.tensor.dtype);
      const e0 = span.byteStart / item;
      const e1 = e0 + span.byteLength / item;
      for (const st of states) {
        const r = st.region;
        const size = r.rows * r.cols;
        const lo = Math.max(e0, r.offset);
        const hi = Math.min(e1, r.offset + size);
        if (lo >= hi) continue;
        if (!st.left) await this.load(st);
        this.apply(st, bytes.subarray(span.at + (lo - e0) * item, span.at + (hi - e0) * item), lo - r.offset, hi - r.offset, item);
        st.done += hi - lo;
        if (st.done === size) this.complete(st);
      }
    }
  };

  private async load(st: State): Promise<void> {
    for (const name of st.sources) {
      if (this.cached.has(name)) {
        // Most recently used last: evicted last.
        const b = this.cached.get(name)!;
        this.cached.delete(name);
        this.cached.set(name, b);
        continue;
      }
      const buf = this.pool.acquire(byteLength(this.source.info(name)));
      try {
        if (this.source.readSync) this.source.readSync(name, 0, buf);
        else await this.source.read(name, 0, buf);
      } catch (e) {
        this.pool.release(buf);
        throw e;
      }
      this.cached.set(name, buf);
      this.cachedBytes += buf.byteLength;
    }
    st.left = (await buildTensor(st.region.left, this.views, this.pool, this.scratch)).data;
    st.right = (await buildTensor(st.region.right, this.views, this.pool, this.scratch)).data;
    for (const [name, buf] of this.cached) {
      if (this.cachedBytes <= MAX_CACHED_BYTES) break;
      if (st.sources.includes(name)) continue;
      this.drop(name, buf);
    }
  }

  private drop(name: string, buf: Uint8Array): void {
    this.cached.delete(name);
    this.cachedBytes -= buf.byteLength;
    this.pool.release(buf);
  }

  /** Elements [g0, g1) of the region (row-major), whose weights are `w`. */
  private apply(st: State, w: Uint8Array, g0: number, g1: number, item: number): void {
    const { cols, rank, scale, dtype } = st.region;
    const tile = (this.tile ??= this.pool.acquire(TILE_ELEMENTS * 4));
    const left = st.left!;
    const right = st.right!;
    let g = g0;
    let at = 0;
    while (g < g1) {
      const row = Math.floor(g / cols);
      const c0 = g % cols;
      let rows: number;
      let c1: number;
      if (c0 !== 0 || g1 - g < cols || cols > TILE_ELEMENTS) {
        // Part of one row: where the chunk starts or ends mid-row, or a row wider than a tile.
        rows = 1;
        c1 = Math.min(cols, c0 + (g1 - g), c0 + TILE_ELEMENTS);
      } else {
        rows = Math.min(Math.floor((g1 - g) / cols), Math.max(1, Math.floor(TILE_ELEMENTS / cols)));
        c1 = cols;
      }
      const width = c1 - c0;
      const n = rows * width;
      matmulScaled(left.subarray(row * rank * 4), rank, right.subarray(c0 * 4), cols, tile, width, rows, width, rank, scale);
      addDelta(dtype, w.subarray(at * item, (at + n) * item), tile, n);
      g += n;
      at += n;
    }
  }

  private complete(st: State): void {
    this.pool.release(st.left!);
    this.pool.release(st.right!);
    st.left = undefined;
    st.right = undefined;
    this.remaining--;
    for (const name of st.sources) {
      const n = (this.refs.get(name) ?? 1) - 1;
      this.refs.set(name, n);
      const buf = this.cached.get(name);
      if (n === 0 && buf) this.drop(name, buf);
    }
  }

  /** Give back every buffer still held (after the stream, whether it finished or failed). */
  release(): void {
    for (const list of this.byTensor.values()) {
      for (const st of list) {
        if (st.left) this.pool.release(st.left);
        if (st.right) this.pool.release(st.right);
        st.left = undefined;
        st.right = undefined;
      }
    }
    for (const [name, buf] of [...this.cached]) this.drop(name, buf);
    if (this.tile) this.pool.release(this.tile);
    this.tile = undefined;
    this.scratch.release();
  }
}
