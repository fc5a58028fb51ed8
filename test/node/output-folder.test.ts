import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { LocalOutput, fsyncTree } from "../../src/node/local-output.js";
import { OutputFolder } from "../../src/node/output-folder.js";
import { tempDir } from "../helpers/cli.js";

const work = tempDir("omni-ckpt-output-folder-");
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

describe("a committed output is durable in every folder it made", () => {
  it("fsyncTree syncs every folder once, each after all the folders inside it, the root last", () => {
    const root = path.join(work, "tree");
    for (const d of ["a/b/c", "a/d", "e"]) fs.mkdirSync(path.join(root, d), { recursive: true });
    fs.writeFileSync(path.join(root, "a/b/c/file"), "x");
    fs.writeFileSync(path.join(root, "top"), "y");
    // A link to a folder outside is not the output's own folder: it is not followed.
    fs.mkdirSync(path.join(work, "outside"));
    fs.symlinkSync(path.join(work, "outside"), path.join(root, "a/link"));
    const synced: string[] = [];
    fsyncTree(root, (dir) => synced.push(path.relative(root, dir) || "."));
    expect([...synced].sort()).toEqual([".", "a", "a/b", "a/b/c", "a/d", "e"]);
    for (const dir of synced) {
      const inside = synced.filter((d) => d !== dir && (dir === "." || d.startsWith(`${dir}/`)));
      for (const child of inside) expect(synced.indexOf(child), `${child} before ${dir}`).toBeLessThan(synced.indexOf(dir));
    }
  });

  it("an output with nested folders is committed whole", async () => {
    const dst = path.join(work, "nested");
    const out = OutputFolder.prepare(dst);
    const store = new LocalOutput(out.tmp, dst);
    await store.mkdir("extra");
    await store.mkdir("extra/deeper");
    await store.writeFile("extra/deeper/file.json", new TextEncoder().encode("{}\n"));
    await store.writeFile("config.json", new TextEncoder().encode("{}\n"));
    out.commit();
    expect(fs.readFileSync(path.join(dst, "extra/deeper/file.json"), "utf8")).toBe("{}\n");
    expect(fs.readdirSync(work).filter((n) => n.startsWith(".nested"))).toEqual([]);
  });
});
