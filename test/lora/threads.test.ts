import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { BufferPool } from "../../src/convert/buffer-pool.js";
import { MemoryFolder } from "../../src/io/folder.js";
import { MemoryOutput } from "../../src/io/output.js";
import type { DeltaHelper, DeltaJob } from "../../src/lora/delta.js";
import { mergeFolders } from "../../src/lora/merge.js";
import { deltaThreadFor } from "../../src/node/delta-thread.js";
import { mergeLoraAdapter } from "../../src/node/lora.js";
import { synthesize } from "../../src/node/synth.js";
import { planSynth, writeSynth } from "../../src/synth/layout.js";
import { SafetensorsFile } from "../../src/safetensors/file.js";
import { tempDir } from "../helpers/cli.js";
import { automodelAdapter, writeFolder } from "../helpers/lora.js";

/* Half of each chunk's deltas on a second thread: the same bytes as on one, in memory and on disk. */

const work = tempDir();
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

function shapes(files: ReadonlyMap<string, Uint8Array>): Map<string, readonly number[]> {
  const out = new Map<string, readonly number[]>();
  for (const [rel, bytes] of files) if (rel.endsWith(".safetensors")) for (const [k, e] of SafetensorsFile.fromBytes(bytes).tensors) out.set(k, e.shape);
  return out;
}

describe("the delta helper thread", () => {
  it("computes half of the elements and changes no byte of the result", async () => {
    const base = new MemoryOutput("small");
    await writeSynth(planSynth({ preset: "small", seed: 9 }), base);
    const adapter = automodelAdapter(shapes(base.files), { rank: 16, expertRank: 8, alpha: 32, seed: 5 });
    const thread = deltaThreadFor(new BufferPool().memory)!;
    expect(thread).toBeDefined();
    let elements = 0;
    const counting: DeltaHelper = {
      run: (jobs: readonly DeltaJob[]) => {
        for (const j of jobs) elements += j.g1 - j.g0;
        return thread.run(jobs);
      },
    };
    const one = new MemoryOutput("one");
    const two = new MemoryOutput("two");
    await mergeFolders(new MemoryFolder(base.files), new MemoryFolder(adapter.files), one, {});
    await mergeFolders(new MemoryFolder(base.files), new MemoryFolder(adapter.files), two, { helper: counting });
    expect(elements).toBeGreaterThan(100_000);
    expect([...two.files.keys()]).toEqual([...one.files.keys()]);
    for (const [rel, bytes] of one.files) expect(Buffer.from(two.files.get(rel)!).equals(Buffer.from(bytes)), rel).toBe(true);
  });

  it("through mergeLoraAdapter on disk, with and without the thread", async () => {
    const base = path.join(work, "small");
    await synthesize(base, { preset: "small", seed: 4, maxShardSize: 500_000 });
    const baseShapes = new Map<string, readonly number[]>();
    for (const f of fs.readdirSync(base).filter((n) => n.endsWith(".safetensors"))) {
      for (const [k, e] of SafetensorsFile.fromBytes(new Uint8Array(fs.readFileSync(path.join(base, f)))).tensors) baseShapes.set(k, e.shape);
    }
    const adapter = writeFolder(path.join(work, "adapter"), automodelAdapter(baseShapes, { rank: 8, expertRank: 4, seed: 2 }).files);
    const a = await mergeLoraAdapter({ base, adapter, dst: path.join(work, "a") });
    const b = await mergeLoraAdapter({ base, adapter, dst: path.join(work, "b"), helperThread: false });
    expect(a.files).toEqual(b.files);
    expect(a.files.length).toBeGreaterThan(2);
    for (const f of a.files) expect(fs.readFileSync(path.join(work, "a", f)).equals(fs.readFileSync(path.join(work, "b", f))), f).toBe(true);
    expect(fs.readdirSync(path.join(work, "a")).sort()).toEqual(fs.readdirSync(base).sort());
  });
});

describe("the delta helper thread across merges", () => {
  it("two merges in one process, one after the other and at once, each give what a merge alone gives", async () => {
    const base = new MemoryOutput("small");
    await writeSynth(planSynth({ preset: "small", seed: 3 }), base);
    const helper = deltaThreadFor(new BufferPool().memory)!;
    // Two different adapters of the same base, each of one module (so each merge has one region, which a
    // per-merge numbering would give the same id): the helper keeps factors per region and must not mix them.
    const one = new Map([...shapes(base.files)].filter(([name]) => name === "language_model.lm_head.weight"));
    expect(one.size).toBe(1);
    const adapters = [1, 2].map((seed) => automodelAdapter(one, { rank: 8, alpha: 16, seed, experts: false }));
    const alone = await Promise.all(
      adapters.map(async (a, i) => {
        const out = new MemoryOutput(`alone-${i}`);
        await mergeFolders(new MemoryFolder(base.files), new MemoryFolder(a.files), out, {});
        return out;
      }),
    );
    const expectSame = (got: MemoryOutput, want: MemoryOutput): void => {
      expect([...got.files.keys()]).toEqual([...want.files.keys()]);
      for (const [rel, bytes] of want.files) expect(Buffer.from(got.files.get(rel)!).equals(Buffer.from(bytes)), rel).toBe(true);
    };
    for (const [i, a] of adapters.entries()) {
      const out = new MemoryOutput(`after-${i}`);
      await mergeFolders(new MemoryFolder(base.files), new MemoryFolder(a.files), out, { helper });
      expectSame(out, alone[i]!);
    }
    const together = adapters.map((_, i) => new MemoryOutput(`together-${i}`));
    await Promise.all(adapters.map((a, i) => mergeFolders(new MemoryFolder(base.files), new MemoryFolder(a.files), together[i]!, { helper })));
    together.forEach((out, i) => expectSame(out, alone[i]!));
  });
});
