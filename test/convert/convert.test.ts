import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { convertCheckpoint } from "../../src/node/convert.js";
import { UsageError } from "../../src/errors.js";
import { tinyCheckpoint } from "../helpers/tiny.js";

const { work, hf } = tinyCheckpoint();

describe("convertCheckpoint", () => {
  it.each([0, -1, 1.5, Number.NaN])("refuses maxShardSize %s before touching the destination's folder", async (maxShardSize) => {
    const parent = path.join(work, `out-${String(maxShardSize)}`);
    const dst = path.join(parent, "native");
    await expect(convertCheckpoint({ src: hf, dst, to: "native", maxShardSize })).rejects.toThrow(
      new UsageError(`the largest shard must be a positive whole number of bytes, got ${maxShardSize}`),
    );
    expect(fs.existsSync(parent)).toBe(false);
  });
});
