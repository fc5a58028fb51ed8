import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { BufferPool } from "../../src/convert/buffer-pool.js";
import { WriteThread, writeThreadFor } from "../../src/node/write-thread.js";
import { kernelArena } from "../../src/tensor/wasm/kernels.js";
import { repoRoot } from "../helpers/fixtures.js";
import { seededRandom, shuffle } from "../helpers/random.js";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "omni-write-thread-"));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

// The arena is shared WebAssembly memory wherever the kernels load; the writer thread needs exactly that.
const memory = kernelArena(0);
const arena = memory instanceof SharedArrayBuffer ? memory : undefined;

/** The worker under a writer thread (inside its JobThread), to stop it as a crash would. */
function workerOf(t: WriteThread): import("node:worker_threads").Worker {
  return (t as unknown as { thread: { worker: import("node:worker_threads").Worker } }).thread.worker;
}

describe.runIf(arena !== undefined)("the writer thread", () => {
  it("is only offered for buffers in the shared arena", () => {
    expect(writeThreadFor(new ArrayBuffer(8))).toBeUndefined();
    expect(writeThreadFor(new SharedArrayBuffer(8))).toBeUndefined();
    expect(writeThreadFor(arena!)).toBe(writeThreadFor(arena!));
    const b = new BufferPool().acquire(8);
    expect(writeThreadFor(b.buffer)).toBeDefined();
    new BufferPool().release(b);
  });

  it("writes every byte where it was asked to, whatever order the writes come in", async () => {
    const pool = new BufferPool();
    const thread = writeThreadFor(arena!)!;
    const file = path.join(dir, "out.bin");
    const fd = fs.openSync(file, "w");
    const size = 64;
    const expected = new Uint8Array(200 * size);
    const order = shuffle(Array.from({ length: 200 }, (_, i) => i), seededRandom(5));
    const bufs = order.map((i) => {
      const b = pool.acquire(size);
      b.fill(i & 0xff);
      expected.fill(i & 0xff, i * size, (i + 1) * size);
      return { i, b };
    });
    await Promise.all(bufs.map(({ i, b }) => thread.write(fd, b, i * size)));
    fs.closeSync(fd);
    for (const { b } of bufs) pool.release(b);
    expect(new Uint8Array(fs.readFileSync(file))).toEqual(expected);
  });

  it("a failed write rejects with the system's error code, and the thread goes on with the next", async () => {
    const pool = new BufferPool();
    const thread = writeThreadFor(arena!)!;
    const file = path.join(dir, "read-only.bin");
    fs.writeFileSync(file, "");
    const readOnly = fs.openSync(file, "r");
    const b = pool.acquire(16).fill(7);
    await expect(thread.write(readOnly, b, 0)).rejects.toMatchObject({ code: "EBADF" });
    fs.closeSync(readOnly);
    const fd = fs.openSync(file, "w");
    await thread.write(fd, b, 4);
    fs.closeSync(fd);
    pool.release(b);
    expect([...fs.readFileSync(file)]).toEqual([0, 0, 0, 0, ...new Array(16).fill(7)]);
  });

  it("a thread that dies fails what waits on it and every later write, instead of leaving them hanging", async () => {
    const pool = new BufferPool();
    const thread = new WriteThread(arena!);
    const worker = workerOf(thread);
    const fd = fs.openSync(path.join(dir, "dies.bin"), "w");
    const b = pool.acquire(1 << 20).fill(3);
    const stopped = new Promise((resolve) => worker.once("exit", resolve));
    // Either written before the thread stops or failed by its stopping, never left pending.
    const inFlight = Promise.allSettled(Array.from({ length: 50 }, (_, i) => thread.write(fd, b, i << 20)));
    await worker.terminate();
    await stopped;
    expect((await inFlight).length).toBe(50);
    expect(thread.alive).toBe(false);
    await expect(thread.write(fd, b, 0)).rejects.toThrow("internal: the writer thread stopped");
    fs.closeSync(fd);
    pool.release(b);
    // The process's own thread is another one; if it dies, the next caller gets a new one.
    const own = writeThreadFor(arena!)!;
    expect(own.alive).toBe(true);
    const ownWorker = workerOf(own);
    const ownStopped = new Promise((resolve) => ownWorker.once("exit", resolve));
    await ownWorker.terminate();
    await ownStopped;
    const next = writeThreadFor(arena!)!;
    expect(next).not.toBe(own);
    const out = path.join(dir, "after.bin");
    const fd2 = fs.openSync(out, "w");
    const small = pool.acquire(4).fill(9);
    await next.write(fd2, small, 0);
    fs.closeSync(fd2);
    pool.release(small);
    expect([...fs.readFileSync(out)]).toEqual([9, 9, 9, 9]);
  });

  it("never keeps a process alive: one that started the thread and wrote nothing, or wrote and is done, exits", () => {
    const module = path.join(repoRoot, "dist/src/node/write-thread.js");
    const pool = path.join(repoRoot, "dist/src/convert/buffer-pool.js");
    const idle = `import { BufferPool } from ${JSON.stringify(pool)}; import { startWriteThread } from ${JSON.stringify(module)}; startWriteThread(new BufferPool().memory);`;
    const used =
      `import * as fs from "node:fs"; import { BufferPool } from ${JSON.stringify(pool)}; import { writeThreadFor } from ${JSON.stringify(module)};` +
      `const b = new BufferPool().acquire(4); const fd = fs.openSync(${JSON.stringify(path.join(dir, "exit.bin"))}, "w");` +
      `await writeThreadFor(b.buffer).write(fd, b, 0); fs.closeSync(fd);`;
    for (const script of [idle, used]) {
      const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { timeout: 10_000, encoding: "utf8" });
      expect(r.signal, r.stderr).toBeNull();
      expect(r.status, r.stderr).toBe(0);
    }
  });
});

