import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli, snapshot, tempDir } from "../helpers/cli.js";

/**
 * The release as users hold it (issue 11): configs written by Python (Infinity, NaN) and by transformers 5
 * (layers_block_type, `{"__float__": …}`, text_config), models in a Hugging Face cache snapshot whose files
 * are symlinks into `blobs/`, and repo ids resolved in that cache the way huggingface_hub does.
 */

const work = tempDir("omni-ckpt-release-");
const hf = path.join(work, "hf");
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

beforeAll(() => {
  const r = runCli(["synth", hf, "--preset", "tiny", "--max-shard-size", "10KB"]);
  expect(r.code, r.stderr).toBe(0);
});

const read = (dir: string, file = "config.json"): string => fs.readFileSync(path.join(dir, file), "utf8");

function expectOk(r: { code: number | null; stderr: string }): void {
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
}

describe("config.json as Python writes it", () => {
  it("a config with Infinity and NaN converts both ways and comes back byte for byte", () => {
    const src = path.join(work, "nan");
    fs.cpSync(hf, src, { recursive: true });
    // Python's json.dumps spells a NaN so too; add one beside time_step_limit's Infinity.
    fs.writeFileSync(path.join(src, "config.json"), read(src).replace('"downsample_ratio": 0.5,', '"downsample_ratio": 0.5,\n  "dropout": NaN,'));
    expect(read(src)).toMatch(/Infinity[\s\S]*NaN|NaN[\s\S]*Infinity/);
    const native = path.join(work, "nan-native");
    const back = path.join(work, "nan-back");
    expectOk(runCli(["convert", "--to", "native", "-q", src, native]));
    expectOk(runCli(["convert", "--to", "hf", "-q", native, back]));
    expect(read(native)).toBe(read(src));
    expect(read(back)).toBe(read(src));
    expectOk(runCli(["diff", src, back]));
    expect(runCli(["inspect", src]).stdout).toMatch(/^layer pattern: ME\*ME /m);
  });

  it("--num-layers edits only the layer fields of config.json and keeps every other byte", () => {
    const out = path.join(work, "cut");
    const r = runCli(["convert", "--to", "native", "--num-layers", "3", hf, out]);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe("omni-ckpt: config.json: num_hidden_layers and the layer pattern were cut to --num-layers (every other field kept as written)\n");
    const before = read(hf);
    const after = read(out);
    expect(after).toBe(
      before
        .replace('"hybrid_override_pattern": "ME*ME"', '"hybrid_override_pattern": "ME*"')
        .replace('"num_hidden_layers": 5', '"num_hidden_layers": 3')
        .replace(/("layers_block_type": \[\n\s+"mamba",\n\s+"moe",\n\s+"attention")(,\n\s+"mamba",\n\s+"moe")/, "$1"),
    );
    expect(after).toContain('"rms_norm_eps": 1e-05');
    expect(after).toContain("Infinity");
    expect(after).toContain('"initializer_range": 0.02');
  });
});

/** The tiny checkpoint's config rewritten the way transformers 5 saves a NemotronH config. */
function transformers5Config(text: string): string {
  const config = JSON.parse(text.replace("Infinity", '"@inf"')) as Record<string, Record<string, unknown>>;
  const llm = config["llm_config"]!;
  delete llm["hybrid_override_pattern"];
  delete llm["num_hidden_layers"];
  const spell: Record<string, string> = { mamba: "linear_attention", attention: "full_attention", moe: "moe", mlp: "mlp" };
  llm["layers_block_type"] = (llm["layers_block_type"] as string[]).map((b) => spell[b]!);
  llm["time_step_limit"] = [0.0, { __float__: "Infinity" }];
  const { llm_config, ...rest } = config;
  return `${JSON.stringify({ ...rest, text_config: llm_config }, null, 2)}\n`;
}

describe("configs as transformers 5 writes them", () => {
  const src = path.join(work, "tf5");
  beforeAll(() => {
    fs.cpSync(hf, src, { recursive: true });
    fs.writeFileSync(path.join(src, "config.json"), transformers5Config(read(hf)));
  });

  it("inspect shows the layer pattern from layers_block_type under text_config", () => {
    const r = runCli(["inspect", src]);
    expectOk(r);
    expect(r.stdout).toMatch(/^model: Nemotron Omni, 5 language-model layers, hidden 16$/m);
    expect(r.stdout).toMatch(/^layer pattern: ME\*ME \(M Mamba/m);
  });

  it("converts to exactly the tensors the Python-written config gives, and --num-layers cuts the list in its own spelling", () => {
    const a = path.join(work, "tf5-native");
    const b = path.join(work, "py-native");
    expectOk(runCli(["convert", "--to", "native", "-q", src, a]));
    expectOk(runCli(["convert", "--to", "native", "-q", hf, b]));
    expectOk(runCli(["diff", a, b]));
    const cut = path.join(work, "tf5-cut");
    expectOk(runCli(["convert", "--to", "native", "-q", "--num-layers", "2", src, cut]));
    const config = JSON.parse(read(cut)) as { text_config: Record<string, unknown> };
    expect(config.text_config["layers_block_type"]).toEqual(["linear_attention", "moe"]);
    expect(config.text_config["num_hidden_layers"]).toBeUndefined();
    expect(config.text_config["time_step_limit"]).toEqual([0, { __float__: "Infinity" }]);
    expect(runCli(["inspect", cut]).stdout).toMatch(/^layer pattern: ME /m);
  });
});

const COMMIT = "0123456789abcdef0123456789abcdef01234567";
const OTHER = "fedcba9876543210fedcba9876543210fedcba98";

/**
 * A Hugging Face hub cache holding the tiny checkpoint as `nvidia/Tiny-Omni`, laid out as huggingface_hub
 * lays it out: every file once under `blobs/` (named by a hash of its content), each snapshot file a
 * relative symlink into it, `refs/main` and `refs/refs/pr/1` naming commits.
 */
function makeCache(cache: string, repo = "nvidia/Tiny-Omni"): string {
  const repoDir = path.join(cache, `models--${repo.replace("/", "--")}`);
  const blobs = path.join(repoDir, "blobs");
  fs.mkdirSync(blobs, { recursive: true });
  for (const commit of [COMMIT, OTHER]) {
    const snap = path.join(repoDir, "snapshots", commit);
    fs.mkdirSync(snap, { recursive: true });
    for (const name of fs.readdirSync(hf)) {
      const bytes = fs.readFileSync(path.join(hf, name));
      const hash = crypto.createHash("sha256").update(bytes).digest("hex");
      if (!fs.existsSync(path.join(blobs, hash))) fs.writeFileSync(path.join(blobs, hash), bytes);
      fs.symlinkSync(path.join("..", "..", "blobs", hash), path.join(snap, name));
    }
  }
  fs.mkdirSync(path.join(repoDir, "refs", "refs", "pr"), { recursive: true });
  fs.writeFileSync(path.join(repoDir, "refs", "main"), COMMIT);
  fs.writeFileSync(path.join(repoDir, "refs", "refs", "pr", "1"), `${OTHER}\n`);
  return path.join(repoDir, "snapshots", COMMIT);
}

describe("the Hugging Face cache", () => {
  const cache = path.join(work, "hub");
  let snapshotDir: string;
  beforeAll(() => {
    snapshotDir = makeCache(cache);
  });
  /** A clean environment: only the variables a test sets point at a cache. */
  const env = (vars: NodeJS.ProcessEnv): NodeJS.ProcessEnv => ({ HF_HUB_CACHE: "", HUGGINGFACE_HUB_CACHE: "", HF_HOME: "", XDG_CACHE_HOME: "", ...vars });

  it("a snapshot folder, whose files link into the repo's blobs, converts and inspects without --follow-symlinks", () => {
    expect(fs.lstatSync(path.join(snapshotDir, "config.json")).isSymbolicLink()).toBe(true);
    const before = snapshot(path.join(cache));
    expectOk(runCli(["inspect", snapshotDir]));
    const out = path.join(work, "from-snapshot");
    expectOk(runCli(["convert", "--to", "native", "-q", snapshotDir, out]));
    expectOk(runCli(["diff", out, path.join(work, "py-native")]));
    // Every other file of the snapshot was copied as a file, not as a link.
    expect(fs.lstatSync(path.join(out, "tokenizer.json")).isFile()).toBe(true);
    expect(snapshot(cache)).toEqual(before);
  });

  it("a link leading out of the repo's blobs is still refused", () => {
    const repo = path.join(work, "hub-escape", "models--x--y");
    const snap = path.join(repo, "snapshots", COMMIT);
    fs.cpSync(snapshotDir, snap, { recursive: true, verbatimSymlinks: true });
    fs.cpSync(path.join(cache, "models--nvidia--Tiny-Omni", "blobs"), path.join(repo, "blobs"), { recursive: true });
    fs.rmSync(path.join(snap, "tokenizer.json"));
    fs.symlinkSync(path.join(hf, "tokenizer.json"), path.join(snap, "tokenizer.json"));
    const r = runCli(["convert", "--to", "native", snap, path.join(work, "escape-out")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      `omni-ckpt: error: ${path.join(snap, "tokenizer.json")}: is a symlink leading outside the checkpoint folder (to ${fs.realpathSync(path.join(hf, "tokenizer.json"))}); pass --follow-symlinks to allow it\n`,
    );
    expect(fs.existsSync(path.join(work, "escape-out"))).toBe(false);
  });

  it("--force never replaces the folder a snapshot's files really are in (the repo's blobs)", () => {
    const blobs = path.join(cache, "models--nvidia--Tiny-Omni", "blobs");
    const before = snapshot(blobs);
    const r = runCli(["convert", "--to", "native", "--force", snapshotDir, blobs]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(new RegExp(`^omni-ckpt: error: --force would replace ${blobs.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}, which holds .*, a file of the source ${snapshotDir.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\n$`));
    expect(snapshot(blobs)).toEqual(before);
    // Nor with --follow-symlinks, a folder that a plain checkpoint's links lead into.
    const store = path.join(work, "store");
    const linked = path.join(work, "linked");
    fs.cpSync(hf, store, { recursive: true });
    fs.mkdirSync(linked);
    for (const f of fs.readdirSync(store)) fs.symlinkSync(path.join(store, f), path.join(linked, f));
    const s = runCli(["convert", "--to", "native", "--force", "--follow-symlinks", linked, store]);
    expect(s.code).toBe(2);
    expect(s.stderr).toContain(`--force would replace ${store}, which holds `);
    expect(fs.readdirSync(store).sort()).toEqual(fs.readdirSync(hf).sort());
  });

  it("a repo whose blobs folder is itself a link (moved to another disk) is read as its own blobs", () => {
    const repo = path.join(work, "hub-moved", "models--x--moved");
    const snap = path.join(repo, "snapshots", COMMIT);
    fs.cpSync(snapshotDir, snap, { recursive: true, verbatimSymlinks: true });
    const elsewhere = path.join(work, "big-disk", "blobs");
    fs.cpSync(path.join(cache, "models--nvidia--Tiny-Omni", "blobs"), elsewhere, { recursive: true });
    fs.symlinkSync(elsewhere, path.join(repo, "blobs"));
    expectOk(runCli(["inspect", snap]));
    // Still only the repo's own blobs: a link past them stays refused.
    fs.rmSync(path.join(snap, "tokenizer.json"));
    fs.symlinkSync(path.join(hf, "tokenizer.json"), path.join(snap, "tokenizer.json"));
    const r = runCli(["convert", "--to", "native", snap, path.join(work, "moved-out")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`${path.join(snap, "tokenizer.json")}: is a symlink leading outside the checkpoint folder`);
  });

  it("a repo id is looked up in HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub", () => {
    const viaHome = path.join(work, "hf-home");
    makeCache(path.join(viaHome, "hub"));
    const viaXdg = path.join(work, "xdg");
    makeCache(path.join(viaXdg, "huggingface", "hub"));
    for (const vars of [{ HF_HUB_CACHE: cache }, { HF_HOME: viaHome }, { XDG_CACHE_HOME: viaXdg }, { HF_HUB_CACHE: cache, HF_HOME: path.join(work, "nowhere") }]) {
      const r = runCli(["inspect", "--json", "nvidia/Tiny-Omni"], { env: env(vars) });
      expectOk(r);
      expect((JSON.parse(r.stdout) as { tensors: number }).tensors).toBeGreaterThan(100);
    }
    const out = path.join(work, "from-repo-id");
    expectOk(runCli(["convert", "--to", "native", "-q", "nvidia/Tiny-Omni", out], { env: env({ HF_HOME: viaHome }) }));
    expectOk(runCli(["diff", out, path.join(work, "py-native")]));
    expectOk(runCli(["verify", "-q", "nvidia/Tiny-Omni@main"], { env: env({ HF_HUB_CACHE: cache }) }));
  });

  it("a revision is a branch or PR ref (through refs/) or a commit (a snapshot folder)", () => {
    // Make the PR's snapshot different, so which one was read shows.
    const pr = path.join(cache, "models--nvidia--Tiny-Omni", "snapshots", OTHER);
    fs.rmSync(path.join(pr, "generation_config.json"));
    fs.writeFileSync(path.join(pr, "generation_config.json"), '{"pr": 1}\n');
    const opened = (spec: string): string => {
      const out = path.join(work, `rev-${spec.replace(/[^a-z0-9]/gi, "_")}`);
      expectOk(runCli(["convert", "--to", "native", "-q", spec, out], { env: env({ HF_HUB_CACHE: cache }) }));
      return read(out, "generation_config.json");
    };
    expect(opened("nvidia/Tiny-Omni@refs/pr/1")).toBe('{"pr": 1}\n');
    expect(opened(`nvidia/Tiny-Omni@${OTHER}`)).toBe('{"pr": 1}\n');
    expect(opened("nvidia/Tiny-Omni")).toBe(read(hf, "generation_config.json"));
  });

  it("a model not in the cache is one line saying where it looked; nothing is downloaded", () => {
    const r = runCli(["inspect", "nvidia/Not-Here"], { env: env({ HF_HUB_CACHE: cache }) });
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      `omni-ckpt: error: nvidia/Not-Here@main: not a local folder, and not in the Hugging Face cache (looked for ${path.join(cache, "models--nvidia--Not-Here")}); to read it from the Hub, name it hf://nvidia/Not-Here (or fetch it first with huggingface-cli download nvidia/Not-Here)\n`,
    );
    const rev = runCli(["inspect", "nvidia/Tiny-Omni@v2"], { env: env({ HF_HUB_CACHE: cache }) });
    expect(rev.code).toBe(2);
    expect(rev.stderr).toBe(
      `omni-ckpt: error: nvidia/Tiny-Omni@v2: revision "v2" is not in the Hugging Face cache (no ${path.join(cache, "models--nvidia--Tiny-Omni", "refs", "v2")})\n`,
    );
  });

  it("an existing local path wins over a repo id of the same spelling", () => {
    fs.mkdirSync(path.join(work, "nvidia"), { recursive: true });
    fs.cpSync(hf, path.join(work, "nvidia", "Tiny-Omni"), { recursive: true });
    fs.writeFileSync(path.join(work, "nvidia", "Tiny-Omni", "generation_config.json"), '{"local": true}\n');
    const out = path.join(work, "local-wins");
    expectOk(runCli(["convert", "--to", "native", "-q", "nvidia/Tiny-Omni", out], { cwd: work, env: env({ HF_HUB_CACHE: cache }) }));
    expect(read(out, "generation_config.json")).toBe('{"local": true}\n');
  });
});

describe("the real key families, scaled down", () => {
  it("the small preset round-trips bit-exact both ways, through files and in memory", () => {
    const small = path.join(work, "small");
    expectOk(runCli(["synth", small, "--preset", "small", "--max-shard-size", "200KB"]));
    const names = Object.keys((JSON.parse(read(small, "model.safetensors.index.json")) as { weight_map: Record<string, string> }).weight_map);
    for (const family of [
      "vision_model.radio_model.model.patch_generator.video_embedder.weight",
      "vision_model.radio_model.model.blocks.1.mlp.fc2.bias",
      "sound_encoder.encoder.feature_extractor.featurizer.fb",
      "sound_encoder.encoder.subsampling.layers.6.bias",
      "sound_encoder.encoder.layers.1.conv.pointwise_conv2.weight",
      "sound_encoder.encoder.layers.1.norm_out.bias",
    ]) {
      expect(names, family).toContain(family);
    }
    const native = path.join(work, "small-native");
    const back = path.join(work, "small-back");
    expectOk(runCli(["convert", "--to", "native", "-q", small, native]));
    expectOk(runCli(["convert", "--to", "hf", "-q", native, back]));
    expectOk(runCli(["diff", small, back]));
    expectOk(runCli(["verify", "-q", small]));
    expectOk(runCli(["verify", "-q", native]));
  });
});
