import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bareParts, resolvePart } from "../../src/cli/commands/consolidate.js";
import { type ConsolidateRequest, consolidateCheckpoint } from "../../src/node/consolidate.js";
import { synthesize } from "../../src/node/synth.js";
import { synthesizeSave } from "../../src/node/synth-save.js";
import { tempDir } from "../helpers/cli.js";

/**
 * The split-run machinery in this process (the spawned, concurrent and killed parts are in
 * test/cli/consolidate-cli.test.ts): other runs refused, --finish, locks of parts on other machines.
 */

const work = tempDir();
const hf = path.join(work, "hf");
const src = path.join(work, "save");
const single = path.join(work, "single");
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));
beforeAll(async () => {
  await synthesize(hf, { preset: "tiny", maxShardSize: 8000 });
  await synthesizeSave(hf, src, { world: 3 });
  await consolidateCheckpoint({ src, dst: single });
});

function filesIn(dir: string): Map<string, Buffer> {
  return new Map(fs.readdirSync(dir).sort().map((f) => [f, fs.readFileSync(path.join(dir, f))]));
}

function beside(dst: string): string[] {
  return fs.readdirSync(path.dirname(dst)).filter((n) => n.startsWith(`.${path.basename(dst)}.omni-ckpt`)).sort();
}

const run = (dst: string, more: Partial<ConsolidateRequest> = {}) => consolidateCheckpoint({ src, dst, ...more });

describe("a split run", () => {
  it("parts write disjoint files; the last one commits what one process writes", async () => {
    const dst = path.join(work, "three");
    const a = await run(dst, { part: { index: 1, count: 3 } });
    const b = await run(dst, { part: { index: 3, count: 3 } });
    expect([a.committed, b.committed]).toEqual([false, false]);
    expect(b.waitingFor).toEqual([2]);
    const c = await run(dst, { part: { index: 2, count: 3 } });
    expect(c.committed).toBe(true);
    const written = [a, b, c].map((s) => s.files.filter((f) => f.startsWith("model-")));
    expect(new Set(written.flat()).size).toBe(written.flat().length);
    expect(filesIn(dst)).toEqual(filesIn(single));
    expect(beside(dst)).toEqual([]);
    // A part of a run already committed finds DST there.
    await expect(run(dst, { part: { index: 1, count: 3 } })).rejects.toThrow(`${dst} already exists and is not empty; pass --force to replace it`);
  });

  it("is the same run whether SRC is named as the checkpoint folder or as its model/ folder", async () => {
    const dst = path.join(work, "spelled");
    const checkpoint = path.join(work, "epoch_0_step_5");
    fs.mkdirSync(checkpoint);
    fs.cpSync(src, path.join(checkpoint, "model"), { recursive: true });
    expect((await consolidateCheckpoint({ src: checkpoint, dst, part: { index: 1, count: 2 } })).committed).toBe(false);
    expect((await consolidateCheckpoint({ src: path.join(checkpoint, "model"), dst, part: { index: 2, count: 2 } })).committed).toBe(true);
    expect(filesIn(dst)).toEqual(filesIn(single));
  });

  it("a part run again after it was done writes nothing", async () => {
    const dst = path.join(work, "again");
    await run(dst, { part: { index: 1, count: 2 } });
    const notes: string[] = [];
    const again = await run(dst, { part: { index: 1, count: 2 }, onNote: (n) => notes.push(n) });
    expect(again.files).toEqual([]);
    expect(notes).toEqual(["part 1/2 was already done by an earlier run of it; nothing to write"]);
    expect((await run(dst, { part: { index: 2, count: 2 } })).committed).toBe(true);
    expect(filesIn(dst)).toEqual(filesIn(single));
  });

  it("parts of another run (other N, other options) are refused; --force discards a stopped one", async () => {
    const dst = path.join(work, "other");
    await run(dst, { part: { index: 1, count: 2 } });
    const [staging] = beside(dst);
    const message = `${path.join(work, staging!)} holds a different consolidation run into ${dst} (2 parts): other SRC headers, part count or options, stopped; rerun its parts as they were, or pass --force to discard it`;
    await expect(run(dst, { part: { index: 1, count: 3 } })).rejects.toThrow(message);
    await expect(run(dst, { part: { index: 2, count: 2 }, uniformExpertDTypes: true })).rejects.toThrow(message);
    // A live part of the other run: refused even with --force.
    const lock = path.join(work, `${staging!}.state`, "part-2-of-2.lock");
    fs.writeFileSync(lock, JSON.stringify({ host: os.hostname(), pid: 1, beat: 0 }));
    await expect(run(dst, { part: { index: 1, count: 3 }, force: true })).rejects.toThrow(
      `${path.join(work, staging!)} holds a different consolidation run into ${dst} (2 parts): other SRC headers, part count or options, and its part-2-of-2 is still running; parts of different runs never mix`,
    );
    fs.rmSync(lock);
    const notes: string[] = [];
    await run(dst, { part: { index: 1, count: 3 }, force: true, onNote: (n) => notes.push(n) });
    expect(notes).toEqual([`discarded ${path.join(work, staging!)}, a stopped consolidation run with other SRC headers, part count or options (--force)`]);
    expect(beside(dst).some((n) => n === staging)).toBe(false);
  });

  it("--finish commits when every part is done and none could; it names the parts that are not", async () => {
    const dst = path.join(work, "finish");
    await run(dst, { part: { index: 1, count: 2 } });
    await expect(run(dst, { finish: true })).rejects.toThrow(`${dst}: cannot finish: part 2 of 2 is not done; run --part 2/2`);
    // Someone alive holds the commit lock: the last part leaves the commit to it.
    const staging = beside(dst).find((n) => !n.endsWith(".state"))!;
    const lock = path.join(work, `${staging}.state`, "finish.lock");
    fs.writeFileSync(lock, JSON.stringify({ host: os.hostname(), pid: 1, beat: 0 }));
    const last = await run(dst, { part: { index: 2, count: 2 } });
    expect([last.committed, last.waitingFor]).toEqual([false, []]);
    fs.rmSync(lock);
    const finish = await run(dst, { finish: true });
    expect(finish.committed).toBe(true);
    expect(finish.parts).toBe(2);
    expect(filesIn(dst)).toEqual(filesIn(single));
    expect(beside(dst)).toEqual([]);
    await expect(run(path.join(work, "never"), { finish: true })).rejects.toThrow(`${path.join(work, "never")}: no consolidation run of this SRC in progress; nothing to finish`);
  });

  it("a part locked by another machine: taken over once its heartbeat stands still, refused while it beats", async () => {
    const dst = path.join(work, "remote");
    await run(dst, { part: { index: 1, count: 2 } });
    const staging = beside(dst).find((n) => !n.endsWith(".state"))!;
    const lock = path.join(work, `${staging}.state`, "part-2-of-2.lock");
    let beat = 0;
    const write = (): void => fs.writeFileSync(lock, JSON.stringify({ host: "node-17", pid: 4242, beat }));
    write();
    const alive = setInterval(() => {
      beat++;
      write();
    }, 40);
    await expect(run(dst, { part: { index: 2, count: 2 }, lockStaleMs: 400 })).rejects.toThrow(
      `part 2/2 of the consolidation into ${dst} is being written by pid 4242 on node-17; wait for it, or stop it and run again`,
    );
    clearInterval(alive);
    const notes: string[] = [];
    const s = await run(dst, { part: { index: 2, count: 2 }, lockStaleMs: 400, onNote: (n) => notes.push(n) });
    expect(notes).toEqual(["took over part 2/2 from pid 4242 on node-17, which stopped without finishing"]);
    expect(s.committed).toBe(true);
    expect(filesIn(dst)).toEqual(filesIn(single));
  });

  it("a failed part removes what it wrote and its lock, and can be run again", async () => {
    const dst = path.join(work, "failing");
    await expect(run(dst, { part: { index: 1, count: 2 }, faults: { writeErrorAfter: 100 } })).rejects.toThrow("no space left on device (ENOSPC, injected)");
    const staging = beside(dst).find((n) => !n.endsWith(".state"))!;
    expect(fs.readdirSync(path.join(work, staging))).toEqual([]);
    expect(fs.readdirSync(path.join(work, `${staging}.state`))).toEqual(["run.json"]);
    await run(dst, { part: { index: 1, count: 2 } });
    expect((await run(dst, { part: { index: 2, count: 2 } })).committed).toBe(true);
    expect(filesIn(dst)).toEqual(filesIn(single));
  });
});

describe("which part this process is", () => {
  it.each([
    [{ part: "2/4" }, {}, { part: { index: 2, count: 4 } }],
    [{}, {}, {}],
    [{}, { RANK: "2", WORLD_SIZE: "4" }, { part: { index: 3, count: 4 }, from: "RANK=2, WORLD_SIZE=4" }],
    [{}, { SLURM_PROCID: "0", SLURM_NTASKS: "3" }, { part: { index: 1, count: 3 }, from: "SLURM_PROCID=0, SLURM_NTASKS=3" }],
    [{}, { RANK: "0", WORLD_SIZE: "1" }, {}],
    [{}, { SLURM_PROCID: "1" }, {}],
    [{ parts: "3" }, { JOB_COMPLETION_INDEX: "2" }, { part: { index: 3, count: 3 }, from: "JOB_COMPLETION_INDEX=2, --parts=3" }],
    [{ parts: true as const }, { RANK: "1", WORLD_SIZE: "2" }, { part: { index: 2, count: 2 }, from: "RANK=1, WORLD_SIZE=2" }],
    [{ parts: "1" }, { RANK: "3", WORLD_SIZE: "4" }, {}],
  ])("flags %j, environment %j", (flags, env, out) => {
    expect(resolvePart(flags, env)).toEqual(out);
  });

  it("leaves a word after a bare --parts to be an argument", () => {
    expect(bareParts(["consolidate", "--parts", "ckpt", "out"])).toEqual(["consolidate", "--parts=", "ckpt", "out"]);
    expect(bareParts(["consolidate", "--parts", "4", "ckpt", "out"])).toEqual(["consolidate", "--parts", "4", "ckpt", "out"]);
    expect(bareParts(["consolidate", "ckpt", "out", "--parts"])).toEqual(["consolidate", "ckpt", "out", "--parts"]);
    expect(bareParts(["consolidate", "--parts", "--", "ckpt", "out"])).toEqual(["consolidate", "--parts", "--", "ckpt", "out"]);
    // --part's K/N given to --parts stays its value, to be refused as not a number.
    expect(bareParts(["consolidate", "--parts", "2/4", "ckpt", "out"])).toEqual(["consolidate", "--parts", "2/4", "ckpt", "out"]);
    expect(bareParts(["convert", "--parts", "x"])).toEqual(["convert", "--parts", "x"]);
    expect(resolvePart({ parts: "" }, { RANK: "1", WORLD_SIZE: "2" })).toEqual({ part: { index: 2, count: 2 }, from: "RANK=1, WORLD_SIZE=2" });
  });

  it.each([
    [{ parts: "2" }, {}, "--parts 2: this process's index is in none of RANK, SLURM_PROCID, JOB_COMPLETION_INDEX; give --part K/2"],
    [{ parts: true as const }, { RANK: "0" }, "--parts without N needs the number of processes in WORLD_SIZE or SLURM_NTASKS"],
    [{ parts: "2" }, { RANK: "2" }, "RANK=2 is not below the number of parts, 2"],
    [{ part: "2of4" }, {}, '--part must be K/N (e.g. --part 2/4), got "2of4"'],
    [{ part: "1/2", parts: "2" }, {}, "--part and --parts go separately: --part K/N, or --parts N with K from the launcher"],
    [{}, { RANK: "x", WORLD_SIZE: "2" }, 'RANK="x" in the environment is not a whole number'],
  ])("refuses flags %j, environment %j", (flags, env, message) => {
    expect(() => resolvePart(flags, env)).toThrow(message);
  });
});
