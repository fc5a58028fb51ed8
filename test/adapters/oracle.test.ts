import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { NemotronOmniStateDictAdapter } from "../../src/adapters/nemotron-omni.js";
import { compareTensors, flag, loadAll, oracleCases, readConfig } from "../helpers/fixtures.js";

describe("every oracle case, in memory", () => {
  for (const c of oracleCases()) {
    it(c.name, () => {
      const config = readConfig(path.join(c.dir, "input"));
      const numLayers = flag(c.args, "--num-layers");
      if (numLayers !== undefined) (config["llm_config"] as Record<string, unknown>)["num_hidden_layers"] = Number(numLayers);
      const adapter = new NemotronOmniStateDictAdapter(config, { dtype: flag(c.args, "--dtype") ?? "bf16" });
      const input = loadAll(path.join(c.dir, "input"));
      const expected = loadAll(path.join(c.dir, "expected", "model.safetensors"));
      const rank = flag(c.args, "--ep-rank");
      const size = flag(c.args, "--ep-size");
      const exclude = flag(c.args, "--exclude");
      const out =
        c.direction === "native"
          ? adapter.fromHf(input, rank !== undefined ? { ep: { rank: Number(rank), size: Number(size) } } : {})
          : adapter.toHf(input, { ...(exclude !== undefined ? { excludeKeyRegex: exclude } : {}), v4Compatible: c.args.includes("--v4-compatible") });
      expect(compareTensors(out, expected)).toEqual([]);
    });
  }
});
