import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { synthesize } from "../src/node/synth.js";

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

const cli = path.join(path.dirname(fileURLToPath(import.meta.url)), "../src/cli/bin.js");
const rounds = Number(process.env["BENCH_ROUNDS"] ?? 5);
/** Rounds at 4× the size: single runs there swing by 2–5× on this VM, so a median of a few. */
const bigRounds = Number(process.env["BENCH_BIG_ROUNDS"] ?? 3);
const cacheRoot = path.join(os.tmpdir(), "omni-ckpt-bench");
const work = path.join(cacheRoot, "work");

// The child reports its own peak RSS on exit: no external `time` needed.
const RSS_HOOK = `data:text/javascript,process.on("exit",()=>process.stderr.write("\\nmaxrss_kb="+process.resourceUsage().maxRSS+"\\n"))`;

interface Sample {
  readonly seconds: number;
  readonly maxRssBytes?: number;
}

function dirBytes(dir: string): number {
  let n = 0;
  for (const name of fs.readdirSync(dir)) {
    const p = path.join(dir, name);
    const st = fs.statSync(p);
    n += st.isDirectory() ? dirBytes(p) : st.size;
  }
  return n;
}

async function checkpoint(scale: number): Promise<string> {
  const dir = path.join(cacheRoot, `bench-x${scale}-v1`);
  if (!fs.existsSync(path.join(dir, "config.json"))) {
    process.stderr.write(`making the bench checkpoint ×${scale} in ${dir} (once; cached)…\n`);
    fs.rmSync(dir, { recursive: true, force: true });
    await synthesize(dir, { preset: "bench", scale });
  }
  return dir;
}

/** Read every file once so every timed run starts from a warm page cache. */
function warm(dir: string): void {
  for (const name of fs.readdirSync(dir)) {
    const p = path.join(dir, name);
    if (fs.statSync(p).isDirectory()) warm(p);
    else {
      const fd = fs.openSync(p, "r");
      const buf = Buffer.allocUnsafe(16 << 20);
      while (fs.readSync(fd, buf, 0, buf.length, null) > 0);
      fs.closeSync(fd);
    }
  }
}

/**
 * Give the kernel as much recently freed memory as a run will write, by writing and deleting a scratch
 * file of that size. On a VM whose guest hands free memory back to the host (virtio-balloon free page
 * reporting, as on the machine these numbers come from), page cache that grows into memory the host took
 * back costs up to ~10× the system time of reusing freed pages (perf: the time sits in the kernel's copy
 * into new page-cache pages). The host may take the scratch back too; this only evens the odds.
 */
const EQUALIZE_MARGIN = 256 * 1024 * 1024;

function equalizeMemory(bytes: number): void {
  const scratch = path.join(work, "scratch");
  const fd = fs.openSync(scratch, "w");
  const block = Buffer.alloc(16 << 20, 1);
  for (let done = 0; done < bytes; done += block.length) fs.writeSync(fd, block);
  fs.closeSync(fd);
  fs.rmSync(scratch);
}

/**
 * Start every timed command from the same state: earlier output flushed (so no run pays for the previous
 * one's writeback), freed memory to write into, and the input read just before, because a VM's kernel
 * (DAMON here) may page out memory, page cache included, that has not been touched for a while.
 */
function settle(input: string): void {
  spawnSync("sync");
  // What the command writes, plus room for a converter's own memory, so neither side starts short.
  equalizeMemory(dirBytes(input) + EQUALIZE_MARGIN);
  warm(input);
}

function timed(input: string, cmd: string, args: string[]): Sample {
  settle(input);
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "ignore", "pipe"] });
  const seconds = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.status}): ${r.stderr}`);
  const m = /maxrss_kb=(\d+)/.exec(r.stderr ?? "");
  return m ? { seconds, maxRssBytes: Number(m[1]) * 1024 } : { seconds };
}

function clear(p: string): void {
  fs.rmSync(p, { recursive: true, force: true });
}

const convert = (to: string, src: string, dst: string): Sample =>
  timed(src, process.execPath, ["--import", RSS_HOOK, cli, "convert", "--to", to, "--quiet", src, dst]);

interface Round {
  readonly cpHf: Sample;
  /** `cp -r` then `sync` of what it wrote: the same bytes made durable, as a conversion makes its output. */
  readonly durableHf: Sample;
  readonly native: Sample;
  readonly cpNative: Sample;
  readonly durableNative: Sample;
  readonly hf: Sample;
}

/** `cp -r` followed by coreutils' `sync` of each file written and of the folder (fsync). */
const durableCopy = (src: string, dst: string): Sample =>
  timed(src, "sh", ["-c", 'cp -r "$1" "$2" && sync "$2"/* "$2"', "sh", src, dst]);

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

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};
const mb = (n: number): string => `${(n / 1e6).toFixed(0)} MB`;
const fmt = (s: number): string => `${s.toFixed(2)} s`;

async function main(): Promise<void> {
  fs.mkdirSync(work, { recursive: true });
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
  clear(work);

  // The real model's shapes (68 GB, sparse): how long header-only work takes at full scale.
  const real = path.join(cacheRoot, "nano-omni-30b-sparse-v1");
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

  const table = (header: string[], body: string[][]): string => {
    const all = [header, ...body];
    const w = header.map((_, c) => Math.max(...all.map((r) => r[c]!.length)));
    return all.map((r, i) => `| ${r.map((x, c) => (c === 0 ? x.padEnd(w[c]!) : x.padStart(w[c]!))).join(" | ")} |${i === 0 ? `\n|${w.map((x, c) => (c === 0 ? `:${"-".repeat(x + 1)}` : `${"-".repeat(x + 1)}:`)).join("|")}|` : ""}`).join("\n");
  };
  const out = process.stdout;
  out.write(`\nomni-ckpt bench — ${os.cpus().length} cores, Node ${process.version}, page cache warm, median of ${rounds} alternating runs\n`);
  out.write(`checkpoint: synthetic "bench" preset, ${mb(bytes)} (largest output tensor ${mb(largest)})\n\n`);
  const columns = ["", "median", "range", "vs cp -r of its input", "vs cp -r + sync", "throughput"];
  out.write(`${table([...columns, "peak RSS"], rows)}\n\n`);
  out.write(`same checkpoint at 4× (${mb(bigBytes)}), median of ${bigRounds} alternating runs:\n\n`);
  out.write(`${table([...columns, "vs 1× median", "peak RSS"], bigRows)}\n\n`);
  out.write(`inspect of the real model's shapes (nano-omni-30b, ${mb(dirBytes(real))} sparse, ${fs.readdirSync(real).filter((f) => f.endsWith(".safetensors")).length} shards): ${fmt(median(inspectTimes))}, headers only\n`);
}

/** The largest tensor a conversion of the bench model writes: one grouped expert tensor. */
function largestTensorBytes(dir: string): number {
  const config = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")) as { llm_config: { n_routed_experts: number; hidden_size: number; moe_intermediate_size: number; vocab_size: number } };
  const c = config.llm_config;
  return Math.max(c.n_routed_experts * c.hidden_size * c.moe_intermediate_size, c.vocab_size * c.hidden_size) * 2;
}

main().catch((e: unknown) => {
  process.stderr.write(`bench failed: ${(e as Error).message}\n`);
  process.exit(1);
});
