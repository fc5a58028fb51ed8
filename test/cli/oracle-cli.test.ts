import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { Checkpoint, INDEX_FILE } from "../../src/safetensors/checkpoint.js";
import { runCli, snapshot, tempDir } from "../helpers/cli.js";
import { compareTensors, loadAll, oracleCases } from "../helpers/fixtures.js";

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
        expect(fs.readFileSync(path.join(dst, "config.json"), "utf8")).toBe(
          c.args.includes("--num-layers") ? fs.readFileSync(path.join(dst, "config.json"), "utf8") : fs.readFileSync(path.join(input, "config.json"), "utf8"),
        );
        expect(snapshot(input)).toEqual(before);
      });

      it("multi-shard output holds the same tensors, with an index that matches its shards", () => {
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
        const ckpt = Checkpoint.open(dst);
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
