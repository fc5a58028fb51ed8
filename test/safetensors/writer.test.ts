import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { openCheckpoint, openSafetensors } from "../helpers/fixtures.js";
import { BufferPool } from "../../src/convert/buffer-pool.js";
import { WriteError } from "../../src/errors.js";
import { LocalOutput, checkFileOnDisk } from "../../src/node/local-output.js";
import { SafetensorsFile } from "../../src/safetensors/file.js";
import { SafetensorsFileWriter } from "../../src/safetensors/file-writer.js";
import { PREFIX_LENGTH } from "../../src/safetensors/header.js";
import { planShards, shardFileName } from "../../src/safetensors/shard-plan.js";
import { ShardedWriter } from "../../src/safetensors/sharded-writer.js";
import { type DeclaredTensor, encodeHeader, referenceOrder, serialize } from "../../src/safetensors/encode.js";
import { DTYPES, type DType, itemSize } from "../../src/tensor/dtype.js";
import { type Tensor, byteLength } from "../../src/tensor/tensor.js";
import { randomBytes, seededRandom, shuffle } from "../helpers/random.js";

const decoder = new TextDecoder();

/** The header of an encoded image: its length prefix and its text, padding included. */
function headerOf(bytes: Uint8Array): { length: number; text: string } {
  const length = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  return { length, text: decoder.decode(bytes.subarray(PREFIX_LENGTH, PREFIX_LENGTH + length)) };
}

function tensor(dtype: DType, shape: number[], random: () => number): Tensor {
  return { dtype, shape, data: randomBytes(shape.reduce((a, b) => a * b, 1) * itemSize(dtype), random) };
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;
}

describe("encodeHeader", () => {
  it("writes compact JSON with __metadata__ first and dtype, shape, data_offsets per tensor", () => {
    const h = encodeHeader([
      { name: "a", dtype: "F32", shape: [2] },
      { name: "b", dtype: "U8", shape: [3] },
      { name: "s", dtype: "I64", shape: [] },
    ]);
    const json =
      '{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' +
      '"b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]},"s":{"dtype":"I64","shape":[],"data_offsets":[11,19]}}';
    const { length, text } = headerOf(h.bytes);
    expect(length % 8).toBe(0);
    expect(text).toBe(json + " ".repeat(length - json.length));
    expect(length - json.length).toBeLessThan(8);
    expect(h.bytes.byteLength).toBe(PREFIX_LENGTH + length);
    expect(h.offsets).toEqual([0, 8, 11]);
    expect(h.dataSize).toBe(19);
  });

  it("pads with 0 to 7 spaces so the data starts on an 8-byte boundary", () => {
    const seen = new Set<number>();
    for (let k = 0; k < 16; k++) {
      const h = encodeHeader([{ name: "x".repeat(k), dtype: "U8", shape: [1] }]);
      const { length, text } = headerOf(h.bytes);
      const json = text.trimEnd();
      expect(JSON.parse(json)).toEqual({ __metadata__: { format: "pt" }, ["x".repeat(k)]: { dtype: "U8", shape: [1], data_offsets: [0, 1] } });
      expect(length % 8).toBe(0);
      expect(text.slice(json.length)).toBe(" ".repeat((8 - (json.length % 8)) % 8));
      seen.add(length - json.length);
    }
    // Every amount of padding, including none, occurs.
    expect([...seen].sort()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });

  it("counts the header in UTF-8 bytes, not characters", () => {
    const h = encodeHeader([{ name: "é😀数", dtype: "U8", shape: [1] }]);
    const { length, text } = headerOf(h.bytes);
    const json = text.trimEnd();
    expect(Buffer.byteLength(json)).toBe(json.length + 1 + 2 + 2); // é: 2 bytes/1 unit, 😀: 4/2, 数: 3/1
    expect(length).toBe(Math.ceil(Buffer.byteLength(json) / 8) * 8);
    expect(h.bytes.byteLength % 8).toBe(0);
    expect(SafetensorsFile.fromBytes(new Uint8Array([...h.bytes, 7])).readTensorSync("é😀数").data).toEqual(new Uint8Array([7]));
  });

  it("escapes names the way the reference serializer does", () => {
    const name = 'q"\\/\n\t\u0001\u007f';
    const { text } = headerOf(encodeHeader([{ name, dtype: "U8", shape: [0] }]).bytes);
    expect(text.trimEnd()).toBe(`{"__metadata__":{"format":"pt"},"q\\"\\\\/\\n\\t\\u0001\u007f":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}`);
  });

  it("omits __metadata__ when asked and writes other metadata in order", () => {
    const none = headerOf(encodeHeader([{ name: "w", dtype: "U8", shape: [1] }], null).bytes).text.trimEnd();
    expect(none).toBe('{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}');
    const meta = headerOf(encodeHeader([], { format: "pt", b: "2", a: "1" }).bytes).text.trimEnd();
    expect(meta).toBe('{"__metadata__":{"format":"pt","b":"2","a":"1"}}');
    const empty = encodeHeader([], null);
    expect(headerOf(empty.bytes)).toEqual({ length: 8, text: "{}      " });
    expect(empty.dataSize).toBe(0);
  });

  it("makes offsets contiguous across zero-size, 0-d and multi-dimensional tensors", () => {
    const tensors: DeclaredTensor[] = [
      { name: "z", dtype: "F32", shape: [0] },
      { name: "m", dtype: "BF16", shape: [2, 3, 4] },
      { name: "z2", dtype: "I64", shape: [3, 0] },
      { name: "s", dtype: "F64", shape: [] },
      { name: "b", dtype: "BOOL", shape: [5] },
    ];
    const h = encodeHeader(tensors);
    const parsed = JSON.parse(headerOf(h.bytes).text) as Record<string, { data_offsets: [number, number] }>;
    let cursor = 0;
    tensors.forEach((t, i) => {
      const [begin, end] = parsed[t.name]!.data_offsets;
      expect(begin).toBe(cursor);
      expect(h.offsets[i]).toBe(begin);
      expect(end - begin).toBe(byteLength(t));
      cursor = end;
    });
    expect(h.dataSize).toBe(cursor);
    expect(cursor).toBe(0 + 48 + 0 + 8 + 5);
  });
});

describe("referenceOrder", () => {
  it("puts wider dtypes first by the reference ranking, then names by UTF-8 bytes", () => {
    const t = (name: string, dtype: DType): DeclaredTensor => ({ name, dtype, shape: [1] });
    const order = referenceOrder([t("b", "BF16"), t("a", "BF16"), t("z", "I64"), t("c", "F32"), t("y", "BOOL"), t("m", "F64"), t("n", "U8")]);
    expect(order.map((x) => `${x.dtype}:${x.name}`)).toEqual(["I64:z", "F64:m", "F32:c", "BF16:a", "BF16:b", "U8:n", "BOOL:y"]);
  });

  it("ranks every dtype as the reference does", () => {
    const all = DTYPES.map((dtype) => ({ name: "t", dtype, shape: [1] }));
    expect(referenceOrder(all).map((x) => x.dtype)).toEqual([
      "U64", "I64", "F64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16", "F8_E4M3", "F8_E5M2", "I8", "U8", "BOOL",
    ]);
  });

  it("compares names as UTF-8 bytes, where UTF-16 order differs", () => {
    // U+FF61 is EF BD A1 in UTF-8 but 0xFF61 in UTF-16; U+1F600 is F0 9F 98 80 but 0xD83D 0xDE00.
    const names = ["\u{1F600}", "\uFF61", "B", "a", "a.10", "a.9", "é"];
    const order = referenceOrder(names.map((name) => ({ name, dtype: "U8" as const, shape: [1] })));
    expect(order.map((x) => x.name)).toEqual(["B", "a", "a.10", "a.9", "é", "\uFF61", "\u{1F600}"]);
    expect([...names].sort()).not.toEqual(order.map((x) => x.name));
  });

  it("does not reorder its input array", () => {
    const input: DeclaredTensor[] = [{ name: "b", dtype: "U8", shape: [1] }, { name: "a", dtype: "U8", shape: [1] }];
    referenceOrder(input);
    expect(input.map((x) => x.name)).toEqual(["b", "a"]);
  });
});

describe("serialize -> SafetensorsFile round trip", () => {
  it("round-trips every dtype, 0-d scalars, zero-size tensors and awkward names", () => {
    const random = seededRandom(1);
    const tensors = new Map<string, Tensor>();
    for (const dtype of DTYPES) {
      tensors.set(`${dtype}.matrix`, tensor(dtype, [3, 5], random));
      tensors.set(`${dtype}.scalar`, tensor(dtype, [], random));
      tensors.set(`${dtype}.empty`, tensor(dtype, [0], random));
      tensors.set(`${dtype}.empty2`, tensor(dtype, [3, 0], random));
      tensors.set(`${dtype}.odd`, tensor(dtype, [7], random));
    }
    tensors.set("__proto__", tensor("F32", [2, 2], random));
    tensors.set("constructor", tensor("I64", [], random));
    tensors.set("hasOwnProperty", tensor("U8", [1], random));
    tensors.set("名前.😀", tensor("BF16", [4], random));
    tensors.set("", tensor("U8", [2], random));
    tensors.set('quote"back\\slash', tensor("F16", [1], random));

    const bytes = serialize(tensors);
    const st = SafetensorsFile.fromBytes(bytes, "round-trip");
    expect(st.header.metadata).toEqual(new Map([["format", "pt"]]));
    expect(new Set(st.tensors.keys())).toEqual(new Set(tensors.keys()));
    for (const [name, t] of tensors) {
      const back = st.readTensorSync(name);
      expect(back.dtype, name).toBe(t.dtype);
      expect(back.shape, name).toEqual(t.shape);
      expect(sameBytes(back.data, t.data), name).toBe(true);
    }
    // The data lies in reference order, and serializing what was read gives the same image.
    expect(st.header.entries.map((e) => e.name)).toEqual(
      referenceOrder([...tensors].map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape }))).map((t) => t.name),
    );
    expect(sameBytes(serialize([...tensors].reverse()), bytes)).toBe(true);
  });

  it("serializes nothing as an empty header", () => {
    const bytes = serialize([]);
    expect(headerOf(bytes).text).toBe('{"__metadata__":{"format":"pt"}}');
    expect(bytes.byteLength).toBe(8 + 32);
    expect(SafetensorsFile.fromBytes(bytes).tensors.size).toBe(0);
    const bare = serialize([], null);
    expect(SafetensorsFile.fromBytes(bare).header.metadata).toBeNull();
  });

  it("writes a scalar's bytes where the header says", () => {
    const n = new Uint8Array(8);
    new DataView(n.buffer).setBigInt64(0, 42n, true);
    const bytes = serialize([["num_batches_tracked", { dtype: "I64", shape: [], data: n }]]);
    const st = SafetensorsFile.fromBytes(bytes);
    const entry = st.tensors.get("num_batches_tracked")!;
    expect(entry.shape).toEqual([]);
    expect(new DataView(bytes.buffer, st.position(entry), 8).getBigInt64(0, true)).toBe(42n);
    expect(bytes.byteLength).toBe(st.header.dataStart + 8);
  });
});

describe("planShards", () => {
  const t = (name: string, bytes: number): DeclaredTensor => ({ name, dtype: "U8", shape: [bytes] });

  it("keeps one shard named model.safetensors when everything fits", () => {
    const plans = planShards([t("a", 10), t("b", 20)], 30);
    expect(plans).toEqual([{ file: "model.safetensors", tensors: [t("a", 10), t("b", 20)], dataSize: 30 }]);
  });

  it("plans one empty model.safetensors for no tensors", () => {
    expect(planShards([], 10)).toEqual([{ file: "model.safetensors", tensors: [], dataSize: 0 }]);
  });

  it("splits in order without exceeding the limit, and names shards model-0000i-of-0000n", () => {
    const tensors = [t("a", 40), t("b", 40), t("c", 30), t("d", 60), t("e", 11), t("f", 0), t("g", 100)];
    const plans = planShards(tensors, 100);
    expect(plans.map((p) => [p.file, p.tensors.map((x) => x.name), p.dataSize])).toEqual([
      ["model-00001-of-00004.safetensors", ["a", "b"], 80],
      ["model-00002-of-00004.safetensors", ["c", "d"], 90],
      ["model-00003-of-00004.safetensors", ["e", "f"], 11],
      ["model-00004-of-00004.safetensors", ["g"], 100],
    ]);
    for (const p of plans) expect(p.dataSize).toBeLessThanOrEqual(100);
    expect(plans.flatMap((p) => p.tensors)).toEqual(tensors);
  });

  it("gives a tensor larger than the limit a shard of its own", () => {
    const plans = planShards([t("a", 5), t("huge", 500), t("b", 5), t("c", 5)], 10);
    expect(plans.map((p) => [p.file, p.tensors.map((x) => x.name), p.dataSize])).toEqual([
      ["model-00001-of-00003.safetensors", ["a"], 5],
      ["model-00002-of-00003.safetensors", ["huge"], 500],
      ["model-00003-of-00003.safetensors", ["b", "c"], 10],
    ]);
    expect(planShards([t("huge", 500)], 10).map((p) => p.file)).toEqual(["model.safetensors"]);
  });

  it("counts bytes, not elements", () => {
    const plans = planShards([{ name: "a", dtype: "F32", shape: [2, 2] }, { name: "b", dtype: "F64", shape: [1] }], 16);
    expect(plans.map((p) => p.dataSize)).toEqual([16, 8]);
  });

  it("refuses a limit that is not positive", () => {
    expect(() => planShards([t("a", 1)], 0)).toThrow(new RangeError("max shard size must be positive, got 0"));
    expect(() => planShards([t("a", 1)], -5)).toThrow(new RangeError("max shard size must be positive, got -5"));
    expect(() => planShards([t("a", 1)], Number.NaN)).toThrow(new RangeError("max shard size must be positive, got NaN"));
  });

  it("names shards like Hugging Face", () => {
    expect(shardFileName(0, 3)).toBe("model-00001-of-00003.safetensors");
    expect(shardFileName(11, 12)).toBe("model-00012-of-00012.safetensors");
    expect(shardFileName(99_999, 100_000)).toBe("model-100000-of-100000.safetensors");
  });
});

describe("writing to disk", () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "omni-ckpt-writer-"));
  });
  afterEach(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** The folder as an output whose read-back checks also record the files checked and parse them again. */
  function out(seen: string[] = []): LocalOutput {
    const store = new LocalOutput(dir);
    const check = store.check.bind(store);
    store.check = async (rel, size, head) => {
      await check(rel, size, head);
      const file = path.join(dir, rel);
      expect(fs.statSync(file).size).toBe(size);
      openSafetensors(file).close();
      seen.push(rel);
    };
    return store;
  }

  /** A file writer creating `file` in its folder. */
  function fileWriter(file: string, declared: readonly DeclaredTensor[]): Promise<SafetensorsFileWriter> {
    return SafetensorsFileWriter.create(new LocalOutput(path.dirname(file)), path.basename(file), declared);
  }

  /** A model-like mix: several dtypes, 0-d, zero-size, a __proto__ name. */
  function sampleTensors(random: () => number): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (let layer = 0; layer < 6; layer++) {
      out.set(`model.layers.${layer}.mixer.weight`, tensor("BF16", [16, 8], random));
      out.set(`model.layers.${layer}.norm.weight`, tensor("F32", [16], random));
      out.set(`model.layers.${layer}.A_log`, tensor("F32", [3], random));
    }
    out.set("model.embed_tokens.weight", tensor("BF16", [40, 16], random));
    out.set("sound.norm.num_batches_tracked", tensor("I64", [], random));
    out.set("empty.bias", tensor("F32", [0], random));
    out.set("__proto__", tensor("U8", [5], random));
    out.set("mask", tensor("BOOL", [9], random));
    return out;
  }

  /** The tensors declared in the reference serializer's order. */
  function declaredOf(tensors: ReadonlyMap<string, Tensor>): DeclaredTensor[] {
    return referenceOrder([...tensors].map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape })));
  }

  /** The sample tensors of `seed`, every byte written to a single-shard ShardedWriter in shuffled chunks. */
  async function filledWriter(seed: number): Promise<{ tensors: Map<string, Tensor>; sw: ShardedWriter }> {
    const random = seededRandom(seed);
    const tensors = sampleTensors(random);
    const sw = await ShardedWriter.create(out(), declaredOf(tensors));
    for (const c of chunks(tensors, random)) await sw.write(c.name, c.offset, c.bytes);
    return { tensors, sw };
  }

  /** Every tensor cut into chunks, all chunks shuffled. */
  function chunks(tensors: ReadonlyMap<string, Tensor>, random: () => number): { name: string; offset: number; bytes: Uint8Array }[] {
    const out: { name: string; offset: number; bytes: Uint8Array }[] = [];
    for (const [name, t] of tensors) {
      let offset = 0;
      do {
        const n = Math.min(t.data.byteLength - offset, 1 + Math.floor(random() * 40));
        out.push({ name, offset, bytes: t.data.subarray(offset, offset + n) });
        offset += n;
      } while (offset < t.data.byteLength);
    }
    return shuffle(out, random);
  }

  // Buffers in the shared arena are written by the writer thread; others by the event loop's thread pool.
  it.each([false, true])("SafetensorsFileWriter writes chunks in any order and gives the same bytes as serialize (arena: %s)", async (arena) => {
    const pool = new BufferPool();
    const held: Uint8Array[] = [];
    const place = (bytes: Uint8Array): Uint8Array => {
      if (!arena) return bytes;
      const b = pool.acquire(bytes.byteLength);
      b.set(bytes);
      held.push(b);
      return b;
    };
    const random = seededRandom(7);
    const tensors = sampleTensors(random);
    const declared = declaredOf(tensors);
    const file = path.join(dir, "model.safetensors");
    const w = await fileWriter(file, declared);
    expect(w.size).toBe(w.dataStart + [...tensors.values()].reduce((n, t) => n + t.data.byteLength, 0));
    const offsetOf = new Map(declared.map((t, i) => [t.name, w.header.offsets[i]!]));
    const parts = chunks(tensors, random);
    await Promise.all(
      parts.map((c, i) => (i % 2 === 0 ? w.write(offsetOf.get(c.name)! + c.offset, place(c.bytes)) : (w.writeSync(offsetOf.get(c.name)! + c.offset, c.bytes), undefined))),
    );
    expect(w.complete).toBe(true);
    await w.finish();
    for (const b of held) pool.release(b);
    expect(sameBytes(new Uint8Array(fs.readFileSync(file)), serialize(tensors))).toBe(true);
  });

  it("SafetensorsFileWriter refuses to overwrite, and writes outside the data", async () => {
    const file = path.join(dir, "x.safetensors");
    fs.writeFileSync(file, "keep me");
    const e = await fileWriter(file, []).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(WriteError);
    expect((e as Error).message).toMatch(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}: cannot create: .*\\(EEXIST\\)$`));
    expect(fs.readFileSync(file, "utf8")).toBe("keep me");

    const w = await fileWriter(path.join(dir, "y.safetensors"), [{ name: "a", dtype: "U8", shape: [4] }]);
    expect(() => w.writeSync(2, new Uint8Array(3))).toThrow(new RangeError(`${w.name}: write of 3 bytes at data offset 2 is outside the declared data`));
    expect(() => w.writeSync(-1, new Uint8Array(1))).toThrow(new RangeError(`${w.name}: write of 1 bytes at data offset -1 is outside the declared data`));
    expect(w.complete).toBe(false);
    w.abandon();
  });

  it("SafetensorsFileWriter.finish refuses a file with bytes missing", async () => {
    const w = await fileWriter(path.join(dir, "z.safetensors"), [
      { name: "a", dtype: "U8", shape: [4] },
      { name: "b", dtype: "U8", shape: [4] },
    ]);
    w.writeSync(0, new Uint8Array([1, 2, 3]));
    await expect(w.finish()).rejects.toThrow(`${w.name}: 5 of 8 data bytes were never written`);
    w.writeSync(3, new Uint8Array([4]));
    w.writeSync(4, new Uint8Array([5, 6, 7, 8]));
    await w.finish();
    expect([...fs.readFileSync(w.name).subarray(w.dataStart)]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it("SafetensorsFileWriter.finish refuses a hole even when other bytes were written twice", async () => {
    const w = await fileWriter(path.join(dir, "twice.safetensors"), [
      { name: "a", dtype: "U8", shape: [4] },
      { name: "b", dtype: "U8", shape: [4] },
    ]);
    w.writeSync(0, new Uint8Array([1, 2, 3, 4]));
    w.writeSync(0, new Uint8Array([1, 2, 3, 4]));
    w.writeSync(2, new Uint8Array([3, 4, 5]));
    expect(w.complete).toBe(false);
    await expect(w.finish()).rejects.toThrow(`${w.name}: 3 of 8 data bytes were never written`);
    w.writeSync(5, new Uint8Array([6, 7, 8]));
    expect(w.complete).toBe(true);
    await w.finish();
    expect([...fs.readFileSync(w.name).subarray(w.dataStart)]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it("SafetensorsFileWriter counts the union of overlapping writes exactly", async () => {
    const random = seededRandom(11);
    const size = 1000;
    const w = await fileWriter(path.join(dir, "overlap.safetensors"), [{ name: "a", dtype: "U8", shape: [size] }]);
    const truth = new Uint8Array(size);
    const covered = new Uint8Array(size);
    let rounds = 0;
    while (!covered.every((c) => c === 1)) {
      const begin = Math.floor(random() * size);
      const end = Math.min(size, begin + Math.floor(random() * 60));
      const bytes = randomBytes(end - begin, random);
      truth.set(bytes, begin);
      covered.fill(1, begin, end);
      if (rounds++ % 2 === 0) w.writeSync(begin, bytes);
      else await w.write(begin, bytes);
      const missing = covered.reduce((n, c) => n + (c === 0 ? 1 : 0), 0);
      expect(w.complete).toBe(missing === 0);
      if (missing > 0 && rounds % 25 === 0) {
        await expect(w.finish()).rejects.toThrow(`${w.name}: ${missing} of ${size} data bytes were never written`);
      }
    }
    expect(rounds).toBeGreaterThan(50);
    await w.finish();
    expect(sameBytes(new Uint8Array(fs.readFileSync(w.name)).subarray(w.dataStart), truth)).toBe(true);
  });

  it("SafetensorsFileWriter is complete only once the last write has landed", async () => {
    const w = await fileWriter(path.join(dir, "inflight.safetensors"), [{ name: "a", dtype: "U8", shape: [1 << 16] }]);
    const pending = w.write(0, new Uint8Array(1 << 16).fill(9));
    // Declared but not yet on disk: syncing and closing now would race the write.
    expect(w.complete).toBe(false);
    await pending;
    expect(w.complete).toBe(true);
    await w.finish();
    expect(fs.readFileSync(w.name).subarray(w.dataStart).every((b) => b === 9)).toBe(true);
  });

  it("ShardedWriter writes shards in random order that Checkpoint.open reads back identically", async () => {
    const random = seededRandom(42);
    const tensors = sampleTensors(random);
    const declared = declaredOf(tensors);
    const totalBytes = [...tensors.values()].reduce((n, t) => n + t.data.byteLength, 0);
    const verified: string[] = [];
    const sw = await ShardedWriter.create(out(verified), declared, 700);
    expect(sw.plans.length).toBeGreaterThanOrEqual(3);
    expect(sw.totalSize).toBe(totalBytes);
    for (const p of sw.plans) expect(p.dataSize <= 700 || p.tensors.length === 1).toBe(true);

    const parts = chunks(tensors, random);
    // Half the chunks synchronously, the rest concurrently in shuffled order.
    const pending: Promise<void>[] = [];
    parts.forEach((c, i) => {
      if (i % 3 === 0) sw.writeSync(c.name, c.offset, c.bytes);
      else pending.push(sw.write(c.name, c.offset, c.bytes));
    });
    await Promise.all(pending);
    const written = await sw.finish();
    const shardNames = sw.plans.map((p) => p.file);
    expect(shardNames).toEqual(sw.plans.map((_, i) => shardFileName(i, sw.plans.length)));
    expect(written).toEqual([...shardNames, "model.safetensors.index.json"]);
    expect(verified).toEqual(shardNames);
    expect(fs.readdirSync(dir).sort()).toEqual([...shardNames, "model.safetensors.index.json"].sort());

    const index = JSON.parse(fs.readFileSync(path.join(dir, "model.safetensors.index.json"), "utf8")) as {
      metadata: { total_size: number };
      weight_map: Record<string, string>;
    };
    expect(Object.keys(index)).toEqual(["metadata", "weight_map"]);
    expect(index.metadata).toEqual({ total_size: totalBytes });
    // JSON.parse turns a "__proto__" key into an own property, so it can be compared like any other.
    const expectedMap: [string, string][] = sw.plans.flatMap((p) => p.tensors.map((t): [string, string] => [t.name, p.file]));
    expectedMap.sort((a, b) => Buffer.compare(Buffer.from(a[0]), Buffer.from(b[0])));
    expect(Object.entries(index.weight_map)).toEqual(expectedMap);

    const ckpt = await openCheckpoint(dir);
    try {
      expect(ckpt.sharded).toBe(true);
      expect(ckpt.totalBytes).toBe(totalBytes);
      expect(ckpt.weightFiles).toEqual(new Set(["model.safetensors.index.json", ...shardNames]));
      expect(new Set(ckpt.tensors.keys())).toEqual(new Set(tensors.keys()));
      for (const [name, t] of tensors) {
        const stored = ckpt.tensors.get(name)!;
        expect(path.basename(stored.file.name), name).toBe(index.weight_map[name]);
        const back = stored.file.readTensorSync(name);
        expect(back.dtype, name).toBe(t.dtype);
        expect(back.shape, name).toEqual(t.shape);
        expect(sameBytes(back.data, t.data), name).toBe(true);
      }
      // Each shard is itself a reference-format file: its tensors in reference order, metadata {"format":"pt"}.
      expect(ckpt.files.map((f) => path.basename(f.name)).sort()).toEqual(shardNames);
      for (const file of ckpt.files) {
        const plan = sw.plans.find((p) => p.file === path.basename(file.name))!;
        expect(file.header.metadata).toEqual(new Map([["format", "pt"]]));
        expect(file.header.entries.map((e) => e.name)).toEqual(plan.tensors.map((t) => t.name));
      }
    } finally {
      ckpt.close();
    }
  });

  it("ShardedWriter writes a single model.safetensors and no index when everything fits", async () => {
    const { tensors, sw } = await filledWriter(3);
    expect(await sw.finish()).toEqual(["model.safetensors"]);
    expect(fs.readdirSync(dir)).toEqual(["model.safetensors"]);
    // One shard in reference order is exactly what the reference serializer writes.
    expect(sameBytes(new Uint8Array(fs.readFileSync(path.join(dir, "model.safetensors"))), serialize(tensors))).toBe(true);
    const ckpt = await openCheckpoint(dir);
    expect(ckpt.sharded).toBe(false);
    expect(ckpt.weightFiles).toEqual(new Set(["model.safetensors"]));
    ckpt.close();
  });

  it("checkFileOnDisk passes a shard as written and refuses one whose size or header changed on disk", async () => {
    const random = seededRandom(4);
    const tensors = sampleTensors(random);
    const seen: [string, number, number][] = [];
    const store = new LocalOutput(dir);
    store.check = async (rel, size, header) => {
      checkFileOnDisk(path.join(dir, rel), size, header);
      seen.push([rel, size, header.byteLength]);
    };
    const sw = await ShardedWriter.create(store, declaredOf(tensors));
    for (const c of chunks(tensors, random)) await sw.write(c.name, c.offset, c.bytes);
    await sw.finish();
    const file = path.join(dir, "model.safetensors");
    const { size } = fs.statSync(file);
    const image = serialize(tensors);
    const header = image.subarray(0, PREFIX_LENGTH + Number(new DataView(image.buffer, image.byteOffset).getBigUint64(0, true)));
    expect(seen).toEqual([["model.safetensors", size, header.byteLength]]);
    checkFileOnDisk(file, size, header);

    // One byte of the header's JSON changed under us: same size, still valid JSON, not what was written.
    const bytes = fs.readFileSync(file);
    const at = bytes.indexOf("F32", PREFIX_LENGTH);
    bytes[at + 2] = "6".charCodeAt(0);
    fs.writeFileSync(file, bytes);
    expect(() => checkFileOnDisk(file, size, header)).toThrow(`${file}: its header does not read back as written`);

    fs.truncateSync(file, size - 1);
    expect(() => checkFileOnDisk(file, size, header)).toThrow(`${file}: is ${size - 1} bytes after writing, expected ${size}`);

    fs.rmSync(file);
    expect(() => checkFileOnDisk(file, size, header)).toThrow(new WriteError(`${file}: cannot be read back after writing: no such file (ENOENT)`));
  });

  it("ShardedWriter.finish refuses when bytes are missing, and writes no index", async () => {
    const sw = await ShardedWriter.create(out(),
      [
        { name: "a", dtype: "F32", shape: [4] },
        { name: "b", dtype: "F32", shape: [4] },
      ],
      16,
    );
    sw.writeSync("a", 0, new Uint8Array(16));
    sw.writeSync("b", 0, new Uint8Array(12));
    await expect(sw.finish()).rejects.toThrow(`${path.join(dir, "model-00002-of-00002.safetensors")}: not every tensor was written`);
    expect(fs.existsSync(path.join(dir, "model.safetensors.index.json"))).toBe(false);
    sw.abandon();
  });

  it("ShardedWriter.finish refuses when one tensor was written twice and another never", async () => {
    const sw = await ShardedWriter.create(out(), [
      { name: "a", dtype: "U8", shape: [4] },
      { name: "b", dtype: "U8", shape: [4] },
    ]);
    sw.writeSync("a", 0, new Uint8Array([1, 2, 3, 4]));
    await sw.write("a", 0, new Uint8Array([1, 2, 3, 4]));
    await expect(sw.finish()).rejects.toThrow(`${path.join(dir, "model.safetensors")}: not every tensor was written`);
    sw.abandon();
  });

  it("ShardedWriter refuses writes outside a tensor's shard or to undeclared tensors", async () => {
    const sw = await ShardedWriter.create(out(), [{ name: "a", dtype: "F32", shape: [2] }]);
    expect(() => sw.writeSync("a", 4, new Uint8Array(8))).toThrow(new RangeError('write of 8 bytes at 4 is outside tensor "a" and its shard'));
    expect(() => sw.writeSync("a", 9, new Uint8Array(0))).toThrow(new RangeError('write of 0 bytes at 9 is outside tensor "a" and its shard'));
    expect(() => sw.writeSync("nope", 0, new Uint8Array(1))).toThrow(new RangeError('tensor "nope" was not declared'));
    expect(() => sw.locate("__proto__")).toThrow(new RangeError('tensor "__proto__" was not declared'));
    expect(sw.locate("a")).toEqual({ shard: 0, offset: 0, size: 8 });
    sw.abandon();
  });

  it("ShardedWriter lets one write run on into the tensors that follow in the same shard, never into the next shard", async () => {
    const sw = await ShardedWriter.create(out(), [
      { name: "a", dtype: "U8", shape: [3] },
      { name: "b", dtype: "U8", shape: [2] },
      { name: "c", dtype: "U8", shape: [4] },
    ], 5);
    expect(sw.follows("a", "b")).toBe(true);
    expect(sw.follows("b", "c")).toBe(false);
    expect(sw.follows("b", "a")).toBe(false);
    sw.writeSync("a", 1, new Uint8Array([1, 2, 3, 4]));
    expect(() => sw.writeSync("b", 0, new Uint8Array(3))).toThrow(new RangeError('write of 3 bytes at 0 is outside tensor "b" and its shard'));
    sw.abandon();
  });

  it("ShardedWriter refuses a tensor declared twice", async () => {
    const t: DeclaredTensor = { name: "a", dtype: "U8", shape: [1] };
    await expect(ShardedWriter.create(out(), [t, { name: "b", dtype: "U8", shape: [1] }, t], 1)).rejects.toThrow(new RangeError('tensor "a" declared twice'));
  });
});
