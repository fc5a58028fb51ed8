import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { INDEX_FILE } from "../../src/safetensors/checkpoint.js";
import { runCli, snapshot, tempDir } from "../helpers/cli.js";
import { compareTensors, loadAll, openCheckpoint, oracleCases } from "../helpers/fixtures.js";

const work = tempDir();
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

describe("every oracle case through the CLI, as a spawned process", () => {
  for (const c of oracleCases()) {
    describe(c.name, () => {
      it("single-shard output is byte-identical to the reference's file", () => {
        const input = path.join(c.dir, "input");
        const before = snapshot(input);
        const dst = path.join(work, `${c.name}-single`);
        const r = runCli(["convert", "--to", c.direction, ...c.args, "--quiet", input, dst]);
        expect(r.stderr).toBe("");
        expect(r.code).toBe(0);
        expect(fs.readFileSync(path.join(dst, "model.safetensors"))).toEqual(fs.readFileSync(path.join(c.dir, "expected/model.safetensors")));
        expect(compareTensors(loadAll(dst), loadAll(path.join(c.dir, "expected")))).toEqual([]);
        const inputConfig = fs.readFileSync(path.join(input, "config.json"), "utf8");
        const outputConfig = fs.readFileSync(path.join(dst, "config.json"), "utf8");
        const layers = c.args.includes("--num-layers") ? Number(c.args[c.args.indexOf("--num-layers") + 1]) : undefined;
        if (layers === undefined) expect(outputConfig).toBe(inputConfig);
        else {
          // The output holds layers 0…N-1 only, so its config says so; everything else is as it was.
          const before = JSON.parse(inputConfig) as { llm_config: Record<string, unknown> };
          const after = JSON.parse(outputConfig) as { llm_config: Record<string, unknown> };
          const llm = before.llm_config;
          expect(after).toEqual({
            ...before,
            llm_config: {
              ...llm,
              num_hidden_layers: layers,
              hybrid_override_pattern: (llm["hybrid_override_pattern"] as string).slice(0, layers),
              layers_block_type: (llm["layers_block_type"] as string[]).slice(0, layers),
            },
          });
        }
        expect(snapshot(input)).toEqual(before);
      });

      it("multi-shard output holds the same tensors, with an index that matches its shards", async () => {
        const dst = path.join(work, `${c.name}-sharded`);
        const r = runCli(["convert", "--to", c.direction, ...c.args, "--max-shard-size", "1KB", "--quiet", path.join(c.dir, "input"), dst]);
        expect(r.stderr).toBe("");
        expect(r.code).toBe(0);
        const index = JSON.parse(fs.readFileSync(path.join(dst, INDEX_FILE), "utf8")) as {
          metadata: { total_size: number };
          weight_map: Record<string, string>;
        };
        const shards = fs.readdirSync(dst).filter((f) => f.endsWith(".safetensors")).sort();
        expect(shards.length).toBeGreaterThan(1);
        expect(shards.every((s, i) => s === `model-${String(i + 1).padStart(5, "0")}-of-${String(shards.length).padStart(5, "0")}.safetensors`)).toBe(true);
        expect(new Set(Object.values(index.weight_map))).toEqual(new Set(shards));
        const ckpt = await openCheckpoint(dst);
        try {
          expect(index.metadata.total_size).toBe(ckpt.totalBytes);
          for (const t of ckpt.tensors.values()) expect(index.weight_map[t.name]).toBe(path.basename(t.file.name));
        } finally {
          ckpt.close();
        }
        expect(compareTensors(loadAll(dst), loadAll(path.join(c.dir, "expected")))).toEqual([]);
      });
    });
  }
});
