import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { type Checkpoint, parseConfigText } from "../../src/safetensors/checkpoint.js";
import { SafetensorsFile } from "../../src/safetensors/file.js";
import { FileSource } from "../../src/node/file-source.js";
import { type SourceOptions, openSource } from "../../src/node/sources.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { seededRandom as uniform } from "./random.js";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, "../..");
/**
 * The repository's own copy of the ground-truth fixtures (made by the reference Python implementations), so a
 * clone passes its tests with nothing beside it.
 */
export const fixturesDir = path.join(repoRoot, "test/fixtures");
export const oracleDir = path.join(fixturesDir, "oracle");
export const consolidateDir = path.join(fixturesDir, "consolidate");
export const loraDir = path.join(fixturesDir, "lora");

export interface OracleCase {
  readonly name: string;
  readonly dir: string;
  readonly direction: "native" | "hf";
  readonly args: readonly string[];
}

export function oracleCases(): OracleCase[] {
  return fs
    .readdirSync(oracleDir)
    .sort()
    .map((name) => {
      const dir = path.join(oracleDir, name);
      const c = JSON.parse(fs.readFileSync(path.join(dir, "case.json"), "utf8")) as { direction: "native" | "hf"; args: string[] };
      return { name, dir, direction: c.direction, args: c.args };
    });
}

/**
 * Every tensor of a (small) checkpoint in memory, read synchronously: a folder's `model.safetensors` or
 * indexed shards, or one `.safetensors` file. For fixtures only; the library's own reader is what the
 * tests test, and `Checkpoint.open` validates the same folders elsewhere.
 */
export function loadAll(location: string): Map<string, Tensor> {
  const files: string[] = [];
  if (fs.statSync(location).isFile()) files.push(location);
  else if (fs.existsSync(path.join(location, "model.safetensors"))) files.push(path.join(location, "model.safetensors"));
  else {
    const index = JSON.parse(fs.readFileSync(path.join(location, "model.safetensors.index.json"), "utf8")) as { weight_map: Record<string, string> };
    for (const shard of new Set(Object.values(index.weight_map))) files.push(path.join(location, shard));
  }
  const out = new Map<string, Tensor>();
  for (const file of files) {
    const st = SafetensorsFile.fromBytes(new Uint8Array(fs.readFileSync(file)), file);
    for (const name of st.tensors.keys()) out.set(name, st.readTensorSync(name));
  }
  return out;
}

/** A folder's config.json, read as the library reads it (Python's `Infinity`/`NaN` included). */
export function readConfig(dir: string): Record<string, unknown> {
  const file = path.join(dir, "config.json");
  return parseConfigText(fs.readFileSync(file, "utf8"), file).values;
}

/** JSON text as Python's `json.dumps(indent=2)` would write it, non-finite floats included. */
export function stringifyPython(value: unknown, indent = ""): string {
  const inner = `${indent}  `;
  if (typeof value === "number" && !Number.isFinite(value)) return Number.isNaN(value) ? "NaN" : value > 0 ? "Infinity" : "-Infinity";
  if (Array.isArray(value)) return value.length === 0 ? "[]" : `[\n${value.map((v) => inner + stringifyPython(v, inner)).join(",\n")}\n${indent}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value);
    if (entries.length === 0) return "{}";
    return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${stringifyPython(v, inner)}`).join(",\n")}\n${indent}}`;
  }
  return JSON.stringify(value);
}

/** Change a folder's config.json (re-serialized: for tests that break configs on purpose). */
export function rewriteConfig(dir: string, edit: (config: Record<string, unknown>) => void): void {
  const config = readConfig(dir);
  edit(config);
  fs.writeFileSync(path.join(dir, "config.json"), `${stringifyPython(config)}\n`);
}

/** Value of `--flag V` in a case's args. */
export function flag(args: readonly string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

/** Differences between two in-memory checkpoints, as readable lines (empty when identical). */
export function compareTensors(actual: ReadonlyMap<string, Tensor>, expected: ReadonlyMap<string, Tensor>): string[] {
  const problems: string[] = [];
  for (const name of expected.keys()) if (!actual.has(name)) problems.push(`missing ${name}`);
  for (const name of actual.keys()) if (!expected.has(name)) problems.push(`unexpected ${name}`);
  for (const [name, e] of expected) {
    const a = actual.get(name);
    if (!a) continue;
    if (a.dtype !== e.dtype) problems.push(`${name}: dtype ${a.dtype} != ${e.dtype}`);
    else if (a.shape.join(",") !== e.shape.join(",")) problems.push(`${name}: shape [${a.shape}] != [${e.shape}]`);
    else if (Buffer.compare(Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength), Buffer.from(e.data.buffer, e.data.byteOffset, e.data.byteLength)) !== 0) {
      problems.push(`${name}: bytes differ`);
    }
  }
  return problems;
}

/** A small seeded generator (mulberry32), so a failing random case can be replayed from its seed. */
export interface Random {
  /** Uniform 32-bit unsigned integer. */
  u32(): number;
  /** Uniform integer in [0, n). */
  int(n: number): number;
  pick<T>(items: readonly T[]): T;
  /** A new array with the items in random order. */
  shuffle<T>(items: readonly T[]): T[];
}

export function seededRandom(seed: number): Random {
  const next = uniform(seed);
  // Exact: `uniform` is a 32-bit integer divided by 2^32.
  const u32 = (): number => next() * 2 ** 32;
  const int = (n: number): number => Math.floor((u32() / 2 ** 32) * n);
  return {
    u32,
    int,
    pick: (items) => items[int(items.length)]!,
    shuffle: (items) => {
      const out = [...items];
      for (let i = out.length - 1; i > 0; i--) {
        const j = int(i + 1);
        [out[i], out[j]] = [out[j]!, out[i]!];
      }
      return out;
    },
  };
}

/** The oracle case whose input is per-expert float32 and whose expected output is stacked bfloat16. */
export const f32ExpertsCase = path.join(oracleDir, "f32-experts-cast-to-bf16");

/** Every `.safetensors` file under `dir`, in a stable order. */
export function safetensorsFilesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const d of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const full = path.join(dir, d.name);
    if (d.isDirectory()) out.push(...safetensorsFilesUnder(full));
    else if (d.isFile() && d.name.endsWith(".safetensors")) out.push(full);
  }
  return out;
}

/** A local `.safetensors` file opened for synchronous reads (tests read fixtures this way). */
export function openSafetensors(file: string, name = file): SafetensorsFile {
  return SafetensorsFile.openSync(new FileSource(file, name));
}

/** A local checkpoint folder (or bare file) opened as the command line would open it. */
export async function openCheckpoint(location: string, options: SourceOptions = {}): Promise<Checkpoint> {
  return (await openSource(location, options)).checkpoint;
}
