import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FormatError, InputError } from "../../src/errors.js";
import { SafetensorsFile } from "../../src/safetensors/file.js";
import { type ByteSource, MemorySource } from "../../src/io/byte-source.js";
import { openCheckpoint, oracleDir, safetensorsFilesUnder } from "../helpers/fixtures.js";
import {
  PREFIX,
  Rng,
  assemble,
  buildFile,
  caseSeed,
  draftOf,
  fromLatin1,
  hex,
  mutateBytes,
  mutateStructure,
  mutateText,
  printable,
  textKeepsValid,
} from "../helpers/mutate.js";

/**
 * Thousands of seeded mutations of real files through the reader. Every outcome must be a success that
 * holds up (entries tile the data, sizes match the shapes, every tensor reads back its own bytes) or a
 * `FormatError` naming the file: never a TypeError, RangeError, stack overflow or a read past the end.
 * Each case is also judged by a small reference reader built on `JSON.parse`, and mutations that keep a
 * file valid (reordering, same-size dtypes, data bytes…) must be accepted.
 *
 * Replay: case `i` depends only on OMNI_FUZZ_SEED and `i` (see `makeCase`), and a failure names both.
 * OMNI_FUZZ_CASES=100000 runs a longer campaign; OMNI_FUZZ_STATS=1 prints how the cases were refused.
 */

const NAME = "fuzzed.safetensors";
const BASE_SEED = Number(process.env.OMNI_FUZZ_SEED ?? 0x5afe7e45);
const CASES = Number(process.env.OMNI_FUZZ_CASES ?? 8000);
/** Stop collecting after this many failures: the first few say everything. */
const MAX_REPORTED = 5;
/** A single case this slow means work that grows faster than the file (quadratic parsing, say). */
const SLOW_MS = 2000;

// ---------------------------------------------------------------------------------------------------------
// Seeds

interface Seed {
  readonly name: string;
  readonly bytes: Uint8Array;
}


/** Every oracle `.safetensors`, once per distinct content. */
function oracleSeeds(): Seed[] {
  const seen = new Set<string>();
  const out: Seed[] = [];
  for (const file of safetensorsFilesUnder(oracleDir)) {
    const bytes = new Uint8Array(fs.readFileSync(file));
    const digest = createHash("sha256").update(bytes).digest("hex");
    if (seen.has(digest)) continue;
    seen.add(digest);
    out.push({ name: path.relative(oracleDir, file), bytes });
  }
  return out;
}

const entry = (dtype: string, shape: readonly number[], begin: number, end: number): string =>
  `{"dtype":"${dtype}","shape":[${shape.join(",")}],"data_offsets":[${begin},${end}]}`;

const ramp = (n: number): Uint8Array => new Uint8Array(n).map((_, i) => (i * 37 + 11) & 0xff);

/** Small hand-made files for the corners real checkpoints rarely reach. */
function edgeSeeds(): Seed[] {
  const i64 = new Uint8Array(8);
  new DataView(i64.buffer).setBigInt64(0, -2n, true);
  return [
    { name: "edge/i64-scalar", bytes: buildFile(`{"__metadata__":{"format":"pt"},"step":${entry("I64", [], 0, 8)}}`, i64, 8) },
    {
      name: "edge/zero-size",
      bytes: buildFile(
        `{"empty":${entry("F32", [0], 0, 0)},"w":${entry("U8", [3], 0, 3)},` +
          `"hole":${entry("BF16", [4, 0, 2], 3, 3)},"last":${entry("F64", [0], 3, 3)}}`,
        ramp(3),
      ),
    },
    {
      name: "edge/proto-names",
      bytes: buildFile(
        `{"__proto__":${entry("F16", [2], 0, 4)},"constructor":${entry("U8", [1], 4, 5)},"toString":${entry("BOOL", [1, 1], 5, 6)},` +
          `"__metadata__":{"__proto__":"x","constructor":"y"}}`,
        ramp(6),
      ),
    },
    {
      // Listed out of order, every dtype width at an odd offset, and an odd-length header.
      name: "edge/unaligned",
      bytes: buildFile(
        `{"f":${entry("F32", [2], 3, 11)},"b":${entry("U8", [3], 0, 3)},"h":${entry("BF16", [1], 11, 13)},"d":${entry("F64", [1], 13, 21)},` +
          `"s":${entry("I16", [1], 21, 23)},"i":${entry("I32", [1], 23, 27)},"e":${entry("F8_E4M3", [1, 1, 1], 27, 28)}} `,
        ramp(28),
      ),
    },
    {
      name: "edge/unicode-names",
      bytes: buildFile(
        `{"é":${entry("U8", [1], 0, 1)},"名前":${entry("I8", [2], 1, 3)},"😀":${entry("U16", [1], 3, 5)},` +
          `"a\\"b\\\\c\\u0001":${entry("U32", [1], 5, 9)}}`,
        ramp(9),
      ),
    },
    { name: "edge/empty", bytes: buildFile("{}") },
    { name: "edge/metadata-only", bytes: buildFile(`{"__metadata__":{"format":"pt"}}`, undefined, 8) },
  ];
}

// ---------------------------------------------------------------------------------------------------------
// A source that watches the reader's reads

class RecordingSource implements ByteSource {
  private readonly inner: MemorySource;
  largestRead = 0;
  totalRequested = 0;
  /** The first read that was too large or out of bounds (a MemorySource would turn it into a FormatError). */
  problem: string | undefined;

  constructor(bytes: Uint8Array) {
    this.inner = new MemorySource(bytes, NAME);
  }

  get name(): string {
    return this.inner.name;
  }

  get size(): number {
    return this.inner.size;
  }

  private note(buf: Uint8Array, position: number): void {
    this.largestRead = Math.max(this.largestRead, buf.byteLength);
    this.totalRequested += buf.byteLength;
    if (buf.byteLength > this.size) this.problem ??= `a read of ${buf.byteLength} bytes from a ${this.size}-byte file`;
    else if (position < 0 || position + buf.byteLength > this.size) {
      this.problem ??= `a read of ${buf.byteLength} bytes at ${position}, past the end of the ${this.size}-byte file`;
    }
  }

  readSync(buf: Uint8Array, position: number): void {
    this.note(buf, position);
    this.inner.readSync(buf, position);
  }

  read(buf: Uint8Array, position: number): Promise<void> {
    this.note(buf, position);
    return this.inner.read(buf, position);
  }

  close(): void {
    this.inner.close();
  }
}

// ---------------------------------------------------------------------------------------------------------
// A reference reader: SPEC §5 written plainly on top of JSON.parse and BigInt

const ITEM_SIZE: Readonly<Record<string, number>> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1, F8_E4M3: 1, F8_E5M2: 1, U16: 2, U32: 4, U64: 8,
};

interface RefEntry {
  readonly dtype: string;
  readonly shape: readonly number[];
  readonly begin: number;
  readonly end: number;
}

interface RefFile {
  readonly entries: ReadonlyMap<string, RefEntry>;
  readonly metadata: ReadonlyMap<string, string> | null;
}

/**
 * `JSON.parse` rounds big integers, reads 1.0 as 1 and -0 as 0 and has no depth limit, and the reader refuses
 * all of those: where the reader gives one of these reasons, the reference cannot be expected to agree.
 */
const INVISIBLE_TO_JSON_PARSE = /nested too deeply|-?\d[\d.eE+-]* is not an integer$|is negative \(-|or more and cannot be represented/;

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === "object" && !Array.isArray(v);
const isIndex = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
const product = (shape: readonly number[]): bigint => shape.reduce((a, d) => a * BigInt(d), 1n);

/**
 * The first key that appears twice in one object of `text`, which must be valid JSON (`JSON.parse` would keep
 * the last silently). A scan, not a parser: strings are skipped whole, and a string followed by `:` is a key.
 */
function duplicateKey(text: string): string | undefined {
  const open: (Set<string> | undefined)[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "{") open.push(new Set());
    else if (c === "[") open.push(undefined);
    else if (c === "}" || c === "]") open.pop();
    else if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      let k = j + 1;
      while (/\s/.test(text[k] ?? "")) k++;
      if (text[k] === ":") {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        const keys = open[open.length - 1];
        if (keys?.has(key)) return key;
        keys?.add(key);
      }
      i = j;
    }
  }
  return undefined;
}

/** The file as SPEC §5 describes it, or why it is not one. */
function reference(bytes: Uint8Array): RefFile | string {
  if (bytes.byteLength < PREFIX) return "shorter than the prefix";
  const n = new DataView(bytes.buffer, bytes.byteOffset, PREFIX).getBigUint64(0, true);
  if (n > 100_000_000n || BigInt(PREFIX) + n > BigInt(bytes.byteLength)) return `header length ${n}`;
  const len = Number(n);
  let root: unknown;
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes.subarray(PREFIX, PREFIX + len));
    root = JSON.parse(text);
  } catch (e) {
    return `header: ${String(e)}`;
  }
  const twice = duplicateKey(text);
  if (twice !== undefined) return `key ${JSON.stringify(twice)} appears twice`;
  if (!isObject(root)) return "header is not an object";
  const dataSize = bytes.byteLength - PREFIX - len;
  let metadata: Map<string, string> | null = null;
  const entries = new Map<string, RefEntry>();
  for (const name of Object.keys(root)) {
    const v = root[name];
    if (name === "__metadata__") {
      if (v === null) continue;
      if (!isObject(v) || !Object.values(v).every((x) => typeof x === "string")) return "__metadata__ is not string -> string";
      metadata = new Map(Object.entries(v as Record<string, string>));
      continue;
    }
    if (!isObject(v)) return `${name}: not an object`;
    const dtype = Object.hasOwn(v, "dtype") ? v.dtype : undefined;
    const shape = Object.hasOwn(v, "shape") ? v.shape : undefined;
    const offsets = Object.hasOwn(v, "data_offsets") ? v.data_offsets : undefined;
    if (typeof dtype !== "string" || !Object.hasOwn(ITEM_SIZE, dtype)) return `${name}: dtype`;
    if (!Array.isArray(shape) || !shape.every(isIndex)) return `${name}: shape`;
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isIndex)) return `${name}: data_offsets`;
    const [begin, end] = offsets as [number, number];
    if (end < begin || BigInt(end - begin) !== product(shape) * BigInt(ITEM_SIZE[dtype]!)) return `${name}: size`;
    entries.set(name, { dtype, shape, begin, end });
  }
  let cursor = 0;
  for (const e of [...entries.values()].sort((a, b) => a.begin - b.begin || a.end - b.end)) {
    if (e.begin !== cursor) return "not contiguous";
    cursor = e.end;
  }
  if (cursor !== dataSize) return "does not cover the data";
  return { entries, metadata };
}

// ---------------------------------------------------------------------------------------------------------
// One case

interface Case {
  readonly index: number;
  readonly caseSeed: number;
  readonly seed: Seed;
  readonly bytes: Uint8Array;
  readonly log: readonly string[];
  /** Every mutation applied keeps a valid file valid: the reader must accept it. */
  readonly keepsValid: boolean;
}

/** Case `i`: a seed file and a stack of structural, textual and byte mutations, all from one seeded PRNG. */
function makeCase(seeds: readonly Seed[], i: number): Case {
  const s = caseSeed(BASE_SEED, i);
  const rng = new Rng(s);
  const seed = rng.pick(seeds);
  const d = draftOf(seed.bytes);
  if (rng.chance(0.3)) mutateStructure(d, rng);
  if (rng.chance(0.45)) {
    const before = d.header.length;
    const rounds = rng.range(1, 3);
    for (let r = 0; r < rounds; r++) {
      const [text, what] = mutateText(d.header, rng);
      d.header = text;
      d.log.push(`text: ${what}`);
      if (!textKeepsValid(what)) d.keepsValid = false;
    }
    if (rng.chance(0.1) && d.prefix.kind === "exact") {
      d.prefix = { kind: "value", value: BigInt(before) };
      d.keepsValid = false;
      d.log.push(`prefix: kept the stale header length ${before}`);
    }
  }
  let bytes = assemble(d);
  if (d.log.length === 0 || rng.chance(0.5)) {
    const headerEnd = PREFIX + d.header.length;
    const rounds = rng.range(1, 3);
    for (let r = 0; r < rounds; r++) {
      const [next, what, ok] = mutateBytes(bytes, headerEnd, rng);
      bytes = next;
      d.log.push(`bytes: ${what}`);
      if (!ok) d.keepsValid = false;
    }
  }
  return { index: i, caseSeed: s, seed, bytes, log: d.log, keepsValid: d.keepsValid };
}

interface Outcome {
  /** What went wrong, if anything. */
  readonly problem?: string;
  /** The refusal's detail with numbers and quoted names blanked, to count distinct reasons. */
  readonly reason?: string;
}

function describeThrown(e: unknown): string {
  if (!(e instanceof Error)) return `threw a non-Error ${String(e)}`;
  const frames = (e.stack ?? "").split("\n").slice(1, 4).map((l) => l.trim());
  return `threw ${e.constructor.name}: ${e.message} [${frames.join(" < ")}]`;
}

function run(c: Case): Outcome {
  const source = new RecordingSource(c.bytes);
  let file: SafetensorsFile;
  try {
    file = SafetensorsFile.openSync(source);
  } catch (e) {
    if (!(e instanceof FormatError) || !(e instanceof InputError)) return { problem: describeThrown(e) };
    if (e.file !== NAME || !e.message.startsWith(`${NAME}: `)) return { problem: `FormatError does not name ${NAME}: ${e.message}` };
    if (source.problem) return { problem: `refused after ${source.problem}: ${e.message}` };
    // JSON.parse of a header nested 100,000 deep takes 30 ms: ask the reference only when its verdict counts.
    if (c.keepsValid || !INVISIBLE_TO_JSON_PARSE.test(e.detail)) {
      if (typeof reference(c.bytes) !== "string") {
        return { problem: `refused a ${c.keepsValid ? "mutation that keeps the file valid" : "file the reference reader accepts"}: ${e.message}` };
      }
      if (c.keepsValid) return { problem: `refused a mutation meant to keep the file valid, which the reference refuses too: ${e.message}` };
    }
    return { reason: e.detail.replace(/"(?:[^"\\]|\\.)*"/g, '""').replace(/\d+/g, "N") };
  }
  try {
    return { problem: checkAccepted(file, c, source) };
  } catch (e) {
    return { problem: `after opening, ${describeThrown(e)}` };
  }
}

/** What is wrong with a file the reader accepted, if anything. */
function checkAccepted(file: SafetensorsFile, c: Case, source: RecordingSource): string | undefined {
  const size = c.bytes.byteLength;
  if (source.problem) return `accepted after ${source.problem}`;
  const ref = reference(c.bytes);
  if (typeof ref === "string") return `accepted a file the reference reader refuses (${ref})`;

  const { entries, headerLength, dataStart, metadata } = file.header;
  const prefix = new DataView(c.bytes.buffer, c.bytes.byteOffset, PREFIX).getBigUint64(0, true);
  if (BigInt(headerLength) !== prefix || dataStart !== PREFIX + headerLength) {
    return `header length ${headerLength} and data start ${dataStart} disagree with the prefix ${prefix}`;
  }
  const dataSize = size - dataStart;
  if (file.tensors.size !== entries.length || ref.entries.size !== entries.length) {
    return `${entries.length} entries, ${file.tensors.size} names, the reference has ${ref.entries.size}`;
  }
  if (JSON.stringify([...(metadata ?? [])]) !== JSON.stringify([...(ref.metadata ?? [])])) return "metadata differs from the reference";
  let cursor = 0;
  for (const e of entries) {
    const label = `tensor ${JSON.stringify(e.name)} ${e.dtype}[${e.shape.join(", ")}] at [${e.begin}, ${e.end})`;
    if (e.begin !== cursor) return `${label} does not start where the previous tensor ends (${cursor})`;
    if (e.end < e.begin || e.end > dataSize) return `${label} is not within the ${dataSize} data bytes`;
    const itemSize = ITEM_SIZE[e.dtype];
    if (itemSize === undefined) return `${label} has a dtype outside SPEC §5`;
    if (BigInt(e.end - e.begin) !== product(e.shape) * BigInt(itemSize)) return `${label} does not match its shape`;
    const r = ref.entries.get(e.name);
    if (!r || r.dtype !== e.dtype || r.begin !== e.begin || r.end !== e.end || r.shape.join() !== e.shape.join()) {
      return `${label} differs from the reference's ${JSON.stringify(r)}`;
    }
    cursor = e.end;
  }
  if (cursor !== dataSize) return `tensors cover ${cursor} of ${dataSize} data bytes`;
  for (const e of entries) {
    const t = file.readTensorSync(e.name);
    const want = c.bytes.subarray(dataStart + e.begin, dataStart + e.end);
    if (t.dtype !== e.dtype || t.shape.join() !== e.shape.join() || t.data.byteLength !== want.byteLength) {
      return `readTensor(${JSON.stringify(e.name)}) gave ${t.dtype}[${t.shape.join(", ")}], ${t.data.byteLength} bytes`;
    }
    if (Buffer.compare(t.data, want) !== 0) return `readTensor(${JSON.stringify(e.name)}) gave other bytes than the file holds`;
  }
  if (source.problem) return `reading tensors made ${source.problem}`;
  if (source.largestRead > size || source.totalRequested > size) {
    return `read ${source.totalRequested} bytes in all, ${source.largestRead} at once, from a ${size}-byte file`;
  }
  return undefined;
}

function report(c: Case, problem: string): string {
  const b = c.bytes;
  const lines = [
    `case ${c.index} (OMNI_FUZZ_SEED=${BASE_SEED}, case seed 0x${c.caseSeed.toString(16)}) of ${c.seed.name}: ${problem}`,
    `  mutations: ${c.log.join("; ") || "none"}`,
    `  ${b.byteLength} bytes; prefix ${hex(b, 0, PREFIX)}; header[0, 64): ${hex(b, PREFIX, PREFIX + 64)} |${printable(b, PREFIX, PREFIX + 64)}|`,
  ];
  let diff = 0;
  while (diff < b.byteLength && diff < c.seed.bytes.byteLength && b[diff] === c.seed.bytes[diff]) diff++;
  if (diff >= PREFIX + 64 && diff < b.byteLength) {
    lines.push(`  first change at byte ${diff}: ${hex(b, diff - 16, diff + 48)} |${printable(b, diff - 16, diff + 48)}|`);
  }
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------------------

describe("fuzzing SafetensorsFile with mutated real files", () => {
  const seeds = [...oracleSeeds(), ...edgeSeeds()];

  it("starts from seeds that the reader and the reference both accept", () => {
    expect(seeds.length).toBeGreaterThanOrEqual(10);
    for (const seed of seeds) {
      const outcome = run({ index: -1, caseSeed: 0, seed, bytes: seed.bytes, log: [], keepsValid: true });
      expect(outcome.problem, seed.name).toBeUndefined();
      expect(reference(seed.bytes), seed.name).not.toBeTypeOf("string");
    }
  });

  it(`opens ${CASES} mutated files without an unexpected exception, bad read or false verdict`, () => {
    const failures: string[] = [];
    const reasons = new Map<string, number>();
    let accepted = 0;
    let mustAccept = 0;
    for (let i = 0; i < CASES && failures.length < MAX_REPORTED; i++) {
      const c = makeCase(seeds, i);
      const started = performance.now();
      const outcome = run(c);
      const ms = performance.now() - started;
      const problem = outcome.problem ?? (ms > SLOW_MS ? `took ${ms.toFixed(0)} ms` : undefined);
      if (problem) failures.push(report(c, problem));
      else if (outcome.reason) reasons.set(outcome.reason, (reasons.get(outcome.reason) ?? 0) + 1);
      else if (!problem) accepted++;
      if (c.keepsValid) mustAccept++;
    }
    if (process.env.OMNI_FUZZ_STATS) {
      console.log({ accepted, mustAccept, reasons: [...reasons].sort((a, b) => b[1] - a[1]) });
    }
    expect(failures, failures.join("\n\n")).toEqual([]);
    if (CASES < 1000) return;
    // The mix must reach past the length prefix into every part of header validation, and keep valid files
    // often enough to check success too.
    expect(accepted).toBeGreaterThan(CASES * 0.05);
    expect(mustAccept).toBeGreaterThan(CASES * 0.03);
    expect(reasons.size).toBeGreaterThan(40);
  });

  // Found by this fuzzer: the running product of the dimensions once gave up past 2^53 before reaching a
  // later 0. A zero-size tensor is valid whatever the order of its dimensions (the reference accepts it).
  it("accepts a zero-size tensor whose leading dimensions multiply past 2^53", () => {
    const file = SafetensorsFile.fromBytes(buildFile(`{"w":${entry("U8", [2 ** 27, 2 ** 27, 0], 0, 0)}}`), NAME);
    expect(file.tensors.get("w")?.shape).toEqual([2 ** 27, 2 ** 27, 0]);
  });

  it("accepts the same zero-size tensor with the 0 first", () => {
    const file = SafetensorsFile.fromBytes(buildFile(`{"w":${entry("U8", [0, 2 ** 27, 2 ** 27], 0, 0)}}`), NAME);
    expect(file.tensors.get("w")?.shape).toEqual([0, 2 ** 27, 2 ** 27]);
  });
});

// ---------------------------------------------------------------------------------------------------------
// The index path, lightly

const INDEX = "model.safetensors.index.json";
const S1 = "model-00001-of-00002.safetensors";
const S2 = "model-00002-of-00002.safetensors";
const INDEX_CASES = 400;
const SHARD_CASES = 60;

const SHARD_NAMES = [
  "", ".", "..", `../${S1}`, "/etc/passwd", `${S1}/`, `./${S1}`, `sub/../${S1}`, `${S1}/.`, `.//${S2}`, S1, S2, INDEX, "missing.safetensors",
  "\\u0000", `${S1}\\u0000`, "a".repeat(300), "sub", "~", ` ${S1}`, S1.toUpperCase(), "\\\\", "C:\\\\x",
];

function indexText(): string {
  const map: [string, string][] = [["a", S1], ["__proto__", S1], ["odd", S1], ["c", S2], ["z", S2], ["constructor", S2]];
  const lines = map.map(([k, v]) => `    ${JSON.stringify(k)}: ${JSON.stringify(v)}`);
  return `{\n  "metadata": {\n    "total_size": 25\n  },\n  "weight_map": {\n${lines.join(",\n")}\n  }\n}\n`;
}

function mutateIndex(text: string, rng: Rng): [string, string] {
  const shards = [...text.matchAll(/"(model-0000[12]-of-00002\.safetensors)"/g)];
  if (shards.length > 0 && rng.chance(0.35)) {
    const m = rng.pick(shards);
    const to = rng.pick(SHARD_NAMES);
    return [text.slice(0, m.index) + `"${to}"` + text.slice(m.index + m[0].length), `shard name at ${m.index} -> "${to}"`];
  }
  if (rng.chance(0.1)) {
    const to = rng.pick(["null", "[]", "1", '"x"', "{}", `{"a":1}`, `{"a":"${S1}","a":"${S2}"}`, `{"extra":"${S1}"}`]);
    return [text.replace(/"weight_map": \{[^}]*\}/, `"weight_map": ${to}`), `weight_map -> ${to}`];
  }
  return mutateText(text, rng);
}

function openFds(): number | undefined {
  try {
    return fs.readdirSync("/proc/self/fd").length;
  } catch {
    return undefined;
  }
}

describe("fuzzing Checkpoint.open with a mutated index and shards", () => {
  let dir: string;
  let shardBytes: Map<string, Uint8Array>;
  beforeAll(() => {
    dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), "omni-ckpt-fuzz-")));
    shardBytes = new Map([
      [S1, buildFile(`{"a":${entry("F32", [2], 0, 8)},"__proto__":${entry("U8", [3], 8, 11)},"odd":${entry("BF16", [1], 11, 13)}}`, ramp(13))],
      [
        S2,
        buildFile(
          `{"__metadata__":{"format":"pt"},"c":${entry("I64", [], 0, 8)},"z":${entry("F16", [0], 8, 8)},"constructor":${entry("F32", [1], 8, 12)}}`,
          ramp(12),
          8,
        ),
      ],
    ]);
    for (const [name, bytes] of shardBytes) fs.writeFileSync(path.join(dir, name), bytes);
    fs.writeFileSync(path.join(dir, INDEX), indexText());
  });
  afterAll(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  let opened = 0;

  /** What is wrong with opening the folder as it is now, if anything. */
  async function outcome(): Promise<string | undefined> {
    const fds = openFds();
    let problem: string | undefined;
    try {
      const ckpt = await openCheckpoint(dir);
      opened++;
      try {
        for (const t of ckpt.tensors.values()) {
          const data = t.file.readTensorSync(t.name).data;
          if (data.byteLength !== t.entry.end - t.entry.begin) problem = `${t.name}: read ${data.byteLength} bytes`;
        }
      } finally {
        ckpt.close();
      }
    } catch (e) {
      if (!(e instanceof InputError)) problem = describeThrown(e);
      else if (!e.message.startsWith(dir)) problem = `InputError does not name a file in the folder: ${e.message}`;
    }
    const after = openFds();
    if (!problem && fds !== undefined && after !== undefined && after !== fds) problem = `${after - fds} file descriptors left open`;
    return problem;
  }

  it("the unmutated folder opens", async () => {
    expect(await outcome()).toBeUndefined();
    const ckpt = await openCheckpoint(dir);
    expect([...ckpt.tensors.keys()].sort()).toEqual(["__proto__", "a", "c", "constructor", "odd", "z"]);
    ckpt.close();
  });

  it(`survives ${INDEX_CASES} index mutations and ${SHARD_CASES} shard mutations`, async () => {
    const failures: string[] = [];
    opened = 0;
    const original = indexText(); // ASCII: the same as latin1
    for (let i = 0; i < INDEX_CASES && failures.length < MAX_REPORTED; i++) {
      const s = caseSeed(BASE_SEED ^ 0x1d3, i);
      const rng = new Rng(s);
      let text = original;
      const log: string[] = [];
      const rounds = rng.range(1, 3);
      for (let r = 0; r < rounds; r++) {
        const [next, what] = mutateIndex(text, rng);
        text = next;
        log.push(what);
      }
      fs.writeFileSync(path.join(dir, INDEX), fromLatin1(text));
      const problem = await outcome();
      if (problem) {
        const b = fromLatin1(text);
        failures.push(
          `index case ${i} (case seed 0x${s.toString(16)}): ${problem}\n  mutations: ${log.join("; ")}\n  index: ${hex(b, 0, 96)} |${printable(b)}|`,
        );
      }
    }
    fs.writeFileSync(path.join(dir, INDEX), original);
    for (let i = 0; i < SHARD_CASES && failures.length < MAX_REPORTED; i++) {
      const s = caseSeed(BASE_SEED ^ 0x5a4d, i);
      const rng = new Rng(s);
      const shard = rng.pick([S1, S2]);
      const seed = shardBytes.get(shard)!;
      const headerEnd = PREFIX + Number(new DataView(seed.buffer, seed.byteOffset).getBigUint64(0, true));
      const [bytes, what] = mutateBytes(seed, headerEnd, rng);
      fs.writeFileSync(path.join(dir, shard), bytes);
      const problem = await outcome();
      if (problem) {
        failures.push(`shard case ${i} (case seed 0x${s.toString(16)}), ${shard}: ${problem}\n  mutation: ${what}\n  bytes[0, 96): ${hex(bytes, 0, 96)}`);
      }
      fs.writeFileSync(path.join(dir, shard), seed);
    }
    expect(failures, failures.join("\n\n")).toEqual([]);
    // Some mutations (whitespace, a shard named "./…") leave a checkpoint that opens; most do not.
    if (process.env.OMNI_FUZZ_STATS) console.log({ opened });
    expect(opened).toBeGreaterThan(20);
    expect(opened).toBeLessThan((INDEX_CASES + SHARD_CASES) / 2);
  });
});
