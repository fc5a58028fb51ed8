import * as fs from "node:fs";
import * as path from "node:path";
import { synthesize } from "../src/node/synth.js";
import { RSS_HOOK, type Sample, cacheRoot, checkpoint, clear, cli, dirBytes, fmt, mb, median, rounds, table, timed, work } from "./lib.js";

/**
 * `convert --dequantize --to native` of an FP8 (ModelOpt, per-tensor scales) version of the bench
 * checkpoint, against `convert --to native` of the bf16 checkpoint in the same run, alternating. Target:
 * at most 1.5× the bf16 conversion's time. The FP8 input is about half the bytes; the output is the same.
 */

async function fp8Checkpoint(): Promise<string> {
  const dir = path.join(cacheRoot, "bench-fp8-x1-v2");
  if (!fs.existsSync(path.join(dir, "config.json"))) {
    process.stderr.write(`making the FP8 bench checkpoint in ${dir} (once; cached)…\n`);
    fs.rmSync(dir, { recursive: true, force: true });
    await synthesize(dir, { preset: "bench", quant: "fp8" });
  }
  return dir;
}

const run = (src: string, dst: string, dequantize: boolean): Sample =>
  timed(src, process.execPath, ["--import", RSS_HOOK, cli, "convert", ...(dequantize ? ["--dequantize"] : []), "--to", "native", "--quiet", src, dst]);

export async function dequantizeSection(): Promise<string> {
  const bf16 = await checkpoint(1);
  const fp8 = await fp8Checkpoint();
  const out = path.join(work, "dequantized");
  const samples: { plain: Sample; dequant: Sample }[] = [];
  for (let i = 0; i <= rounds; i++) {
    clear(out);
    const plain = run(bf16, out, false);
    clear(out);
    const dequant = run(fp8, out, true);
    clear(out);
    // The first round warms up and is not counted.
    if (i > 0) samples.push({ plain, dequant });
  }
  const plain = median(samples.map((s) => s.plain.seconds));
  const dequant = median(samples.map((s) => s.dequant.seconds));
  const row = (what: string, input: string, xs: Sample[], t: number): string[] => [
    what,
    mb(dirBytes(input)),
    fmt(t),
    `${Math.min(...xs.map((x) => x.seconds)).toFixed(2)}–${Math.max(...xs.map((x) => x.seconds)).toFixed(2)} s`,
    `${(t / plain).toFixed(2)}×`,
    mb(Math.max(...xs.map((x) => x.maxRssBytes ?? 0))),
  ];
  return (
    `FP8 (ModelOpt, per-tensor scales) version of the bench checkpoint, median of ${rounds} alternating runs:\n\n` +
    `${table(["", "input", "median", "range", "vs bf16 --to native", "peak RSS"], [
      row("convert --to native (bf16 input)", bf16, samples.map((s) => s.plain), plain),
      row("convert --dequantize --to native (FP8 input)", fp8, samples.map((s) => s.dequant), dequant),
    ])}\n`
  );
}
