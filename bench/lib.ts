import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { synthesize } from "../src/node/synth.js";

/**
 * What every bench section shares: the synthetic checkpoints (made once, cached under the OS temp
 * folder), timed runs that start from the same state, and the table layout. A section is a module of its
 * own (`bench/<topic>.ts`) that `bench.ts` runs; `BENCH_ONLY=a,b` runs only the named sections.
 */

export const cli = path.join(path.dirname(fileURLToPath(import.meta.url)), "../src/cli/bin.js");
export const rounds = Number(process.env["BENCH_ROUNDS"] ?? 5);
/** Rounds at 4× the size: single runs there swing by 2–5× on this VM, so a median of a few. */
export const bigRounds = Number(process.env["BENCH_BIG_ROUNDS"] ?? 3);
export const cacheRoot = path.join(os.tmpdir(), "omni-ckpt-bench");
export const work = path.join(cacheRoot, "work");

// The child reports its own peak RSS on exit: no external `time` needed.
export const RSS_HOOK = `data:text/javascript,process.on("exit",()=>process.stderr.write("\\nmaxrss_kb="+process.resourceUsage().maxRSS+"\\n"))`;

export interface Sample {
  readonly seconds: number;
  readonly maxRssBytes?: number;
}

export function dirBytes(dir: string): number {
  let n = 0;
  for (const name of fs.readdirSync(dir)) {
    const p = path.join(dir, name);
    const st = fs.statSync(p);
    n += st.isDirectory() ? dirBytes(p) : st.size;
  }
  return n;
}

export async function checkpoint(scale: number): Promise<string> {
  const dir = path.join(cacheRoot, `bench-x${scale}-v2`);
  if (!fs.existsSync(path.join(dir, "config.json"))) {
    process.stderr.write(`making the bench checkpoint ×${scale} in ${dir} (once; cached)…\n`);
    fs.rmSync(dir, { recursive: true, force: true });
    await synthesize(dir, { preset: "bench", scale });
  }
  return dir;
}

/** Read every file once so every timed run starts from a warm page cache. */
export function warm(dir: string): void {
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
export function settle(input: string): void {
  spawnSync("sync");
  // What the command writes, plus room for a converter's own memory, so neither side starts short.
  equalizeMemory(dirBytes(input) + EQUALIZE_MARGIN);
  warm(input);
}

export function timed(input: string, cmd: string, args: string[]): Sample {
  settle(input);
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "ignore", "pipe"] });
  const seconds = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.status}): ${r.stderr}`);
  const m = /maxrss_kb=(\d+)/.exec(r.stderr ?? "");
  return m ? { seconds, maxRssBytes: Number(m[1]) * 1024 } : { seconds };
}

export function clear(p: string): void {
  fs.rmSync(p, { recursive: true, force: true });
}

export const convert = (to: string, src: string, dst: string): Sample =>
  timed(src, process.execPath, ["--import", RSS_HOOK, cli, "convert", "--to", to, "--quiet", src, dst]);

/** `cp -r` followed by coreutils' `sync` of each file written and of the folder (fsync). */
export const durableCopy = (src: string, dst: string): Sample =>
  timed(src, "sh", ["-c", 'cp -r "$1" "$2" && sync "$2"/* "$2"', "sh", src, dst]);

export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};
export const mb = (n: number): string => `${(n / 1e6).toFixed(0)} MB`;
export const fmt = (s: number): string => `${s.toFixed(2)} s`;


/** A markdown table: first column left-aligned, the others right-aligned. */
export function table(header: string[], body: string[][]): string {
  const all = [header, ...body];
  const w = header.map((_, c) => Math.max(...all.map((r) => r[c]!.length)));
  return all
    .map((r, i) => `| ${r.map((x, c) => (c === 0 ? x.padEnd(w[c]!) : x.padStart(w[c]!))).join(" | ")} |${i === 0 ? `\n|${w.map((x, c) => (c === 0 ? `:${"-".repeat(x + 1)}` : `${"-".repeat(x + 1)}:`)).join("|")}|` : ""}`)
    .join("\n");
}

/** Whether a section was asked for (all of them without BENCH_ONLY). */
export function wanted(section: string): boolean {
  const only = process.env["BENCH_ONLY"];
  return !only || only.split(",").map((s) => s.trim()).includes(section);
}
