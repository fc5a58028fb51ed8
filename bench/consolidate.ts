import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { synthesizeSave } from "../src/node/synth-save.js";
import { RSS_HOOK, type Sample, cacheRoot, checkpoint, clear, cli, dirBytes, durableCopy, fmt, mb, median, rounds, settle, table, timed, work } from "./lib.js";

/**
 * Consolidating a NeMo Automodel sharded training save (issue 13): a W=4 save of the bench checkpoint
 * (ep_shard 2 × ep 2, so every expert in column pieces; the mapping cut at 300 MB, 4 output files),
 * against `cp -r` + `sync` of the same folder, single process and split in 2 parts run concurrently. The
 * peer to beat: Automodel's consolidator, 8.0 s and 312 MB on a W=4 save of an 850 MB checkpoint with
 * column-pieced experts (issue 13's measurement, where `cp -r` took 0.22 s).
 */

async function save(): Promise<string> {
  const hf = await checkpoint(1);
  // Keyed by the HF checkpoint it is made from, so a new bench checkpoint makes a new save.
  const dir = path.join(cacheRoot, `save-w4-ep2-of-${path.basename(hf)}`, "model");
  if (!fs.existsSync(path.join(dir, ".hf_metadata", "fqn_to_file_index_mapping.json"))) {
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
    process.stderr.write(`making the bench's sharded save in ${dir} (once; cached)…\n`);
    await synthesizeSave(hf, dir, { world: 4, ep: 2, maxFileSize: 300_000_000 });
  }
  return dir;
}

/** Several commands started together; the sample is the time until the last ends, and the largest peak RSS. */
function timedTogether(input: string, commands: readonly string[][]): Promise<Sample> {
  settle(input);
  const t0 = performance.now();
  return Promise.all(
    commands.map(
      (args) =>
        new Promise<number>((resolve, reject) => {
          const child = spawn(process.execPath, ["--import", RSS_HOOK, cli, ...args], { stdio: ["ignore", "ignore", "pipe"] });
          let stderr = "";
          child.stderr.setEncoding("utf8").on("data", (s: string) => (stderr += s));
          child.on("error", reject);
          child.on("close", (code) => {
            if (code !== 0) reject(new Error(`${args.join(" ")} failed (${code}): ${stderr}`));
            else resolve(Number(/maxrss_kb=(\d+)/.exec(stderr)?.[1] ?? 0) * 1024);
          });
        }),
    ),
  ).then((rss) => ({ seconds: (performance.now() - t0) / 1000, maxRssBytes: Math.max(...rss) }));
}

interface Round {
  readonly cp: Sample;
  readonly durable: Sample;
  readonly single: Sample;
  readonly parts: Sample;
  readonly native: Sample;
}

async function round(src: string): Promise<Round> {
  const copy = path.join(work, "save-copy");
  const out = path.join(work, "consolidated");
  const native = path.join(work, "save-native");
  for (const p of [copy, out, native]) clear(p);
  const cp = timed(src, "cp", ["-r", src, copy]);
  clear(copy);
  const durable = durableCopy(src, copy);
  clear(copy);
  const single = timed(src, process.execPath, ["--import", RSS_HOOK, cli, "consolidate", "--quiet", src, out]);
  clear(out);
  const parts = await timedTogether(src, [1, 2].map((k) => ["consolidate", "--quiet", "--part", `${k}/2`, src, out]));
  clear(out);
  const n = timed(src, process.execPath, ["--import", RSS_HOOK, cli, "convert", "--to", "native", "--quiet", src, native]);
  clear(native);
  return { cp, durable, single, parts, native: n };
}

export async function consolidateSection(): Promise<string> {
  const src = await save();
  const bytes = dirBytes(src);
  const files = fs.readdirSync(src).filter((f) => f.endsWith(".safetensors")).length;
  await round(src); // warm-up, not counted
  const samples: Round[] = [];
  for (let i = 0; i < rounds; i++) samples.push(await round(src));
  const pick = (k: keyof Round): number[] => samples.map((r) => r[k].seconds);
  const rows: [string, keyof Round][] = [
    ["cp -r (the save's model/ folder)", "cp"],
    ["cp -r + sync", "durable"],
    ["consolidate (1 process)", "single"],
    ["consolidate --part 1/2 + 2/2 (2 processes)", "parts"],
    ["convert --to native (from the save)", "native"],
  ];
  const body = rows.map(([what, k]) => {
    const xs = pick(k);
    const t = median(xs);
    const rss = Math.max(...samples.map((r) => r[k].maxRssBytes ?? 0));
    return [what, fmt(t), `${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)} s`, `${(t / median(pick("durable"))).toFixed(2)}×`, `${(bytes / t / 1e6).toFixed(0)} MB/s`, rss ? mb(rss) : "-"];
  });
  return (
    `sharded save: the bench checkpoint on W=4 ranks (ep_shard 2 × ep 2: experts in column pieces), ${files} rank files, ${mb(bytes)}, 4 output files\n\n` +
    `${table(["", "median", "range", "vs cp -r + sync", "throughput", "peak RSS"], body)}\n`
  );
}
