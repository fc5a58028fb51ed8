import type { PlannedTensor } from "../adapters/plan.js";
import type { BufferPool } from "../convert/buffer-pool.js";
import type { ChunkSpan } from "../convert/chunks.js";
import { type TensorSource, buildTensor } from "../convert/stream.js";
import { itemSize } from "../tensor/dtype.js";
import { byteLength } from "../tensor/tensor.js";
import { Scratch } from "../tensor/transfer.js";
import { inArena } from "../tensor/wasm/kernels.js";
import { type MergeDType, addDelta, matmulScaled } from "../tensor/wasm/matmul.js";
import { type DeltaKernels, applyDeltaRange } from "./delta-range.js";

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

/** One range of one region's elements for a helper: all buffers lie in the kernels' shared arena. */
export interface DeltaJob {
  /** Unique per region, so a helper can keep a region's factors between jobs. */
  readonly region: number;
  readonly left: Uint8Array;
  readonly right: Uint8Array;
  /** The weights of elements [g0, g1), in the chunk being written. */
  readonly w: Uint8Array;
  readonly g0: number;
  readonly g1: number;
  readonly cols: number;
  readonly rank: number;
  readonly scale: number;
  readonly dtype: "BF16" | "F32";
}

/** Something that computes deltas while the main thread computes others: a thread on the second core. */
export interface DeltaHelper {
  run(jobs: readonly DeltaJob[]): Promise<void>;
}

const KERNELS: DeltaKernels = { matmul: matmulScaled, add: addDelta };

/** Below this many elements a chunk's deltas are not worth handing half of to a helper. */
const MIN_SHARED_ELEMENTS = 32 * 1024;

/** Float32 deltas are computed this many elements at a time (256 KB: a core's L2 holds it with the factors). */
const TILE_ELEMENTS = 64 * 1024;

/**
 * Adapter tensors kept in memory beyond the ones in use are given back past this size. In write order a
 * layer's experts come together, so only about one layer's adapter tensors are ever held; the limit
 * guards against an order that scatters them (they are read again when needed).
 */
const MAX_CACHED_BYTES = 256 * 1024 * 1024;

interface State {
  readonly id: number;
  readonly region: DeltaRegion;
  /** Adapter tensors the region's factors are read from. */
  readonly sources: readonly string[];
  done: number;
  left?: Uint8Array;
  right?: Uint8Array;
}

/**
 * Region ids, unique in the process: the helper thread outlives any one merge and keeps a region's
 * factors by id, so two merges (one after the other, or at once) must never share one.
 */
let nextRegionId = 0;

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
  private remaining = 0;

  constructor(
    regions: readonly DeltaRegion[],
    private readonly source: TensorSource,
    private readonly pool: BufferPool,
    private readonly helper?: DeltaHelper,
  ) {
    this.scratch = new Scratch(pool);
    for (const region of regions) {
      const sources = [...new Set([...region.left.pieces, ...region.right.pieces].map((p) => p.src))];
      for (const s of sources) this.refs.set(s, (this.refs.get(s) ?? 0) + 1);
      const list = this.byTensor.get(region.tensor) ?? [];
      this.remaining++;
      list.push({ id: nextRegionId++, region, sources, done: 0 });
      this.byTensor.set(region.tensor, list);
    }
    for (const list of this.byTensor.values()) list.sort((a, b) => a.region.offset - b.region.offset);
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

  /**
   * The stream's transform: add the deltas of every region part the chunk holds. With a helper, half of a
   * chunk's elements go to it and are computed at the same time as the other half.
   */
  readonly transform = async (bytes: Uint8Array, spans: readonly ChunkSpan[]): Promise<void> => {
    const jobs: { st: State; w: Uint8Array; g0: number; g1: number }[] = [];
    for (const span of spans) {
      const states = this.byTensor.get(span.tensor.name);
      if (!states) continue;
      const item = itemSize(span.tensor.dtype);
      const e0 = span.byteStart / item;
      const e1 = e0 + span.byteLength / item;
      for (const st of states) {
        const r = st.region;
        const lo = Math.max(e0, r.offset);
        const hi = Math.min(e1, r.offset + r.rows * r.cols);
        if (lo >= hi) continue;
        if (!st.left) await this.load(st);
        jobs.push({ st, w: bytes.subarray(span.at + (lo - e0) * item, span.at + (hi - e0) * item), g0: lo - r.offset, g1: hi - r.offset });
      }
    }
    if (jobs.length === 0) return;
    const total = jobs.reduce((n, j) => n + j.g1 - j.g0, 0);
    const shared = this.helper !== undefined && total >= MIN_SHARED_ELEMENTS && inArena(bytes.buffer);
    const remote: DeltaJob[] = [];
    let give = shared ? Math.floor(total / 2) : 0;
    const local: typeof jobs = [];
    for (const j of jobs) {
      const { region: r } = j.st;
      const n = j.g1 - j.g0;
      const movable = r.dtype !== "F16" && inArena(j.st.left!.buffer) && inArena(j.st.right!.buffer);
      if (give === 0 || !movable) {
        local.push(j);
        continue;
      }
      const item = itemSize(r.dtype);
      const m = Math.min(give, n);
      const dtype = r.dtype as "BF16" | "F32";
      remote.push({ region: j.st.id, left: j.st.left!, right: j.st.right!, w: j.w.subarray(0, m * item), g0: j.g0, g1: j.g0 + m, cols: r.cols, rank: r.rank, scale: r.scale, dtype });
      if (m < n) local.push({ st: j.st, w: j.w.subarray(m * item), g0: j.g0 + m, g1: j.g1 });
      give -= m;
    }
    const helped = remote.length > 0 ? this.helper!.run(remote) : undefined;
    helped?.catch(() => undefined);
    try {
      for (const j of local) this.apply(j.st, j.w, j.g0, j.g1);
    } catch (e) {
      // The helper writes into this chunk: it must be done before the chunk's memory can go back.
      await helped?.catch(() => undefined);
      throw e;
    }
    await helped;
    for (const j of jobs) {
      j.st.done += j.g1 - j.g0;
      if (j.st.done === j.st.region.rows * j.st.region.cols) this.complete(j.st);
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
  private apply(st: State, w: Uint8Array, g0: number, g1: number): void {
    const { cols, rank, scale, dtype } = st.region;
    const tile = (this.tile ??= this.pool.acquire(TILE_ELEMENTS * 4));
    applyDeltaRange(KERNELS, st.left!, st.right!, tile, TILE_ELEMENTS, w, g0, g1, cols, rank, scale, dtype);
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
