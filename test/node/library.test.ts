import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { convertCheckpoint } from "../../src/node/convert.js";
import { readFailure } from "../../src/node/file-source.js";
import { synthesize } from "../../src/node/synth.js";
import { AbortError, EXIT_INPUT, EXIT_INTERNAL, FormatError, ReadError, UsageError, WriteError, exitCodeOf } from "../../src/errors.js";
import { exportLoraAdapter, mergeLoraAdapter } from "../../src/node/lora.js";
import { loraDir } from "../helpers/fixtures.js";
import { tempDir } from "../helpers/cli.js";

/**
 * The library behaves as a library: it leaves the host process's signal handling alone, is cancelled
 * through an AbortSignal (cleaning up what it began), takes staged faults as an option rather than from
 * the environment, and classifies failures so the host can tell its user whose they are.
 */
const work = tempDir("omni-ckpt-library-");
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

const signals = (): number[] => ["SIGINT", "SIGTERM", "exit"].map((s) => process.listenerCount(s));

describe("the library as a guest in its host's process", () => {
  it("installs no signal or exit handlers, in synthesize or convert", async () => {
    const before = signals();
    const src = path.join(work, "hf");
    await synthesize(src, { preset: "tiny" });
    await convertCheckpoint({ src, dst: path.join(work, "native"), to: "native" });
    expect(signals()).toEqual(before);
  });

  it("an aborted conversion rejects with AbortError and leaves nothing behind", async () => {
    const src = path.join(work, "small");
    await synthesize(src, { preset: "small" });
    const dst = path.join(work, "aborted");
    const controller = new AbortController();
    let chunks = 0;
    const run = convertCheckpoint({
      src,
      dst,
      to: "native",
      maxShardSize: 8192,
      signal: controller.signal,
      // Slow writes, so the abort lands mid-way.
      faults: { delayMs: 5 },
      onProgress: () => {
        if (++chunks === 2) controller.abort(new Error("the user changed their mind"));
      },
    });
    await expect(run).rejects.toThrow(new AbortError(new Error("the user changed their mind")));
    await expect(run).rejects.toBeInstanceOf(AbortError);
    expect(chunks).toBeGreaterThanOrEqual(2);
    expect(fs.existsSync(dst)).toBe(false);
    expect(fs.readdirSync(work).filter((n) => n.startsWith(".aborted"))).toEqual([]);
  });

  it("takes a staged write failure as an option, and cleans up after it", async () => {
    const dst = path.join(work, "full");
    await expect(convertCheckpoint({ src: path.join(work, "hf"), dst, to: "native", faults: { writeErrorAfter: 1000 } })).rejects.toThrow(WriteError);
    expect(fs.existsSync(dst)).toBe(false);
    expect(fs.readdirSync(work).filter((n) => n.startsWith(".full"))).toEqual([]);
  });
});

describe("options JavaScript callers may misspell", () => {
  it("a layout or expert form that is not one refuses, and nothing is written", async () => {
    const src = path.join(work, "hf");
    const native = path.join(work, "native");
    for (const to of ["Native", "xx", undefined]) {
      const dst = path.join(work, `to-${String(to)}`);
      await expect(convertCheckpoint({ src, dst, to: to as never })).rejects.toThrow(
        new UsageError(`to must be "native" or "hf", got ${to === undefined ? "nothing" : JSON.stringify(to)}`),
      );
      expect(fs.existsSync(dst)).toBe(false);
    }
    // A LoRA adapter's export and merge the same way.
    const adapter = path.join(loraDir, "tiny-experts-rank2", "adapter");
    const base = path.join(loraDir, "tiny-experts-rank2", "base");
    await expect(exportLoraAdapter({ adapter, dst: path.join(work, "e1"), experts: "FUSED" as never })).rejects.toThrow(
      new UsageError('experts must be "per-expert", "fused", "drop", got "FUSED"'),
    );
    await expect(exportLoraAdapter({ adapter, dst: path.join(work, "e2"), to: "zz" as never })).rejects.toThrow(new UsageError('to must be "native" or "hf", got "zz"'));
    await expect(mergeLoraAdapter({ base, adapter, dst: path.join(work, "m1"), to: "zz" as never })).rejects.toThrow(new UsageError('to must be "native" or "hf", got "zz"'));
    for (const d of ["e1", "e2", "m1"]) expect(fs.existsSync(path.join(work, d))).toBe(false);
    expect(fs.existsSync(native)).toBe(true);
  });
});

describe("whose failure it is", () => {
  it("a disk that fails reading is an I/O error (exit 1); a file that is not there is the input's (exit 2)", () => {
    const eio = readFailure("x.safetensors", "read failed at byte 8", Object.assign(new Error("i/o"), { code: "EIO" }));
    expect(eio).toBeInstanceOf(ReadError);
    expect(eio.message).toBe("x.safetensors: read failed at byte 8: I/O error (EIO)");
    expect(exitCodeOf(eio)).toBe(EXIT_INTERNAL);
    const missing = readFailure("x.safetensors", "cannot open", Object.assign(new Error("gone"), { code: "ENOENT" }));
    expect(missing).toEqual(new FormatError("x.safetensors", "cannot open: no such file (ENOENT)"));
    expect(exitCodeOf(missing)).toBe(EXIT_INPUT);
    expect(exitCodeOf(new WriteError("disk full"))).toBe(EXIT_INTERNAL);
    expect(exitCodeOf(new Error("a bug"))).toBe(EXIT_INTERNAL);
  });
});
