import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCliAsync } from "../helpers/cli-async.js";
import { runCli, tempDir } from "../helpers/cli.js";
import { type FakeHub, type LoopbackServer, folderHandler, startFakeHub, startServer } from "../helpers/http-server.js";

/**
 * The command line over loopback HTTP: URLs and hf:// names are accepted by inspect, verify, diff and
 * convert, HF_ENDPOINT and HF_TOKEN are read from the environment, and failures keep their exit codes.
 * The commands are spawned without blocking this process, which serves them.
 */

const work = tempDir("omni-ckpt-http-cli-");
const hf = path.join(work, "hf");
const native = path.join(work, "native");
const small = path.join(work, "small");
let server: LoopbackServer;
let hub: FakeHub;
let ignoring: LoopbackServer;
let anonymous: LoopbackServer;

beforeAll(async () => {
  expect(runCli(["synth", hf, "--preset", "tiny", "--max-shard-size", "10KB"]).code).toBe(0);
  expect(runCli(["convert", "--to", "native", "--quiet", hf, native]).code).toBe(0);
  // One file longer than the first range asked for, which a server ignoring Range would send whole.
  expect(runCli(["synth", small, "--preset", "small"]).code).toBe(0);
  server = await startServer("origin", folderHandler(work));
  hub = await startFakeHub({ "nvidia/tiny": hf });
  ignoring = await startServer("ignoring", folderHandler(work, () => ({ ignoreRange: true })));
  anonymous = await startServer("anonymous", folderHandler(work, () => ({ withoutIdentity: true })));
});

afterAll(async () => {
  await Promise.all([server?.close(), hub?.close(), ignoring?.close(), anonymous?.close()]);
  fs.rmSync(work, { recursive: true, force: true });
});

const env = (): NodeJS.ProcessEnv => ({ HF_ENDPOINT: hub.endpoint, HF_TOKEN: "hf_cli_token" });

describe("the command line over HTTP", () => {
  it("inspect of a URL and of hf:// reports what inspect of the folder does", async () => {
    const local = runCli(["inspect", hf]);
    expect(local.code).toBe(0);
    const body = (s: string): string => s.split("\n").slice(1).join("\n");
    const url = await runCliAsync(["inspect", `${server.url}/hf/`]);
    expect(url.code).toBe(0);
    expect(url.stdout.split("\n")[0]).toBe(`${server.url}/hf: Hugging Face (HF) layout`);
    expect(body(url.stdout)).toBe(body(local.stdout));
    const repo = await runCliAsync(["inspect", "hf://nvidia/tiny"], { env: env() });
    expect(repo.code).toBe(0);
    expect(repo.stdout.split("\n")[0]).toBe("hf://nvidia/tiny: Hugging Face (HF) layout");
    expect(body(repo.stdout)).toBe(body(local.stdout));
    // HF_TOKEN went to the endpoint, and to nothing else.
    expect(hub.hub.log.length).toBeGreaterThan(0);
    expect(hub.hub.log.every((r) => r.authorization === "Bearer hf_cli_token")).toBe(true);
    expect([...hub.cdn.log, ...server.log].every((r) => r.authorization === undefined)).toBe(true);
  });

  it("convert from a URL writes what a local conversion writes, and says other files were not copied", async () => {
    const dst = path.join(work, "from-url");
    const from = server.log.length;
    const r = await runCliAsync(["convert", "--to", "native", `${server.url}/hf?sig=abc`, dst]);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe(`omni-ckpt: ${server.url}/hf?… cannot be listed, so only config.json and the weights were copied; no other file (tokenizer, processor, code) was\n`);
    expect(r.stdout).toMatch(/^converted HF → native: \d+ → \d+ tensors, .* in 1 file \+ 1 other file, .* → .*from-url\n$/);
    for (const f of ["model.safetensors", "config.json"]) expect(fs.readFileSync(path.join(dst, f)).equals(fs.readFileSync(path.join(native, f))), f).toBe(true);
    // The folder's query (a signature) goes with every file's URL.
    expect(server.log.slice(from).every((e) => e.url.startsWith("/hf/") && e.url.endsWith("?sig=abc"))).toBe(true);

    const fromHub = path.join(work, "from-hub");
    const h = await runCliAsync(["convert", "--to", "native", "--json", "hf://nvidia/tiny@main", fromHub], { env: env() });
    expect(h.code).toBe(0);
    const summary = JSON.parse(h.stdout) as { auxListed: boolean; auxFiles: string[] };
    expect(summary.auxListed).toBe(true);
    expect(fs.readdirSync(fromHub).sort()).toEqual(fs.readdirSync(native).sort());
    for (const f of fs.readdirSync(native)) expect(fs.readFileSync(path.join(fromHub, f)).equals(fs.readFileSync(path.join(native, f))), f).toBe(true);
  });

  it("verify and diff take URLs and hf:// names", async () => {
    const v = await runCliAsync(["verify", "hf://nvidia/tiny"], { env: env() });
    expect(v.code).toBe(0);
    expect(v.stdout).toMatch(/^hf:\/\/nvidia\/tiny: round trip HF → native → HF/);
    expect(v.stdout).toMatch(/bit-exact round trip/);
    const d = await runCliAsync(["diff", `${server.url}/native`, native]);
    expect(d.code).toBe(0);
    expect(d.stdout).toMatch(/^identical: \d+ tensors, same names, dtypes, shapes and bytes/);
    const same = await runCliAsync(["diff", `${server.url}/hf`, "hf://nvidia/tiny"], { env: env() });
    expect(same.code).toBe(0);
    expect(same.stdout).toMatch(/^identical: /);
  });

  it("fails with one line and the input's exit code for a missing folder or a server without Range", async () => {
    const missing = await runCliAsync(["inspect", `${server.url}/nope`]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toBe(`omni-ckpt: error: ${server.url}/nope: no model.safetensors or model.safetensors.index.json in this folder\n`);
    const noRange = await runCliAsync(["convert", "--to", "native", `${ignoring.url}/small`, path.join(work, "never")]);
    expect(noRange.code).toBe(2);
    expect(noRange.stderr).toMatch(new RegExp(`^omni-ckpt: error: ${ignoring.url}/small/model\\.safetensors: the server ignores Range requests \\(HTTP 200 instead of 206 Partial Content\\); checkpoints are read only by byte ranges, so this server cannot serve one\\n$`));
    expect(fs.existsSync(path.join(work, "never"))).toBe(false);
    const unknown = await runCliAsync(["inspect", "hf://nvidia/unknown"], { env: env() });
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toBe(`omni-ckpt: error: hf://nvidia/unknown: no such model or revision on ${hub.endpoint} (HTTP 404 from ${hub.endpoint}/api/models/nvidia/unknown/revision/main)\n`);
  });

  it("says once when a server gives its files no ETag or Last-Modified, unless --quiet or --json", async () => {
    const r = await runCliAsync(["inspect", `${anonymous.url}/hf`]);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe(
      `omni-ckpt: ${anonymous.url}/hf/model.safetensors.index.json: the server sends no ETag or Last-Modified, so a file replaced on it during this run by one of the same size would go unnoticed\n`,
    );
    const json = await runCliAsync(["inspect", "--json", `${anonymous.url}/hf`]);
    expect(json.code).toBe(0);
    expect(json.stderr).toBe("");
    const quiet = await runCliAsync(["verify", "--quiet", `${anonymous.url}/hf`]);
    expect(quiet.code).toBe(0);
    expect(quiet.stderr).toBe("");
  });
});
