import { describe, expect, it } from "vitest";
import { formatBytes, formatCount, parseSize } from "../../src/cli/format.js";
import { DEFAULT_MAX_SHARD_SIZE, DEFAULT_MAX_SHARD_SIZE_FLAG } from "../../src/safetensors/shard-size.js";

describe("formatCount", () => {
  it("groups thousands with commas, as en-US does", () => {
    for (const n of [0, 7, 999, 1000, 2833, 12345, 999999, 1000000, 1234567890, -1234, -999, 123456.75, Number.MAX_SAFE_INTEGER]) {
      expect(formatCount(n)).toBe(n.toLocaleString("en-US", { maximumFractionDigits: 20 }));
    }
  });
});

describe("formatBytes", () => {
  it("uses decimal units with three significant digits", () => {
    expect(formatBytes(999)).toBe("999 B");
    expect(formatBytes(1165_000_000)).toBe("1.17 GB");
    expect(formatBytes(68_200_000_000)).toBe("68.2 GB");
  });
});

describe("the default shard size", () => {
  it("is spelled for the flags as a size that parses back to the writer's default", () => {
    expect(DEFAULT_MAX_SHARD_SIZE_FLAG).toBe("5GB");
    expect(parseSize(DEFAULT_MAX_SHARD_SIZE_FLAG)).toBe(DEFAULT_MAX_SHARD_SIZE);
  });
});
