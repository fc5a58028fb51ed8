import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { INDEX_FILE } from "../../src/safetensors/checkpoint.js";
import { runCliAsync } from "../helpers/cli-async.js";
import { runCli, snapshot, startCli, tempDir } from "../helpers/cli.js";
import { compareTensors, consolidateDir, loadAll } from "../helpers/fixtures.js";

const work = tempDir();
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

const cases = fs.readdirSync(consolidateDir).filter((n) => fs.statSync(path.join(consolidateDir, n)).isDirectory()).sort();

const esc = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** Every file of a folder, name → bytes. */
function filesIn(dir: string): Map<string, Buffer> {
  return new Map(fs.readdirSync(dir).sort().map((f) => [f, fs.readFileSync(path.join(dir, f))]));
}

function indexOf(dir: string): { metadata: { total_size: number }; weight_map: Record<string, string> } {
  return JSON.parse(fs.readFileSync(path.join(dir, INDEX_FILE), "utf8")) as { metadata: { total_size: number }; weight_map: Record<string, string> };
}

/** Names beside `dst` that a run leaves (staging and state folders, locks, temporary folders). */
function leftovers(dst: string): string[] {
  const base = path.basename(dst);
  return fs.readdirSync(path.dirname(dst)).filter((n) => n.startsWith(`.${base}.omni-ckpt`));
}

describe("every consolidation fixture through the CLI", () => {
  for (const c of cases) {
    describe(c, () => {
      const input = path.join(consolidateDir, c, "input");
      const expected = path.join(consolidateDir, c, "expected");

      it("consolidates bit-identical to Automodel's consolidator, file for file, without touching SRC", () => {
        const before = snapshot(input);
        const dst = path.join(work, `${c}-consolidated`);
        const r = runCli(["consolidate", "-q", input, dst]);
        expect(r.stderr).toBe("");
        expect(r.code).toBe(0);
        expect(compareTensors(loadAll(dst), loadAll(expected))).toEqual([]);
        expect([...filesIn(dst).keys()]).toEqual([...filesIn(expected).keys()]);
        // Which tensor goes in which file, and the index's total, as Automodel's.
        const [a, e] = [indexOf(dst), indexOf(expected)];
        expect(a.metadata.total_size).toBe(e.metadata.total_size);
        expect(Object.fromEntries(Object.entries(a.weight_map).sort())).toEqual(Object.fromEntries(Object.entries(e.weight_map).sort()));
        for (const f of filesIn(expected).keys()) {
          if (!f.endsWith(".safetensors")) continue;
          // Same tensors in the same order inside each file (the mapping's order).
          const names = (dir: string): string[] => {
            const b = fs.readFileSync(path.join(dir, f));
            const h = JSON.parse(b.subarray(8, 8 + Number(b.readBigUInt64LE(0))).toString()) as Record<string, { data_offsets: [number, number] }>;
            return Object.entries(h).filter(([k]) => k !== "__metadata__").sort((x, y) => x[1].data_offsets[0] - y[1].data_offsets[0]).map(([k]) => k);
          };
          expect(names(dst)).toEqual(names(expected));
        }
        expect(fs.readFileSync(path.join(dst, "config.json"))).toEqual(fs.readFileSync(path.join(expected, "config.json")));
        expect(snapshot(input)).toEqual(before);
        expect(leftovers(dst)).toEqual([]);
      });

      it("converts --to native in one pass, identical to converting the expected output", () => {
        const direct = path.join(work, `${c}-native-direct`);
        const viaExpected = path.join(work, `${c}-native-expected`);
        const r = runCli(["convert", "--to", "native", "-q", input, direct]);
        expect(r.stderr).toBe("");
        expect(r.code).toBe(0);
        expect(runCli(["convert", "--to", "native", "-q", expected, viaExpected]).code).toBe(0);
        expect(compareTensors(loadAll(direct), loadAll(viaExpected))).toEqual([]);
        expect([...filesIn(direct).keys()]).toEqual([...filesIn(viaExpected).keys()]);
        expect(fs.readFileSync(path.join(direct, "config.json"))).toEqual(fs.readFileSync(path.join(viaExpected, "config.json")));
      });
    });
  }
});

describe("where SRC and DST may be", () => {
  const ckpt = path.join(work, "epoch_0_step_10");
  const model = path.join(ckpt, "model");
  const expected = path.join(consolidateDir, "tiny-w4-fsdp-ep2", "expected");
  beforeAll(() => fs.cpSync(path.join(consolidateDir, "tiny-w4-fsdp-ep2", "input"), model, { recursive: true }));

  it("DST may be model/consolidated, where Automodel puts it; the checkpoint folder above model/ is SRC too", () => {
    const dst = path.join(model, "consolidated");
    const r = runCli(["consolidate", ckpt, dst]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^consolidated 4 rank files \(378 pieces\) → 113 tensors, 38\.6 kB in 2 files \+ 1 other file, .* → .*model\/consolidated\n$/);
    expect(compareTensors(loadAll(dst), loadAll(expected))).toEqual([]);
    // The output inside SRC is not read as input the next time; spelled with a trailing "/." it is the same place.
    const again = runCli(["consolidate", "--force", "-q", model, `${dst}/.`]);
    expect(again.stderr).toBe("");
    expect(again.code).toBe(0);
  });

  it("any other DST inside SRC is refused", () => {
    const r = runCli(["consolidate", ckpt, path.join(ckpt, "hf")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`omni-ckpt: error: destination ${path.join(ckpt, "hf")} is inside the source folder; choose another\n`);
    const s = runCli(["consolidate", model, path.join(model, "consolidated", "x")]);
    expect(s.stderr).toBe(`omni-ckpt: error: destination ${path.join(model, "consolidated", "x")} is inside the source folder; choose another\n`);
  });

  it("a model/consolidated that is a link into SRC is not that place, even with --force", () => {
    const linked = path.join(work, "epoch_0_step_11");
    fs.cpSync(ckpt, linked, { recursive: true });
    fs.rmSync(path.join(linked, "model", "consolidated"), { recursive: true, force: true });
    fs.symlinkSync(".hf_metadata", path.join(linked, "model", "consolidated"));
    const before = snapshot(linked);
    const r = runCli(["consolidate", "--force", linked, path.join(linked, "model", "consolidated")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`omni-ckpt: error: destination ${path.join(linked, "model", "consolidated")} is inside the source folder; choose another\n`);
    expect(snapshot(linked)).toEqual(before);
  });

  it("a folder that is no sharded save is named as such", () => {
    const r = runCli(["consolidate", expected, path.join(work, "nothing")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      `omni-ckpt: error: ${expected}: not a sharded training save: no rank files (shard-00001-model-00001-of-00001.safetensors, …) or .hf_metadata/fqn_to_file_index_mapping.json here or in ${path.join(expected, "model")}\n`,
    );
  });

  it("convert --to hf points to consolidate", () => {
    const r = runCli(["convert", "--to", "hf", model, path.join(work, "to-hf")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`omni-ckpt: error: ${model}: a sharded training save already has Hugging Face (HF) names; omni-ckpt consolidate assembles it into an HF checkpoint\n`);
  });
});

describe("a broken save through the CLI", () => {
  it("every problem on a line of its own, exit 2, no DST and nothing left beside it", () => {
    const src = path.join(work, "lost-rank");
    fs.cpSync(path.join(consolidateDir, "tiny-w2-fsdp", "input"), src, { recursive: true });
    fs.rmSync(path.join(src, "shard-00002-model-00001-of-00001.safetensors"));
    const dst = path.join(work, "lost-rank-out");
    const r = runCli(["consolidate", src, dst]);
    expect(r.code).toBe(2);
    const lines = r.stderr.trimEnd().split("\n");
    expect(lines[0]).toMatch(
      new RegExp(
        `^omni-ckpt: error: ${esc(path.join(src, "shard-00002-model-00001-of-00001.safetensors"))}: may be missing: \\d+ tensors whose shape the config gives come out short \\(the first, "vision_model\\.radio_model\\.model\\.patch_generator\\.embedder\\.weight", ends at 4 of 8 on axis 0\\), as when the last rank's file is lost$`,
      ),
    );
    expect(lines.every((l) => l.startsWith("omni-ckpt: error: ") || /^omni-ckpt: … and \d+ more$/.test(l))).toBe(true);
    expect(lines).toContain(
      `omni-ckpt: error: ${src}: tensor "language_model.backbone.embeddings.weight": no piece holds elements [32:64, 0:16] of [64, 16] (512 of 1024 elements are in no rank file): the pieces end at 32 on axis 0 but the config gives 64 (vocab_size 64, hidden_size 16); a rank file may be missing`,
    );
    // Fifty lines at most, then how many more; inspect lists them all.
    const all = (JSON.parse(runCli(["inspect", "--json", src]).stdout) as { problems: string[] }).problems;
    expect(all.length).toBeGreaterThan(50);
    expect(lines.length).toBe(51);
    expect(lines[50]).toBe(`omni-ckpt: … and ${all.length - 50} more`);
    expect(lines.slice(0, 50)).toEqual(all.slice(0, 50).map((l) => `omni-ckpt: error: ${l}`));
    expect(all).toContain(`${path.join(src, ".hf_metadata/fqn_to_file_index_mapping.json")}: tensor "vision_model.radio_model.input_conditioner.norm_std": is listed for output file 1, but no rank file holds a piece of it`);
    expect(fs.existsSync(dst)).toBe(false);
    expect(leftovers(dst)).toEqual([]);

    const inspect = runCli(["inspect", src]);
    expect(inspect.code).toBe(2);
    expect(inspect.stdout).toMatch(/\ncannot be consolidated: \d+ problems\n/);
    expect(inspect.stderr).toMatch(/^omni-ckpt: error: .*lost-rank: cannot be consolidated \(\d+ problems, listed above\)\n$/);
  });
});

describe("inspect of a sharded save", () => {
  it("ranks, pieces, what consolidate would write", () => {
    const input = path.join(consolidateDir, "tiny-w4-fsdp-ep2", "input");
    const r = runCli(["inspect", input]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`${input}: NeMo Automodel sharded training save, 4 rank files, 378 pieces (6 empty), 38.6 kB\n`);
    expect(r.stdout).toContain("113 tensors, 24 of them in column pieces (expert parallelism); mapping: 113 tensors into 2 output files; dtype mapping: 101 entries\n");
    expect(r.stdout).toContain("consolidate would write 113 tensors, 38.6 kB in 2 files:\n  model-00001-of-00002.safetensors  61 tensors, 20.8 kB\n  model-00002-of-00002.safetensors  52 tensors, 17.8 kB");
    const j = JSON.parse(runCli(["inspect", "--json", input]).stdout) as { kind: string; ranks: unknown[]; problems: unknown[] };
    expect(j.kind).toBe("sharded-save");
    expect(j.ranks.length).toBe(4);
    expect(j.problems).toEqual([]);
  });
});

describe("many processes (--part K/N)", () => {
  const hf = path.join(work, "parts-hf");
  const src = path.join(work, "parts-save");
  const single = path.join(work, "parts-single");
  beforeAll(() => {
    expect(runCli(["synth", hf, "--preset", "small", "--max-shard-size", "50KB"]).code).toBe(0);
    expect(runCli(["synth-save", hf, src, "--world", "4", "--ep", "2"]).code).toBe(0);
    expect(runCli(["consolidate", "-q", src, single]).code).toBe(0);
  });

  it("N concurrent parts, one SIGKILLed midway and rerun alone, give exactly the single-process output", async () => {
    const dst = path.join(work, "parts-out");
    // The victim writes slowly (each chunk held 1.5 s, six at a time), so it is surely midway when killed.
    const victim = startCli(["consolidate", "--part", "2/3", src, dst], { env: { OMNI_CKPT_FAULT: "delay-ms=1500" } });
    const exited = new Promise<void>((resolve) => victim.on("exit", () => resolve()));
    const others = [runCliAsync(["consolidate", "--part", "1/3", src, dst]), runCliAsync(["consolidate", "--part", "3/3", src, dst])];
    // Wait until the victim has begun writing its files into the run's staging folder, then kill it.
    const staging = (): string | undefined => leftovers(dst).find((n) => /\.omni-ckpt-run-[0-9a-f]{16}$/.test(n));
    const lock = (): boolean => {
      const s = staging();
      return s !== undefined && fs.existsSync(path.join(path.dirname(dst), `${s}.state`, "part-2-of-3.lock"));
    };
    for (let i = 0; i < 500 && !lock(); i++) await new Promise((r) => setTimeout(r, 20));
    expect(lock()).toBe(true);
    await new Promise((r) => setTimeout(r, 500));
    victim.kill("SIGKILL");
    await exited;
    const done = await Promise.all(others);
    for (const r of done) {
      expect(r.code).toBe(0);
      expect(r.stdout, r.stdout + r.stderr).toMatch(/^part [13]\/3: wrote \d+ of \d+ output files in .*; waiting for part/);
    }
    expect(fs.existsSync(dst)).toBe(false);
    const state = path.join(path.dirname(dst), `${staging()!}.state`);
    // (A heartbeat's temporary file may be left too, if the kill fell between its write and its rename.)
    expect(fs.readdirSync(state).filter((n) => !n.endsWith(".tmp")).sort()).toEqual(["part-1-of-3.done", "part-2-of-3.lock", "part-3-of-3.done", "run.json"]);

    const rerun = runCli(["consolidate", "--part", "2/3", src, dst]);
    expect(rerun.code).toBe(0);
    expect(rerun.stderr).toMatch(/^omni-ckpt: took over part 2\/3 from pid \d+, which stopped without finishing\n(omni-ckpt: removed \d+ files? of part 2\/3 left half-written by an interrupted run of it\n)?$/);
    expect(rerun.stdout).toMatch(/^part 2\/3: wrote \d+ of \d+ output files in .*; all 3 parts done: consolidated 4 rank files \(\d+ pieces\) → \d+ tensors, [0-9.]+ MB in \d+ files \+ \d+ other files → /);
    expect(filesIn(dst)).toEqual(filesIn(single));
    expect(leftovers(dst)).toEqual([]);
  });

  it("Ctrl-C of a part removes what it wrote and its lock; the run's other parts stay", async () => {
    const dst = path.join(work, "parts-sigint");
    expect(runCli(["consolidate", "-q", "--part", "1/2", src, dst]).code).toBe(0);
    const staging = leftovers(dst).find((n) => !n.endsWith(".state"))!;
    const mine = fs.readdirSync(path.join(work, staging)).sort();
    const child = startCli(["consolidate", "--part", "2/2", src, dst], { env: { OMNI_CKPT_FAULT: "delay-ms=1500" } });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const code = new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
    const lock = path.join(work, `${staging}.state`, "part-2-of-2.lock");
    for (let i = 0; i < 500 && !fs.existsSync(lock); i++) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 500));
    child.kill("SIGINT");
    expect(await code).toBe(130);
    expect(stderr).toBe("omni-ckpt: interrupted by SIGINT; the partial output was removed\n");
    expect(fs.readdirSync(path.join(work, staging)).sort()).toEqual(mine);
    expect(fs.readdirSync(path.join(work, `${staging}.state`)).sort()).toEqual(["part-1-of-2.done", "run.json"]);
  });

  it("K and N from the launcher's environment", () => {
    const dst = path.join(work, "parts-env");
    const a = runCli(["consolidate", src, dst], { env: { RANK: "1", WORLD_SIZE: "2" } });
    expect(a.code).toBe(0);
    expect(a.stderr).toBe("omni-ckpt: part 2/2 (RANK=1, WORLD_SIZE=2 from the launcher; --parts 1 runs a single process)\n");
    expect(a.stdout).toMatch(/^part 2\/2: wrote \d+ of \d+ output files in .*; waiting for part 1 /);
  });

  it("--parts with no number before SRC and DST (as in srun … consolidate --parts SRC DST)", () => {
    const dst = path.join(work, "parts-bare");
    const a = runCli(["consolidate", "--parts", src, dst], { env: { SLURM_PROCID: "0", SLURM_NTASKS: "2" } });
    expect(a.stderr).toBe("omni-ckpt: part 1/2 (SLURM_PROCID=0, SLURM_NTASKS=2 from the launcher; --parts 1 runs a single process)\n");
    expect(a.code).toBe(0);
    const b = runCli(["consolidate", "-q", "--parts", src, dst], { env: { SLURM_PROCID: "1", SLURM_NTASKS: "2" } });
    expect(b.code).toBe(0);
    expect(fs.readdirSync(dst).sort()).toEqual(fs.readdirSync(single).sort());
  });
});
