import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { FormatError, InputError } from "../../src/errors.js";
import type { Checkpoint } from "../../src/safetensors/checkpoint.js";
import type { SourceOptions } from "../../src/node/sources.js";
import { openCheckpoint } from "../helpers/fixtures.js";
import { serialize } from "../../src/safetensors/encode.js";
import type { Tensor } from "../../src/tensor/tensor.js";

/**
 * Checkpoint folders built on disk, one problem each. Refusals name the file at fault (index, shard or
 * config), the tensor when there is one, and what is wrong.
 */

const INDEX = "model.safetensors.index.json";
const S1 = "model-00001-of-00002.safetensors";
const S2 = "model-00002-of-00002.safetensors";

let root: string;
let dir: string;
beforeEach(() => {
  root = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), "omni-ckpt-checkpoint-")));
  dir = path.join(root, "ckpt");
  fs.mkdirSync(dir);
});
afterEach(() => {
  fs.rmSync(root, { recursive: true, force: true });
});

function u8(...values: number[]): Tensor {
  return { dtype: "U8", shape: [values.length], data: new Uint8Array(values) };
}

/** A safetensors file holding the named tensors; each tensor's bytes are derived from its name. */
function writeShard(file: string, names: readonly string[]): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, serialize(names.map((n): [string, Tensor] => [n, u8(n.length, n.charCodeAt(0) || 0, 7)])));
}

function writeIndex(weightMap: Record<string, string>): string {
  const file = path.join(dir, INDEX);
  fs.writeFileSync(file, JSON.stringify({ metadata: { total_size: 3 * Object.keys(weightMap).length }, weight_map: weightMap }, null, 2));
  return file;
}

/** A healthy two-shard checkpoint: a, b in S1; c in S2. */
function twoShards(): string {
  writeShard(path.join(dir, S1), ["a", "b"]);
  writeShard(path.join(dir, S2), ["c"]);
  return writeIndex({ a: S1, b: S1, c: S2 });
}

async function caught(fn: () => unknown): Promise<unknown> {
  try {
    await fn();
  } catch (e) {
    return e;
  }
  throw new Error("expected an error, but nothing was thrown");
}

/** Opening must fail with a FormatError naming `file` (and `tensor`) with exactly `detail` (or matching it). */
async function expectFormatError(fn: () => unknown, file: string, detail: string | RegExp, tensor?: string): Promise<FormatError> {
  const e = await caught(fn);
  expect(e).toBeInstanceOf(FormatError);
  const fe = e as FormatError;
  expect(fe.file).toBe(file);
  expect(fe.tensor).toBe(tensor);
  if (typeof detail === "string") expect(fe.detail).toBe(detail);
  else expect(fe.detail).toMatch(detail);
  expect(fe.message).toBe(`${file}: ${tensor !== undefined ? `tensor ${JSON.stringify(tensor)}: ` : ""}${fe.detail}`);
  return fe;
}

async function expectInputError(fn: () => unknown, message: string): Promise<void> {
  const e = await caught(fn);
  expect(e).toBeInstanceOf(InputError);
  expect(e).not.toBeInstanceOf(FormatError);
  expect((e as Error).message).toBe(message);
}

function open(options?: SourceOptions): Promise<Checkpoint> {
  return openCheckpoint(dir, options);
}

/** Every tensor's bytes; `Object.fromEntries` makes even a `__proto__` name an own property. */
function readAll(ckpt: Checkpoint): Record<string, number[]> {
  return Object.fromEntries([...ckpt.tensors.values()].map((t) => [t.name, [...t.file.readTensorSync(t.name).data]]));
}

describe("healthy folders", () => {
  it("opens a single model.safetensors", async () => {
    writeShard(path.join(dir, "model.safetensors"), ["x", "__proto__"]);
    const ckpt = await open();
    try {
      expect(ckpt.folder?.name).toBe(dir);
      expect(ckpt.sharded).toBe(false);
      expect(ckpt.weightFiles).toEqual(new Set(["model.safetensors"]));
      const all = readAll(ckpt);
      expect(Object.keys(all).sort()).toEqual(["__proto__", "x"]);
      expect(all["x"]).toEqual([1, 120, 7]);
      expect(Object.getOwnPropertyDescriptor(all, "__proto__")?.value).toEqual([9, 95, 7]);
      expect(ckpt.tensors.get("__proto__")?.dtype).toBe("U8");
      expect(ckpt.totalBytes).toBe(6);
    } finally {
      ckpt.close();
    }
  });

  it("opens an index and its shards", async () => {
    twoShards();
    const ckpt = await open();
    try {
      expect(ckpt.sharded).toBe(true);
      expect(ckpt.files.map((f) => f.name)).toEqual([path.join(dir, S1), path.join(dir, S2)]);
      expect(ckpt.weightFiles).toEqual(new Set([INDEX, S1, S2]));
      expect(readAll(ckpt)).toEqual({ a: [1, 97, 7], b: [1, 98, 7], c: [1, 99, 7] });
      expect(ckpt.tensors.get("c")?.file.name).toBe(path.join(dir, S2));
      expect(ckpt.totalBytes).toBe(9);
    } finally {
      ckpt.close();
    }
  });

  it("opens shards in a subfolder and an index without metadata", async () => {
    writeShard(path.join(dir, "weights", "part.safetensors"), ["a"]);
    fs.writeFileSync(path.join(dir, INDEX), JSON.stringify({ weight_map: { a: "weights/part.safetensors" } }));
    const ckpt = await open();
    expect(readAll(ckpt)).toEqual({ a: [1, 97, 7] });
    expect(ckpt.weightFiles).toEqual(new Set([INDEX, path.join("weights", "part.safetensors")]));
    ckpt.close();
  });

  it("opens a bare .safetensors file, which has no config", async () => {
    const file = path.join(root, "loose.safetensors");
    writeShard(file, ["w"]);
    const ckpt = await openCheckpoint(file);
    expect(ckpt.folder).toBeUndefined();
    expect(ckpt.sharded).toBe(false);
    expect(ckpt.weightFiles.size).toBe(0);
    expect(readAll(ckpt)).toEqual({ w: [1, 119, 7] });
    await expectInputError(() => ckpt.readConfig(), `${file}: a bare .safetensors file has no config.json; pass the checkpoint folder it belongs to`);
    ckpt.close();
  });

  it("opens a folder reached through a symlink", async () => {
    twoShards();
    const link = path.join(root, "link");
    fs.symlinkSync(dir, link);
    const ckpt = await openCheckpoint(link);
    expect(readAll(ckpt)).toEqual({ a: [1, 97, 7], b: [1, 98, 7], c: [1, 99, 7] });
    ckpt.close();
  });
});

describe("which files make the checkpoint", () => {
  it("refuses a folder with both model.safetensors and an index", async () => {
    twoShards();
    writeShard(path.join(dir, "model.safetensors"), ["a"]);
    await expectInputError(() => open(), `${dir}: holds both model.safetensors and ${INDEX}; it is unclear which is the checkpoint`);
  });

  it("refuses a folder with neither", async () => {
    fs.writeFileSync(path.join(dir, "config.json"), "{}");
    writeShard(path.join(dir, "weights.safetensors"), ["a"]);
    await expectInputError(() => open(), `${dir}: no model.safetensors or ${INDEX} in this folder`);
  });

  it("refuses a location that does not exist", async () => {
    const missing = path.join(root, "missing");
    await expectInputError(() => openCheckpoint(missing), `${missing}: cannot open checkpoint: no such file or folder`);
  });
});

describe("index validation", () => {
  it("refuses an index that is not JSON", async () => {
    const index = path.join(dir, INDEX);
    fs.writeFileSync(index, "{not json");
    await expectFormatError(() => open(), index, "is not valid JSON: expected a string key in object at character 1");
    fs.writeFileSync(index, "");
    await expectFormatError(() => open(), index, "is not valid JSON: unexpected end of JSON at character 0");
  });

  it("refuses an index that is not UTF-8", async () => {
    const index = path.join(dir, INDEX);
    fs.writeFileSync(index, Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]));
    await expectFormatError(() => open(), index, "is not valid UTF-8");
  });

  it("refuses an index of the wrong shape", async () => {
    const index = path.join(dir, INDEX);
    fs.writeFileSync(index, "[]");
    await expectFormatError(() => open(), index, "is an array, not a JSON object");
    fs.writeFileSync(index, '{"metadata":{}}');
    await expectFormatError(() => open(), index, "has no weight_map");
    fs.writeFileSync(index, '{"weight_map":["a"]}');
    await expectFormatError(() => open(), index, "weight_map is an array, not an object");
    fs.writeFileSync(index, '{"weight_map":{"a":1}}');
    await expectFormatError(() => open(), index, 'weight_map entry for "a" is the number 1, not a file name');
    fs.writeFileSync(index, '{"weight_map":{"a":null}}');
    await expectFormatError(() => open(), index, 'weight_map entry for "a" is null, not a file name');
  });

  it("refuses an index listing a tensor twice", async () => {
    writeShard(path.join(dir, S1), ["a"]);
    writeShard(path.join(dir, S2), ["b"]);
    const index = path.join(dir, INDEX);
    const text = `{"weight_map":{"a":"${S1}","b":"${S2}","a":"${S2}"}}`;
    fs.writeFileSync(index, text);
    await expectFormatError(() => open(), index, `is not valid JSON: duplicate key "a" at character ${text.lastIndexOf('"a"')}`);
  });

  it("refuses an index naming a missing shard", async () => {
    writeShard(path.join(dir, S1), ["a"]);
    const index = writeIndex({ a: S1, b: S2 });
    await expectFormatError(() => open(), index, `names shard "${S2}", which cannot be opened: no such file (ENOENT)`);
  });

  it("refuses shard paths that climb out of the folder", async () => {
    writeShard(path.join(root, "outside.safetensors"), ["a"]);
    for (const rel of ["../outside.safetensors", "weights/../../outside.safetensors", "./../outside.safetensors", ".."]) {
      const index = writeIndex({ a: rel });
      await expectFormatError(() => open(), index, `names shard ${JSON.stringify(rel)}, which lies outside the folder`);
      // Not even with symlinks allowed: `..` is never a shard.
      await expectFormatError(() => open({ followSymlinks: true }), index, `names shard ${JSON.stringify(rel)}, which lies outside the folder`);
    }
  });

  it("refuses an absolute shard path, even one inside the folder", async () => {
    writeShard(path.join(root, "outside.safetensors"), ["a"]);
    writeShard(path.join(dir, S1), ["a"]);
    for (const abs of [path.join(root, "outside.safetensors"), path.join(dir, S1)]) {
      const index = writeIndex({ a: abs });
      await expectFormatError(
        () => open({ followSymlinks: true }),
        index,
        `names shard ${JSON.stringify(abs)} by absolute path; shards must lie inside the folder`,
      );
    }
  });

  it("refuses empty and NUL-bearing shard names", async () => {
    writeShard(path.join(dir, S1), ["a"]);
    let index = writeIndex({ a: "" });
    await expectFormatError(() => open(), index, 'names an invalid shard ""');
    index = writeIndex({ a: `${S1}\0.txt` });
    await expectFormatError(() => open(), index, `names an invalid shard ${JSON.stringify(`${S1}\0.txt`)}`);
  });

  it("refuses a shard symlink leading outside the folder, unless followSymlinks", async () => {
    const outside = path.join(root, "blobs", "0123abcd");
    writeShard(outside, ["a", "b"]);
    writeShard(path.join(dir, S2), ["c"]);
    fs.symlinkSync("../blobs/0123abcd", path.join(dir, S1));
    writeIndex({ a: S1, b: S1, c: S2 });
    await expectFormatError(
      () => open(),
      path.join(dir, S1),
      `is a symlink leading outside the checkpoint folder (to ${outside}); pass --follow-symlinks to allow it`,
    );
    const ckpt = await open({ followSymlinks: true });
    expect(readAll(ckpt)).toEqual({ a: [1, 97, 7], b: [1, 98, 7], c: [1, 99, 7] });
    ckpt.close();
  });

  it("refuses a single model.safetensors that links outside, unless followSymlinks", async () => {
    const outside = path.join(root, "elsewhere.safetensors");
    writeShard(outside, ["a"]);
    fs.symlinkSync(outside, path.join(dir, "model.safetensors"));
    await expectFormatError(
      () => open(),
      path.join(dir, "model.safetensors"),
      `is a symlink leading outside the checkpoint folder (to ${outside}); pass --follow-symlinks to allow it`,
    );
    const ckpt = await open({ followSymlinks: true });
    expect(readAll(ckpt)).toEqual({ a: [1, 97, 7] });
    ckpt.close();
  });

  it("refuses a shard reached through a symlinked subfolder leading outside", async () => {
    writeShard(path.join(root, "elsewhere", "part.safetensors"), ["a"]);
    fs.symlinkSync(path.join(root, "elsewhere"), path.join(dir, "weights"));
    writeIndex({ a: "weights/part.safetensors" });
    await expectFormatError(
      () => open(),
      path.join(dir, "weights/part.safetensors"),
      `is a symlink leading outside the checkpoint folder (to ${path.join(root, "elsewhere", "part.safetensors")}); pass --follow-symlinks to allow it`,
    );
  });

  it("refuses a folder whose name merely starts like the real one", async () => {
    // ckpt-evil/x is not inside ckpt even though the string starts with it.
    writeShard(path.join(root, "ckpt-evil", "x.safetensors"), ["a"]);
    fs.symlinkSync("../ckpt-evil/x.safetensors", path.join(dir, S1));
    writeIndex({ a: S1 });
    await expectFormatError(() => open(), path.join(dir, S1), /^is a symlink leading outside the checkpoint folder/);
  });

  it("allows a symlink that stays inside the folder", async () => {
    writeShard(path.join(dir, "blobs", "abc"), ["a", "b"]);
    writeShard(path.join(dir, S2), ["c"]);
    fs.symlinkSync("blobs/abc", path.join(dir, S1));
    writeIndex({ a: S1, b: S1, c: S2 });
    const ckpt = await open();
    expect(readAll(ckpt)).toEqual({ a: [1, 97, 7], b: [1, 98, 7], c: [1, 99, 7] });
    expect(ckpt.tensors.get("a")?.file.name).toBe(path.join(dir, S1));
    ckpt.close();
  });

  it("refuses a dangling shard symlink", async () => {
    fs.symlinkSync("nowhere.safetensors", path.join(dir, S1));
    writeIndex({ a: S1 });
    await expectFormatError(() => open(), path.join(dir, S1), "cannot be opened: no such file (ENOENT) (a broken symlink?)");
  });

  it("refuses an index listing a tensor its shard lacks", async () => {
    writeShard(path.join(dir, S1), ["a", "b"]);
    writeShard(path.join(dir, S2), ["c"]);
    const index = writeIndex({ a: S1, b: S1, c: S2, ghost: S2 });
    await expectFormatError(() => open(), index, `lists tensor "ghost" in ${S2}, which does not hold it`);
  });

  it("refuses an index listing a tensor in the wrong shard", async () => {
    twoShards();
    const index = writeIndex({ a: S1, b: S2, c: S2 });
    // b really sits in S1; the index sends readers to S2.
    await expectFormatError(() => open(), index, `lists tensor "b" in ${S2}, which does not hold it`);
  });

  it("refuses a shard holding a tensor the index omits", async () => {
    twoShards();
    writeIndex({ a: S1, c: S2 });
    await expectFormatError(() => open(), path.join(dir, S1), `is not listed in ${INDEX}`, "b");
  });

  it("refuses a tensor stored in two shards", async () => {
    writeShard(path.join(dir, S1), ["a", "b"]);
    writeShard(path.join(dir, S2), ["b", "c"]);
    writeIndex({ a: S1, b: S1, c: S2 });
    await expectFormatError(
      () => open(),
      path.join(dir, S2),
      `is also stored in ${path.join(dir, S1)}; a tensor may live in one shard only`,
      "b",
    );
  });

  it("refuses the same shard named twice under different spellings", async () => {
    writeShard(path.join(dir, S1), ["a", "b"]);
    const index = writeIndex({ a: S1, b: `./${S1}` });
    await expectFormatError(() => open(), index, `names the same shard twice ("./${S1}")`);
  });

  it("refuses a malformed shard, naming the shard", async () => {
    writeShard(path.join(dir, S1), ["a"]);
    fs.writeFileSync(path.join(dir, S2), Buffer.from([1, 2, 3]));
    writeIndex({ a: S1, c: S2 });
    await expectFormatError(() => open(), path.join(dir, S2), "file is 3 bytes, too short to hold a safetensors header length");
  });

  it("refuses a directory posing as a shard", async () => {
    fs.mkdirSync(path.join(dir, S1));
    writeIndex({ a: S1 });
    await expectFormatError(() => open(), path.join(dir, S1), "is not a regular file (a directory)");
  });

  it("closes every shard it opened when it refuses the folder", async () => {
    if (process.platform !== "linux") return;
    writeShard(path.join(dir, S1), ["a", "b"]);
    writeShard(path.join(dir, S2), ["c"]);
    writeIndex({ a: S1, b: S1, c: S2, ghost: S2 });
    const fds = (): number => fs.readdirSync("/proc/self/fd").length;
    const before = fds();
    for (let i = 0; i < 20; i++) await expect(open()).rejects.toThrow(new FormatError(path.join(dir, INDEX), `lists tensor "ghost" in ${S2}, which does not hold it`));
    expect(fds()).toBe(before);
    writeIndex({ a: S1, b: S1, c: S2 });
    (await open()).close();
    expect(fds()).toBe(before);
  });
});

describe("FIFOs posing as files", () => {
  let watchdog: ChildProcess | undefined;
  afterEach(() => {
    watchdog?.kill("SIGTERM");
    watchdog = undefined;
  });

  function mkfifo(file: string): void {
    execFileSync("mkfifo", [file]);
  }

  /**
   * Opens the FIFO for writing after a delay, so that a reader blocking in open() is released (and the test
   * fails on time) instead of hanging the worker forever; `timeout` reaps it when nobody ever reads.
   */
  function releaseLater(fifo: string): void {
    watchdog = spawn("timeout", ["5", "sh", "-c", 'sleep 1.5; exec 3>"$1"', "sh", fifo], { stdio: "ignore" });
  }

  it(
    "refuses a shard that is a FIFO, promptly",
    async () => {
      writeShard(path.join(dir, S1), ["a"]);
      mkfifo(path.join(dir, S2));
      writeIndex({ a: S1, c: S2 });
      releaseLater(path.join(dir, S2));
      const started = performance.now();
      await expectFormatError(() => open(), path.join(dir, S2), "is not a regular file (a FIFO)");
      expect(performance.now() - started).toBeLessThan(1000);
    },
    4000,
  );

  it(
    "refuses a model.safetensors that is a FIFO, promptly",
    async () => {
      mkfifo(path.join(dir, "model.safetensors"));
      releaseLater(path.join(dir, "model.safetensors"));
      const started = performance.now();
      await expectFormatError(() => open(), path.join(dir, "model.safetensors"), "is not a regular file (a FIFO)");
      expect(performance.now() - started).toBeLessThan(1000);
    },
    4000,
  );

  it(
    "refuses an index or config.json that is a FIFO, promptly",
    async () => {
      const index = path.join(dir, INDEX);
      mkfifo(index);
      releaseLater(index);
      const started = performance.now();
      await expectFormatError(() => open(), index, "is not a regular file (a FIFO)");
      fs.rmSync(index);
      writeShard(path.join(dir, "model.safetensors"), ["a"]);
      const config = path.join(dir, "config.json");
      mkfifo(config);
      const ckpt = await open();
      await expectFormatError(() => ckpt.readConfig(), config, "is not a regular file (a FIFO)");
      ckpt.close();
      expect(performance.now() - started).toBeLessThan(1000);
    },
    4000,
  );

  it("refuses a FIFO as the checkpoint location", async () => {
    const fifo = path.join(root, "pipe");
    mkfifo(fifo);
    await expectInputError(() => openCheckpoint(fifo), `${fifo}: is a FIFO, not a checkpoint folder or file`);
  });
});

describe("readConfig", () => {
  beforeEach(() => {
    writeShard(path.join(dir, "model.safetensors"), ["a"]);
  });
  const config = (): string => path.join(dir, "config.json");

  it("reads a config object", async () => {
    fs.writeFileSync(config(), JSON.stringify({ architectures: ["X"], llm_config: { hidden_size: 8 } }));
    const ckpt = await open();
    expect((await ckpt.readConfig()).values).toEqual({ architectures: ["X"], llm_config: { hidden_size: 8 } });
    ckpt.close();
  });

  it("refuses a missing config", async () => {
    const ckpt = await open();
    await expectFormatError(() => ckpt.readConfig(), config(), "cannot open: no such file (ENOENT)");
    ckpt.close();
  });

  it("refuses a config that is not JSON or not UTF-8", async () => {
    const ckpt = await open();
    fs.writeFileSync(config(), '{"hidden_size": 8,}');
    await expectFormatError(() => ckpt.readConfig(), config(), /^is not valid JSON: .+/);
    fs.writeFileSync(config(), "");
    await expectFormatError(() => ckpt.readConfig(), config(), /^is not valid JSON: .+/);
    fs.writeFileSync(config(), Buffer.from([0x7b, 0x22, 0xc3, 0x22, 0x3a, 0x31, 0x7d]));
    await expectFormatError(() => ckpt.readConfig(), config(), "is not valid UTF-8");
    ckpt.close();
  });

  it("refuses a config that is an array, null, a number or a string", async () => {
    const ckpt = await open();
    for (const text of ["[]", '[{"hidden_size": 8}]', "null", "42", '"config"']) {
      fs.writeFileSync(config(), text);
      await expectFormatError(() => ckpt.readConfig(), config(), "is not a JSON object");
    }
    ckpt.close();
  });

  it("refuses a directory named config.json", async () => {
    fs.mkdirSync(config());
    const ckpt = await open();
    await expectFormatError(() => ckpt.readConfig(), config(), "is not a regular file (a directory)");
    ckpt.close();
  });
});
