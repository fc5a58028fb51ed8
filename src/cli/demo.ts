import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

/**
 * `npm run demo`: the main job on a built-in example, through the real command line. Synthesize a small
 * but structurally complete Omni checkpoint, convert it HF → native → HF, and prove the round trip exact.
 */
const cli = path.join(path.dirname(fileURLToPath(import.meta.url)), "bin.js");
const keep = process.argv.includes("--keep");
const work = fs.mkdtempSync(path.join(os.tmpdir(), "omni-ckpt-demo-"));

function step(title: string, args: string[]): void {
  process.stdout.write(`\n# ${title}\n$ omni-ckpt ${args.join(" ")}\n`);
  const r = spawnSync(process.execPath, [cli, ...args], { stdio: "inherit", cwd: work });
  if (r.status !== 0) {
    process.stderr.write(`demo: step failed with exit code ${r.status}; files kept in ${work}\n`);
    process.exit(1);
  }
}

process.stdout.write(`omni-ckpt demo, working in ${work}\n`);
step("Synthesize a small Omni checkpoint in the Hugging Face layout (sharded like the real one)", ["synth", "hf", "--preset", "small", "--max-shard-size", "1MB"]);
step("What is in it (headers only)", ["inspect", "hf"]);
step("Convert it to the NeMo Automodel layout: experts grouped into 3-D tensors", ["convert", "--to", "native", "hf", "native"]);
step("And back to the Hugging Face layout", ["convert", "--to", "hf", "native", "hf-again"]);
step("Compare the result with the original, tensor by tensor", ["diff", "hf", "hf-again"]);
step("verify does the same round trip in memory, writing nothing", ["verify", "hf"]);

process.stdout.write(`\nDemo passed: HF → native → HF returned every tensor bit for bit.\n`);
if (keep) process.stdout.write(`Files kept in ${work}\n`);
else fs.rmSync(work, { recursive: true, force: true });
