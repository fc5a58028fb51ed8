import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { synthesize } from "../src/node/synth.js";
import { parseConfigText } from "../src/safetensors/checkpoint.js";
import { dequantizeSection } from "./dequantize.js";
import { httpSection } from "./http.js";
import { loraSection } from "./lora.js";
import { consolidateSection } from "./consolidate.js";
import {
  type Sample,
  bigRounds,
  cacheRoot,
  checkpoint,
  clear,
  cli,
  convert,
  dirBytes,
  durableCopy,
  fmt,
  mb,
  median,
  rounds,
  table,
  timed,
  wanted,
  work,
} from "./lib.js";

/**
 * `npm run bench`: conversion speed against the physical limit, copying the same bytes. In one run and
 * alternating, it times `cp -r` of the synthetic `bench` checkpoint (~1 GB, real-model proportions),
 * `convert --to native` of it and `convert --to hf` of that result (BENCH_ROUNDS rounds, 5 by default),
 * then does the same at 4× the size (BENCH_BIG_ROUNDS, 3). Prints medians, ratios to `cp -r`, throughput
 * and the converter's peak RSS. Every timed run starts with its input freshly read into the page cache
 * and no writeback pending. A conversion syncs its output
 * to disk before renaming it into place, which `cp -r` does not, so each round also times `cp -r` followed
 * by `sync` of the copy: the floor for writing the same bytes durably, shown as a second ratio.
 */

interface Round {
  readonly cpHf: Sample;
  /** `cp -r` then `sync` of what it wrote: the same bytes made durable, as a conversion makes its output. */
  readonly durableHf: Sample;
  readonly native: Sample;
  readonly cpNative: Sample;
  readonly durableNative: Sample;
  readonly hf: Sample;
}

/**
 * One round: each conversion is compared with `cp -r` of its own input folder, run just before it in the
 * same state (for `--to hf` that input is the native folder the round just wrote).
 */
function runRound(src: string): Round {
  const copy = path.join(work, "copy");
  const native = path.join(work, "native");
  const hf = path.join(work, "hf");
  for (const p of [copy, native, hf]) clear(p);
  const cpHf = timed(src, "cp", ["-r", src, copy]);
  clear(copy);
  const durableHf = durableCopy(src, copy);
  clear(copy);
  const n = convert("native", src, native);
  const cpNative = timed(native, "cp", ["-r", native, copy]);
  clear(copy);
  const durableNative = durableCopy(native, copy);
  clear(copy);
  const h = convert("hf", native, hf);
  for (const p of [native, hf]) clear(p);
  return { cpHf, durableHf, native: n, cpNative, durableNative, hf: h };
}

/** The conversion rows: `convert` both ways against `cp -r` (+ sync) of the same folders, at 1× and 4×. */
async function conversionSection(): Promise<string> {
  const base = await checkpoint(1);
  const bytes = dirBytes(base);
  const largest = largestTensorBytes(base);
  runRound(base); // warm-up, not counted
  const samples = Array.from({ length: rounds }, () => runRound(base));

  const big = await checkpoint(4);
  const bigBytes = dirBytes(big);
  const bigSamples = Array.from({ length: bigRounds }, () => runRound(big));
  /**
   * One table: each row's median, range, ratios to the plain and the durable copy of its own input,
   * throughput and peak RSS, and with `base` given, its median against the same row at 1×.
   */
  const tableOf = (all: Round[], size: number, base?: Round[]): string[][] => {
    const pick = (rs: Round[], k: keyof Round): number[] => rs.map((r) => r[k].seconds);
    const rows: [string, keyof Round, keyof Round, keyof Round][] = [
      ["cp -r (HF folder)", "cpHf", "cpHf", "durableHf"],
      ["cp -r + sync (HF folder)", "durableHf", "cpHf", "durableHf"],
      ["convert --to native", "native", "cpHf", "durableHf"],
      ["cp -r (native folder)", "cpNative", "cpNative", "durableNative"],
      ["cp -r + sync (native folder)", "durableNative", "cpNative", "durableNative"],
      ["convert --to hf", "hf", "cpNative", "durableNative"],
    ];
    return rows.map(([what, k, cp, durable]) => {
      const xs = pick(all, k);
      const t = median(xs);
      const ratio = (ys: number[]): string => `${(t / median(ys)).toFixed(2)}×`;
      const rss = Math.max(...all.map((r) => r[k].maxRssBytes ?? 0));
      const range = `${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)} s`;
      const row = [what, fmt(t), range, ratio(pick(all, cp)), ratio(pick(all, durable)), `${(size / t / 1e6).toFixed(0)} MB/s`];
      return [...row, ...(base ? [ratio(pick(base, k))] : []), rss ? mb(rss) : "-"];
    });
  };
  const rows = tableOf(samples, bytes);
  const bigRows = tableOf(bigSamples, bigBytes, samples);

  const columns = ["", "median", "range", "vs cp -r of its input", "vs cp -r + sync", "throughput"];
  return (
    `checkpoint: synthetic "bench" preset, ${mb(bytes)} (largest output tensor ${mb(largest)})\n\n` +
    `${table([...columns, "peak RSS"], rows)}\n\n` +
    `same checkpoint at 4× (${mb(bigBytes)}), median of ${bigRounds} alternating runs:\n\n` +
    `${table([...columns, "vs 1× median", "peak RSS"], bigRows)}\n`
  );
}

/** The real model's shapes (sparse): how long header-only work takes at full scale. */
async function inspectSection(): Promise<string> {
  const real = path.join(cacheRoot, "nano-omni-30b-sparse-v2");
  if (!fs.existsSync(path.join(real, "config.json"))) {
    fs.rmSync(real, { recursive: true, force: true });
    await synthesize(real, { preset: "nano-omni-30b", sparse: true });
  }
  // Headers only: no settling, no warming (that would read 68 GB of holes).
  const inspectTimes = Array.from({ length: 3 }, () => {
    const t0 = performance.now();
    const r = spawnSync(process.execPath, [cli, "inspect", real], { stdio: "ignore" });
    if (r.status !== 0) throw new Error("inspect of the sparse real-size checkpoint failed");
    return (performance.now() - t0) / 1000;
  });

  const shards = fs.readdirSync(real).filter((f) => f.endsWith(".safetensors")).length;
  return `inspect of the real model's shapes (nano-omni-30b, ${mb(dirBytes(real))} sparse, ${shards} shards): ${fmt(median(inspectTimes))}, headers only\n`;
}

/**
 * Every section, in order; each returns its text. A new capability adds its section here, from a module
 * of its own.
 */
const SECTIONS: readonly (readonly [string, () => Promise<string>])[] = [
  ["convert", conversionSection],
  ["inspect", inspectSection],
  ["dequantize", dequantizeSection],
  ["http", httpSection],
  ["lora", loraSection],
  ["consolidate", consolidateSection],
];

async function main(): Promise<void> {
  fs.mkdirSync(work, { recursive: true });
  const out = process.stdout;
  out.write(`\nomni-ckpt bench — ${os.cpus().length} cores, Node ${process.version}, page cache warm, median of ${rounds} alternating runs\n\n`);
  for (const [name, section] of SECTIONS) {
    if (!wanted(name)) continue;
    out.write(`${await section()}\n`);
  }
  clear(work);
}

/** The largest tensor a conversion of the bench model writes: one grouped expert tensor. */
function largestTensorBytes(dir: string): number {
  const file = path.join(dir, "config.json");
  // Read as the library reads configs: the synthetic one, like the release's, holds Python's Infinity.
  const config = parseConfigText(fs.readFileSync(file, "utf8"), file).values as { llm_config: { n_routed_experts: number; hidden_size: number; moe_intermediate_size: number; vocab_size: number } };
  const c = config.llm_config;
  return Math.max(c.n_routed_experts * c.hidden_size * c.moe_intermediate_size, c.vocab_size * c.hidden_size) * 2;
}

main().catch((e: unknown) => {
  process.stderr.write(`bench failed: ${(e as Error).message}\n`);
  process.exit(1);
});
