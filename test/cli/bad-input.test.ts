/**
 * Checkpoints come from the internet. For every malformed or hostile input, each command that reads it
 * (convert, inspect, verify, diff) exits 2 with exactly one `omni-ckpt: ` line on stderr naming the file,
 * the tensor where there is one, and what is wrong; no stack trace, nothing on stdout, nothing at DST or
 * beside it, and SRC byte for byte as it was. Odd but valid files still convert, round-trip and verify.
 *
 * One valid tiny checkpoint (4 shards + index + config) is synthesized once; every variant is a copy of it
 * with exactly one thing broken. Commands are spawned asynchronously so the tests of a table run side by side.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openSafetensors, rewriteConfig } from "../helpers/fixtures.js";
import { serialize } from "../../src/safetensors/encode.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { type AsyncCliResult, runCliAsync } from "../helpers/cli-async.js";
import { runCli, snapshot, tempDir } from "../helpers/cli.js";

const work = tempDir("omni-ckpt-bad-input-");
/** The valid HF checkpoint every variant is copied from. */
const base = path.join(work, "base");
/** The same checkpoint in the native layout, for the native variants and `--to hf` flags. */
const native = path.join(work, "native");
/** A copy of `base` that the DST-is-SRC flag cases aim at, so a wrong write could not disturb the other tests. */
const flagSrc = path.join(work, "flag-src");
/** Where every convert writes its DST, so leftovers beside DST are easy to see. */
const outDir = path.join(work, "out");
/** A valid shard outside every checkpoint folder, for indexes and symlinks that try to reach it. */
const outside = path.join(work, "outside.safetensors");
/** A valid config.json and index outside every checkpoint folder, for symlinks that lead to them. */
const outsideConfig = path.join(work, "outside-config.json");
const outsideIndex = path.join(work, "outside-index.json");
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

// The synthetic checkpoint is deterministic; beforeAll checks that these names are where the table expects.
/** The shard that starts the language model: the first one the index lists, and the target of most breaks. */
const SHARD1 = "model-00002-of-00004.safetensors";
/** The shard holding layer 4's experts. */
const SHARD2 = "model-00004-of-00004.safetensors";
/** The shard holding layer 1 (its norm, which a break copies into SHARD1, and its experts). */
const NORM_SHARD = "model-00003-of-00004.safetensors";
const INDEX = "model.safetensors.index.json";
const NATIVE_FILE = "model.safetensors";
/** SHARD1's first tensor by offset: [0, 8). */
const SCALAR = "sound_encoder.encoder.layers.0.conv.norm.num_batches_tracked";
/** SHARD1's second tensor by offset: F32[4] at [8, 24), the target of the per-tensor breaks. */
const A_LOG = "language_model.backbone.layers.0.mixer.A_log";
/** SHARD1's last tensor by offset: BF16[12] at [9648, 9672). */
const LAST = "sound_projection.norm.weight";
const expertKey = (layer: number, e: number, proj: "up_proj" | "down_proj"): string =>
  `language_model.backbone.layers.${layer}.mixer.experts.${e}.${proj}.weight`;
const GROUPED = "language_model.model.layers.1.mixer.experts.gate_and_up_projs";

// ---------------------------------------------------------------------------------------------------------
// Building broken files

const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
/** A name in double quotes, as the messages print it, as a regex. */
const q = (s: string): string => esc(JSON.stringify(s));
/** `tensor "name": ` as the messages print it, as a regex. */
const tensor = (name: string): string => `tensor ${q(name)}: `;

interface Entry {
  dtype: unknown;
  shape: unknown[];
  data_offsets: unknown[];
  [k: string]: unknown;
}

/** A safetensors file as its header pairs (in order, duplicates allowed) and its data section. */
interface Draft {
  pairs: [string, unknown][];
  data: Buffer;
}

/** A JSON literal written as is, for numbers `JSON.stringify` cannot produce (1.5 stays 1.5, 2^53 + 1 stays exact). */
const raw = (literal: string): string => `@@raw(${literal})@@`;

function headerJson(pairs: readonly [string, unknown][]): string {
  return `{${pairs.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(",")}}`.replace(/"@@raw\((.*?)\)@@"/g, "$1");
}

function writeImage(file: string, header: string | Uint8Array, data: Uint8Array): void {
  const h = typeof header === "string" ? Buffer.from(header, "utf8") : Buffer.from(header);
  const p = Buffer.alloc(8);
  p.writeBigUInt64LE(BigInt(h.byteLength));
  fs.writeFileSync(file, Buffer.concat([p, h, data]));
}

/**
 * Edit a shard's header (and data) by hand. The callback may return header text or bytes to write instead
 * of the edited pairs; the length prefix always tells the truth about them.
 */
function editShard(file: string, edit: (d: Draft) => { header?: string | Uint8Array } | void): void {
  const bytes = fs.readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  const d: Draft = {
    pairs: Object.entries(JSON.parse(bytes.subarray(8, 8 + n).toString("utf8")) as Record<string, unknown>),
    data: Buffer.from(bytes.subarray(8 + n)),
  };
  const o = edit(d) ?? {};
  writeImage(file, o.header ?? headerJson(d.pairs), d.data);
}

/** Overwrite the 8-byte header length of a file, nothing else. */
function setPrefix(file: string, value: bigint): void {
  const bytes = fs.readFileSync(file);
  bytes.writeBigUInt64LE(value, 0);
  fs.writeFileSync(file, bytes);
}

function entry(d: Draft, name: string): Entry {
  const p = d.pairs.find(([k]) => k === name);
  if (!p) throw new Error(`test setup: no tensor ${name} in this shard`);
  return p[1] as Entry;
}

/** Read every tensor of a (small) shard, change the set, and write it back as a valid file. */
function rewriteShard(file: string, edit: (tensors: Map<string, Tensor>) => void): void {
  const f = openSafetensors(file);
  const tensors = new Map<string, Tensor>();
  for (const name of f.tensors.keys()) tensors.set(name, f.readTensorSync(name));
  f.close();
  edit(tensors);
  fs.writeFileSync(file, serialize(tensors));
}

function editIndex(dir: string, edit: (weightMap: Record<string, string>) => void): void {
  const file = path.join(dir, INDEX);
  const index = JSON.parse(fs.readFileSync(file, "utf8")) as { weight_map: Record<string, string> };
  edit(index.weight_map);
  fs.writeFileSync(file, JSON.stringify(index, null, 2));
}

function editConfig(dir: string, edit: (llm: Record<string, unknown>) => void): void {
  rewriteConfig(dir, (config) => edit(config["llm_config"] as Record<string, unknown>));
}

/** Point every tensor the index places in `from` at `to` instead. */
function moveShard(dir: string, from: string, to: string): void {
  editIndex(dir, (m) => {
    for (const k of Object.keys(m)) if (m[k] === from) m[k] = to;
  });
}

/** Add a tensor to the index without `obj[k] = v`, which a key named `__proto__` would turn into a prototype change. */
function indexTensor(dir: string, name: string, shard: string): void {
  editIndex(dir, (m) => Object.defineProperty(m, name, { value: shard, enumerable: true, writable: true, configurable: true }));
}

// ---------------------------------------------------------------------------------------------------------
// The table of bad inputs

type Command = "convert" | "inspect" | "verify" | "diff BAD GOOD" | "diff GOOD BAD";
const ALL: readonly Command[] = ["convert", "inspect", "verify", "diff BAD GOOD", "diff GOOD BAD"];

/** What a command does instead of refusing, where refusing is not its job. */
interface Outcome {
  readonly code: number;
  readonly stdout: RegExp;
}

interface BadInput {
  readonly group: string;
  readonly name: string;
  /** The valid checkpoint it starts from (a copy of it is at `dir` when `build` runs). */
  readonly from?: "hf" | "native";
  /** Break exactly one thing in the copy at `dir`. */
  readonly build: (dir: string) => void;
  /** The one stderr line after `omni-ckpt: error: `, as a regex source, for the copy at `dir`. */
  readonly error: (dir: string) => string;
  readonly commands?: readonly Command[];
  /** Commands that read the input but, by design, do not refuse it. */
  readonly otherwise?: Partial<Record<Command, Outcome>>;
  /** The CLI is killed after this long: a FIFO must not hang it. */
  readonly timeoutMs?: number;
}

const inGroup = (group: string, cases: Omit<BadInput, "group">[]): BadInput[] => cases.map((c) => ({ ...c, group }));

const shard1 = (dir: string): string => esc(path.join(dir, SHARD1));
const index = (dir: string): string => esc(path.join(dir, INDEX));
const config = (dir: string): string => esc(path.join(dir, "config.json"));

const safetensorsCases = inGroup("safetensors", [
  {
    name: "empty file",
    build: (dir) => fs.writeFileSync(path.join(dir, SHARD1), ""),
    error: (dir) => `${shard1(dir)}: file is 0 bytes, too short to hold a safetensors header length`,
  },
  {
    name: "truncated in the header",
    build: (dir) => fs.truncateSync(path.join(dir, SHARD1), 8 + 100),
    error: (dir) => `${shard1(dir)}: header length 3768 runs past the end of the file \\(108 bytes\\)`,
  },
  {
    name: "truncated in the data",
    build: (dir) => fs.truncateSync(path.join(dir, SHARD1), fs.statSync(path.join(dir, SHARD1)).size - 10),
    error: (dir) => `${shard1(dir)}: ${tensor(LAST)}data \\[9648, 9672\\) runs past the end of the file \\(9662 data bytes\\)`,
  },
  {
    name: "header length larger than the file",
    build: (dir) => setPrefix(path.join(dir, SHARD1), BigInt(fs.statSync(path.join(dir, SHARD1)).size)),
    error: (dir) => {
      const size = fs.statSync(path.join(dir, SHARD1)).size;
      return `${shard1(dir)}: header length ${size} runs past the end of the file \\(${size} bytes\\)`;
    },
  },
  {
    name: "absurd header length 2^40",
    build: (dir) => setPrefix(path.join(dir, SHARD1), 2n ** 40n),
    error: (dir) => `${shard1(dir)}: header length 1099511627776 exceeds the 100000000-byte limit`,
  },
  {
    name: "header not JSON",
    build: (dir) => editShard(path.join(dir, SHARD1), (d) => ({ header: `<${headerJson(d.pairs).slice(1)}` })),
    error: (dir) => `${shard1(dir)}: header is not valid JSON: unexpected character "<" at character 0`,
  },
  {
    name: "header a JSON array",
    build: (dir) => editShard(path.join(dir, SHARD1), (d) => ({ header: JSON.stringify(d.pairs) })),
    error: (dir) => `${shard1(dir)}: header is an array, not a JSON object`,
  },
  {
    name: "unknown dtype",
    build: (dir) => editShard(path.join(dir, SHARD1), (d) => void (entry(d, A_LOG).dtype = "F128")),
    error: (dir) => `${shard1(dir)}: ${tensor(A_LOG)}unknown dtype "F128"`,
  },
  {
    name: "negative dim",
    build: (dir) => editShard(path.join(dir, SHARD1), (d) => void (entry(d, A_LOG).shape = [-4])),
    error: (dir) => `${shard1(dir)}: ${tensor(A_LOG)}shape dimension 0 is negative \\(-4\\)`,
  },
  {
    name: "fractional dim 1.5",
    build: (dir) => editShard(path.join(dir, SHARD1), (d) => void (entry(d, A_LOG).shape = [raw("1.5")])),
    error: (dir) => `${shard1(dir)}: ${tensor(A_LOG)}shape dimension 0 1\\.5 is not an integer`,
  },
  {
    name: "overflowing shape",
    build: (dir) => editShard(path.join(dir, SHARD1), (d) => void (entry(d, A_LOG).shape = [2 ** 31, 2 ** 31, 2 ** 31])),
    error: (dir) => `${shard1(dir)}: ${tensor(A_LOG)}shape \\[2147483648, 2147483648, 2147483648\\] holds 2\\^53 bytes or more`,
  },
  {
    // Consistent with its shape, contiguous, but longer than the file: the last tensor grows by one element.
    name: "offsets out of bounds",
    build: (dir) =>
      editShard(path.join(dir, SHARD1), (d) => {
        const e = entry(d, LAST);
        e.shape = [13];
        e.data_offsets = [9648, 9648 + 13 * 2];
      }),
    error: (dir) => `${shard1(dir)}: ${tensor(LAST)}data \\[9648, 9674\\) runs past the end of the file \\(9672 data bytes\\)`,
  },
  {
    name: "overlapping offsets",
    build: (dir) => editShard(path.join(dir, SHARD1), (d) => void (entry(d, A_LOG).data_offsets = [4, 20])),
    error: (dir) => `${shard1(dir)}: ${tensor(A_LOG)}data \\[4, 20\\) overlaps tensor ${q(SCALAR)}`,
  },
  {
    name: "gap between tensors",
    build: (dir) => editShard(path.join(dir, SHARD1), (d) => void (entry(d, A_LOG).data_offsets = [12, 28])),
    error: (dir) => `${shard1(dir)}: ${tensor(A_LOG)}gap of 4 bytes in the data before it \\(after ${q(SCALAR)}\\)`,
  },
  {
    name: "offsets not matching shape × itemsize",
    build: (dir) => editShard(path.join(dir, SHARD1), (d) => void (entry(d, A_LOG).data_offsets = [8, 20])),
    error: (dir) => `${shard1(dir)}: ${tensor(A_LOG)}data_offsets \\[8, 20\\] span 12 bytes but F32\\[4\\] needs 16`,
  },
  {
    name: "integer above 2^53 in data_offsets",
    build: (dir) => editShard(path.join(dir, SHARD1), (d) => void (entry(d, A_LOG).data_offsets = [8, raw("9007199254740993")])),
    error: (dir) => `${shard1(dir)}: ${tensor(A_LOG)}data_offsets\\[1\\] 9007199254740993 is 2\\^53 or more and cannot be represented exactly`,
  },
  {
    name: "same tensor name twice in one header",
    build: (dir) =>
      editShard(path.join(dir, SHARD1), (d) => {
        const at = d.pairs.findIndex(([k]) => k === A_LOG);
        d.pairs.splice(at + 1, 0, [A_LOG, { ...entry(d, A_LOG) }]);
      }),
    error: (dir) => `${shard1(dir)}: ${tensor(A_LOG)}appears twice in the header \\(JSON\\.parse would silently keep the last\\)`,
  },
  {
    name: "__metadata__ not string → string",
    build: (dir) => editShard(path.join(dir, SHARD1), (d) => void (d.pairs[0] = ["__metadata__", { format: "pt", version: 2 }])),
    error: (dir) => `${shard1(dir)}: __metadata__ must map strings to strings, but key "version" holds the number 2`,
  },
  {
    name: "bytes after the last tensor",
    build: (dir) => fs.appendFileSync(path.join(dir, SHARD1), Buffer.alloc(16)),
    error: (dir) => `${shard1(dir)}: 16 bytes after the last tensor are not covered by any tensor`,
  },
  {
    name: "invalid UTF-8 in the header",
    build: (dir) =>
      editShard(path.join(dir, SHARD1), (d) => {
        const header = Buffer.from(headerJson(d.pairs), "utf8");
        header[header.indexOf('"pt"') + 2] = 0xff; // "pt" → "p\xff"
        return { header };
      }),
    error: (dir) => `${shard1(dir)}: header is not valid UTF-8`,
  },
]);

/** diff compares tensors and never reads config.json: a broken config is not its business. */
const DIFF_IGNORES_CONFIG: Partial<Record<Command, Outcome>> = {
  "diff BAD GOOD": { code: 0, stdout: /^identical: \d+ tensors, same names, dtypes, shapes and bytes/m },
  "diff GOOD BAD": { code: 0, stdout: /^identical: \d+ tensors, same names, dtypes, shapes and bytes/m },
};

const folderCases = inGroup("folder", [
  {
    name: "index not JSON",
    build: (dir) => fs.writeFileSync(path.join(dir, INDEX), '{"metadata": {"total_size": 1}, "weight_map": {'),
    error: (dir) => `${index(dir)}: is not valid JSON: expected a string key in object at character 47`,
  },
  {
    name: "index naming a missing shard",
    build: (dir) => moveShard(dir, SHARD1, "model-00006-of-00005.safetensors"),
    error: (dir) => `${index(dir)}: names shard "model-00006-of-00005\\.safetensors", which cannot be opened: no such file \\(ENOENT\\)`,
  },
  {
    // A valid shard waits at ../outside.safetensors: following the index would "work".
    name: "index naming ../outside.safetensors",
    build: (dir) => {
      moveShard(dir, SHARD1, "../outside.safetensors");
      fs.rmSync(path.join(dir, SHARD1));
    },
    error: (dir) => `${index(dir)}: names shard "\\.\\./outside\\.safetensors", which lies outside the folder`,
  },
  {
    name: "index naming an absolute path",
    build: (dir) => {
      moveShard(dir, SHARD1, outside);
      fs.rmSync(path.join(dir, SHARD1));
    },
    error: (dir) => `${index(dir)}: names shard ${q(outside)} by absolute path; shards must lie inside the folder`,
  },
  {
    name: "shard symlink leading outside",
    build: (dir) => {
      fs.rmSync(path.join(dir, SHARD1));
      fs.symlinkSync(outside, path.join(dir, SHARD1));
    },
    error: (dir) =>
      `${shard1(dir)}: is a symlink leading outside the checkpoint folder \\(to ${esc(fs.realpathSync(outside))}\\); pass --follow-symlinks to allow it`,
  },
  {
    // Beyond the issue's list: an index (like a shard or config.json) may not lead outside the folder unless
    // --follow-symlinks; otherwise a hostile folder could point it at any file and errors would quote it.
    name: "index symlink leading outside",
    build: (dir) => {
      fs.rmSync(path.join(dir, INDEX));
      fs.symlinkSync(outsideIndex, path.join(dir, INDEX));
    },
    error: (dir) =>
      `${index(dir)}: is a symlink leading outside the checkpoint folder \\(to ${esc(fs.realpathSync(outsideIndex))}\\); pass --follow-symlinks to allow it`,
  },
  {
    name: "index listing a tensor the shard lacks",
    build: (dir) => indexTensor(dir, "language_model.backbone.layers.0.mixer.ghost.weight", SHARD1),
    error: (dir) => `${index(dir)}: lists tensor "language_model\\.backbone\\.layers\\.0\\.mixer\\.ghost\\.weight" in ${esc(SHARD1)}, which does not hold it`,
  },
  {
    name: "index omitting a tensor the shard has",
    build: (dir) => editIndex(dir, (m) => delete m[A_LOG]),
    error: (dir) => `${shard1(dir)}: ${tensor(A_LOG)}is not listed in model\\.safetensors\\.index\\.json`,
  },
  {
    name: "shard is a FIFO",
    build: (dir) => {
      fs.rmSync(path.join(dir, SHARD1));
      const r = spawnSync("mkfifo", [path.join(dir, SHARD1)]);
      if (r.status !== 0) throw new Error(`mkfifo failed: ${r.stderr}`);
    },
    error: (dir) => `${shard1(dir)}: is not a regular file \\(a FIFO\\)`,
    timeoutMs: 5_000,
  },
  {
    // SHARD1 also carries a tensor the index places in another shard (where it still is).
    name: "tensor present in two shards",
    build: (dir) => {
      const f = openSafetensors(path.join(dir, NORM_SHARD));
      const stray = f.readTensorSync("language_model.backbone.layers.1.norm.weight");
      f.close();
      rewriteShard(path.join(dir, SHARD1), (m) => m.set("language_model.backbone.layers.1.norm.weight", stray));
    },
    error: (dir) =>
      `${esc(dir)}/model-0000[23]-of-00004\\.safetensors: ${tensor("language_model.backbone.layers.1.norm.weight")}` +
      `is also stored in ${esc(dir)}/model-0000[23]-of-00004\\.safetensors; a tensor may live in one shard only`,
  },
  {
    name: "config.json missing",
    build: (dir) => fs.rmSync(path.join(dir, "config.json")),
    error: (dir) => `${config(dir)}: cannot open: no such file \\(ENOENT\\)`,
    otherwise: DIFF_IGNORES_CONFIG,
  },
  {
    // chmod 000 does not stop root: a directory cannot be read as a file by anyone.
    name: "config.json unreadable (a directory)",
    build: (dir) => {
      fs.rmSync(path.join(dir, "config.json"));
      fs.mkdirSync(path.join(dir, "config.json"));
    },
    error: (dir) => `${config(dir)}: is not a regular file \\(a directory\\)`,
    otherwise: DIFF_IGNORES_CONFIG,
  },
  {
    name: "config.json invalid UTF-8",
    build: (dir) => fs.writeFileSync(path.join(dir, "config.json"), Buffer.from([...Buffer.from('{"llm_config": "'), 0xc3, 0x28, ...Buffer.from('"}')])),
    error: (dir) => `${config(dir)}: is not valid UTF-8`,
    otherwise: DIFF_IGNORES_CONFIG,
  },
  {
    name: "config.json invalid JSON",
    build: (dir) => fs.writeFileSync(path.join(dir, "config.json"), '{"llm_config": {"num_hidden_layers": 5,}}'),
    error: (dir) => `${config(dir)}: is not valid JSON: expected a string key in object at character \\d+`,
    otherwise: DIFF_IGNORES_CONFIG,
  },
  {
    // config.json is read by convert, inspect and verify: none follows it out of the folder unless allowed.
    name: "config.json symlink leading outside",
    build: (dir) => {
      fs.rmSync(path.join(dir, "config.json"));
      fs.symlinkSync(outsideConfig, path.join(dir, "config.json"));
    },
    error: (dir) =>
      `${config(dir)}: is a symlink leading outside the checkpoint folder \\(to ${esc(fs.realpathSync(outsideConfig))}\\); pass --follow-symlinks to allow it`,
    otherwise: DIFF_IGNORES_CONFIG,
  },
  {
    name: "config.json num_hidden_layers too small",
    build: (dir) => editConfig(dir, (llm) => void (llm["num_hidden_layers"] = 4)),
    error: (dir) =>
      `${config(dir)}: disagrees with the tensors: num_hidden_layers is 4, ` +
      `but the checkpoint has tensors past it \\(language_model\\.backbone\\.layers\\.4\\.[\\w.]+\\)`,
    otherwise: DIFF_IGNORES_CONFIG,
  },
  {
    name: "config.json n_routed_experts too small",
    build: (dir) => editConfig(dir, (llm) => void (llm["n_routed_experts"] = 3)),
    error: (dir) =>
      `${config(dir)}: disagrees with the tensors: n_routed_experts is 3, but the checkpoint has expert 3 ` +
      // Expert 3's up and down weights in layers 1 and 4: 4 disagreements.
      `\\(${esc(expertKey(1, 3, "down_proj"))}\\) \\(and 3 more disagreements\\)`,
    otherwise: DIFF_IGNORES_CONFIG,
  },
  {
    // The reference parses the layer number: "04" is no spelling of layer 4's experts, which are then missing.
    name: "expert weights of a layer spelled 04",
    build: (dir) => {
      const respell = (name: string): string => name.replace(/^language_model\.backbone\.layers\.4\.mixer\.experts\./, "language_model.backbone.layers.04.mixer.experts.");
      rewriteShard(path.join(dir, SHARD2), (t) => {
        for (const [k, v] of [...t]) if (respell(k) !== k) t.delete(k), t.set(respell(k), v);
      });
      editIndex(dir, (m) => {
        for (const k of Object.keys(m)) if (respell(k) !== k) (m[respell(k)] = m[k]!), delete m[k];
      });
    },
    error: (dir) =>
      `${esc(dir)}: expert weights missing from checkpoint: 8/16 required weights not found in MoE layers \\[1, 4\\]; first missing: ` +
      `${[expertKey(4, 0, "up_proj"), expertKey(4, 0, "down_proj"), expertKey(4, 1, "up_proj"), expertKey(4, 1, "down_proj"), expertKey(4, 2, "up_proj")].map(esc).join(", ")} \\(and 3 more\\)`,
    // diff reads no rules: the names differ, which is what it reports.
    otherwise: {
      "diff BAD GOOD": { code: 3, stdout: /^different: 16 differences, /m },
      "diff GOOD BAD": { code: 3, stdout: /^different: 16 differences, /m },
    },
  },
  {
    // Counted, never listed: a config may claim any number, and a list that long would not fit in memory.
    name: "config.json n_routed_experts absurdly large",
    build: (dir) => editConfig(dir, (llm) => void (llm["n_routed_experts"] = 1_000_000_000_000)),
    error: (dir) =>
      `${esc(dir)}: expert weights missing from checkpoint: 3999999999984/4000000000000 required weights not found in MoE layers \\[1, 4\\]; ` +
      `first missing: ${esc(expertKey(1, 4, "up_proj"))}, ${esc(expertKey(1, 4, "down_proj"))}, ${esc(expertKey(1, 5, "up_proj"))}, ${esc(expertKey(1, 5, "down_proj"))}, ${esc(expertKey(1, 6, "up_proj"))} \\(and 3999999999979 more\\)`,
    otherwise: DIFF_IGNORES_CONFIG,
  },
  {
    name: "config.json moe_intermediate_size wrong",
    build: (dir) => editConfig(dir, (llm) => void (llm["moe_intermediate_size"] = 8)),
    error: (dir) =>
      `${config(dir)}: disagrees with the tensors: moe_intermediate_size is 8, ` +
      // Every expert weight of layers 1 and 4: 4 experts × 2 projections × 2 layers.
      `but ${esc(expertKey(1, 0, "down_proj"))} is \\[16, 12\\] \\(and 15 more disagreements\\)`,
    otherwise: DIFF_IGNORES_CONFIG,
  },
]);

/** inspect describes an expert-parallel slice, which cannot go to HF alone, instead of refusing it. */
const inspectReports = (reason: RegExp): Partial<Record<Command, Outcome>> => ({
  inspect: { code: 0, stdout: new RegExp(`^convert --to (native|hf): not possible: \\S+: ${reason.source}`, "m") },
});

const sameLayerExperts = (dir: string, what: string): string =>
  `${esc(dir)}: layer 1 up_proj experts: ${q(expertKey(1, 1, "up_proj"))} is ${what} ` +
  `but ${q(expertKey(1, 0, "up_proj"))} is BF16\\[12, 16\\]; experts of one layer must match`;

const contentCases = inGroup("model", [
  {
    name: "missing expert",
    build: (dir) => {
      const victim = expertKey(4, 2, "down_proj");
      rewriteShard(path.join(dir, SHARD2), (m) => m.delete(victim));
      editIndex(dir, (m) => delete m[victim]);
    },
    error: (dir) =>
      `${esc(dir)}: expert weights missing from checkpoint: 1/16 required weights not found in MoE layers \\[1, 4\\]; ` +
      `first missing: ${esc(expertKey(4, 2, "down_proj"))}`,
    commands: ["convert", "inspect", "verify"],
  },
  {
    // 3-d with the same elements, so config.json (which only sizes matrices) does not object first.
    name: "experts of one layer with different shapes",
    build: (dir) => editShard(path.join(dir, NORM_SHARD), (d) => void (entry(d, expertKey(1, 1, "up_proj")).shape = [12, 16, 1])),
    error: (dir) => sameLayerExperts(dir, "BF16\\[12, 16, 1\\]"),
    commands: ["convert", "inspect", "verify"],
  },
  {
    name: "experts of one layer with different dtypes",
    build: (dir) => editShard(path.join(dir, NORM_SHARD), (d) => void (entry(d, expertKey(1, 1, "up_proj")).dtype = "F16")),
    error: (dir) => sameLayerExperts(dir, "F16\\[12, 16\\]"),
    commands: ["convert", "inspect", "verify"],
  },
  {
    // Fewer rows than experts reads as an expert-parallel slice: inspect says so, HF needs all experts.
    name: "native grouped tensor holding 3 of 4 experts",
    from: "native",
    build: (dir) =>
      rewriteShard(path.join(dir, NATIVE_FILE), (m) => {
        const t = m.get(GROUPED)!;
        m.set(GROUPED, { dtype: t.dtype, shape: [3, 16, 12], data: t.data.slice(0, 3 * 16 * 12 * 2) });
      }),
    error: (dir) =>
      `${esc(dir)}: ${q(GROUPED)}: holds 3 experts on axis 0 but the config has 4 ` +
      `\\(an expert-parallel slice cannot be converted to HF on its own\\)`,
    commands: ["convert", "inspect", "verify"],
    otherwise: inspectReports(/.*holds 3 experts on axis 0 but the config has 4/),
  },
  {
    name: "native grouped tensor holding 5 of 4 experts",
    from: "native",
    build: (dir) =>
      rewriteShard(path.join(dir, NATIVE_FILE), (m) => {
        const t = m.get(GROUPED)!;
        m.set(GROUPED, { dtype: t.dtype, shape: [5, 16, 12], data: Buffer.concat([t.data, t.data.subarray(0, 16 * 12 * 2)]) });
      }),
    error: (dir) => `${config(dir)}: disagrees with the tensors: n_routed_experts is 4, but ${esc(GROUPED)} groups 5 experts`,
    commands: ["convert", "inspect", "verify"],
  },
]);

const badInputs: readonly BadInput[] = [...safetensorsCases, ...folderCases, ...contentCases];

const slug = (s: string): string => s.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
const dirOf = (c: BadInput): string => path.join(work, `${c.group}-${slug(c.name)}`);

// ---------------------------------------------------------------------------------------------------------
// Odd but valid files

interface OddInput {
  readonly name: string;
  readonly build: (dir: string) => void;
  /**
   * What `convert --to native` prints on stderr (SPEC §1: unknown keys are kept "with a warning"); the way
   * back to HF names no rule for them and passes them through silently.
   */
  readonly warnings?: RegExp;
}

const oddInputs: readonly OddInput[] = [
  {
    name: "a tensor named __proto__",
    build: (dir) => {
      rewriteShard(path.join(dir, SHARD1), (m) => m.set("__proto__", { dtype: "F32", shape: [2], data: new Uint8Array(new Float32Array([1.5, -2]).buffer) }));
      indexTensor(dir, "__proto__", SHARD1);
    },
    warnings: /^omni-ckpt: warning: unknown key __proto__; kept as is\n$/,
  },
  {
    name: "zero-size tensors",
    build: (dir) => {
      const empty = (dtype: "BF16" | "F32", shape: number[]): Tensor => ({ dtype, shape, data: new Uint8Array(0) });
      rewriteShard(path.join(dir, SHARD1), (m) => {
        m.set("vision_model.radio_model.empty_rows", empty("BF16", [0, 16]));
        m.set("vision_model.radio_model.empty_cols", empty("F32", [16, 0]));
        m.set("vision_model.radio_model.empty_1d", empty("F32", [0]));
      });
      for (const n of ["empty_rows", "empty_cols", "empty_1d"]) indexTensor(dir, `vision_model.radio_model.${n}`, SHARD1);
    },
  },
  {
    name: "0-d scalars",
    build: (dir) => {
      rewriteShard(path.join(dir, SHARD1), (m) => {
        m.set("vision_model.radio_model.scale", { dtype: "F32", shape: [], data: new Uint8Array(new Float32Array([0.125]).buffer) });
        m.set("vision_model.radio_model.step", { dtype: "BF16", shape: [], data: new Uint8Array([0x80, 0x3f]) });
      });
      indexTensor(dir, "vision_model.radio_model.scale", SHARD1);
      indexTensor(dir, "vision_model.radio_model.step", SHARD1);
    },
  },
  {
    name: "unknown extra fields in a tensor entry",
    build: (dir) =>
      editShard(path.join(dir, SHARD1), (d) => {
        const e = entry(d, A_LOG);
        e["quantization"] = { scheme: "none", bits: 16 };
        e["note"] = "hand-edited";
      }),
  },
  {
    name: "header padded with extra spaces",
    build: (dir) => editShard(path.join(dir, SHARD1), (d) => ({ header: headerJson(d.pairs) + " ".repeat(1001) })),
  },
  {
    // A 3-byte U8 tensor first and an unpadded header: no tensor starts on an aligned file position.
    name: "unaligned data offsets",
    build: (dir) => {
      editShard(path.join(dir, SHARD1), (d) => {
        for (const [k, v] of d.pairs) {
          if (k === "__metadata__") continue;
          const e = v as Entry;
          e.data_offsets = (e.data_offsets as number[]).map((o) => o + 3);
        }
        d.pairs.splice(1, 0, ["vision_model.radio_model.odd_bytes", { dtype: "U8", shape: [3], data_offsets: [0, 3] }]);
        d.data = Buffer.concat([Buffer.from([7, 8, 9]), d.data]);
        let header = headerJson(d.pairs);
        if ((8 + header.length) % 2 === 0) header += " ";
        return { header };
      });
      indexTensor(dir, "vision_model.radio_model.odd_bytes", SHARD1);
    },
  },
];

const oddDir = (o: OddInput): string => path.join(work, `odd-${slug(o.name)}`);

// ---------------------------------------------------------------------------------------------------------

/** SRC folders as they were before any command ran. */
const before = new Map<string, Map<string, string>>();

beforeAll(() => {
  const s = runCli(["synth", base, "--preset", "tiny", "--max-shard-size", "10KB"]);
  expect(s.code, s.stderr).toBe(0);
  const c = runCli(["convert", "--to", "native", "-q", base, native]);
  expect(c.code, c.stderr).toBe(0);
  fs.mkdirSync(outDir);
  fs.copyFileSync(path.join(base, SHARD1), outside);
  fs.copyFileSync(path.join(base, "config.json"), outsideConfig);
  fs.copyFileSync(path.join(base, INDEX), outsideIndex);
  fs.cpSync(base, flagSrc, { recursive: true });
  // The names the table relies on are where it expects them.
  const first = openSafetensors(path.join(base, SHARD1));
  expect(first.header.entries.map((e) => e.name).slice(0, 2)).toEqual([SCALAR, A_LOG]);
  const last = first.header.entries.at(-1)!;
  expect([last.name, last.begin, last.end, first.header.headerLength, first.source.size]).toEqual([LAST, 9648, 9672, 3768, 13448]);
  first.close();
  const weightMap = (JSON.parse(fs.readFileSync(path.join(base, INDEX), "utf8")) as { weight_map: Record<string, string> }).weight_map;
  expect(Object.values(weightMap)[0]).toBe(SHARD1);
  expect(weightMap[expertKey(4, 2, "down_proj")]).toBe(SHARD2);
  expect(weightMap["language_model.backbone.layers.1.norm.weight"]).toBe(NORM_SHARD);
  expect(weightMap[expertKey(1, 1, "up_proj")]).toBe(NORM_SHARD);

  for (const [dir, from, build] of [
    ...badInputs.map((b) => [dirOf(b), b.from ?? "hf", b.build] as const),
    ...oddInputs.map((o) => [oddDir(o), "hf", o.build] as const),
  ]) {
    fs.cpSync(from === "native" ? native : base, dir, { recursive: true });
    build(dir);
  }
  for (const dir of [base, native, flagSrc, ...badInputs.map(dirOf), ...oddInputs.map(oddDir)]) before.set(dir, snapshot(dir));
});

/** Names beside `dst` that a conversion to it may leave: temporary folders, old copies, locks. */
function leftovers(dst: string): string[] {
  const name = path.basename(dst);
  return fs.readdirSync(path.dirname(dst)).filter((n) => n.startsWith(`.${name}.omni-ckpt`));
}

/** One `omni-ckpt: error:` line matching `detail`, exit 2, nothing on stdout, no stack trace. */
function expectRefusal(r: AsyncCliResult, detail: string): void {
  expect(r.timedOut, "the command hung and was killed").toBe(false);
  expect({ code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({
    code: 2,
    stdout: "",
    stderr: expect.stringMatching(new RegExp(`^omni-ckpt: error: ${detail}\\n$`)),
  });
  expect(r.stderr).not.toMatch(/^\s+at /m);
}

/** Run one command on one bad input and check everything the contract promises. */
async function checkRefusal(input: BadInput, command: Command): Promise<void> {
  const dir = dirOf(input);
  const good = input.from === "native" ? native : base;
  const dst = path.join(outDir, `${path.basename(dir)}-dst`);
  const to = input.from === "native" ? "hf" : "native";
  const args: Record<Command, string[]> = {
    convert: ["convert", "--to", to, dir, dst],
    inspect: ["inspect", dir],
    verify: ["verify", dir],
    "diff BAD GOOD": ["diff", dir, good],
    "diff GOOD BAD": ["diff", good, dir],
  };
  const r = await runCliAsync(args[command], { timeoutMs: input.timeoutMs ?? 20_000 });
  const other = input.otherwise?.[command];
  if (other) {
    expect(r.timedOut).toBe(false);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: other.code, stderr: "" });
    expect(r.stdout).toMatch(other.stdout);
  } else {
    expectRefusal(r, input.error(dir));
  }
  if (command === "convert") {
    expect(fs.existsSync(dst)).toBe(false);
    expect(leftovers(dst)).toEqual([]);
  }
  expect(snapshot(dir)).toEqual(before.get(dir));
  if (command.startsWith("diff")) expect(snapshot(good)).toEqual(before.get(good));
}

const cases = badInputs.flatMap((input) =>
  (input.commands ?? ALL).map((command) => ({ title: `${input.group}: ${input.name} › ${command}`, input, command })),
);

describe.concurrent("bad inputs: exit 2, one line naming file, tensor and problem; no DST; SRC untouched", () => {
  const rows = cases.map((c): [string, BadInput, Command] => [c.title, c.input, c.command]);
  it.for(rows)("%s", { timeout: 15_000 }, ([, input, command]) => checkRefusal(input, command));
});

interface FlagCase {
  readonly title: string;
  readonly args: readonly string[];
  readonly src: string;
  /** DST for this case, given SRC (by default a fresh path in the output folder). */
  readonly dst?: (src: string) => string;
  /** The one stderr line after `omni-ckpt: error: `, as a regex source. */
  readonly error: (dst: string) => string;
}

/** A flag case on `src` whose title is its command line. */
const flag = (args: string[], error: string, src = base): FlagCase => ({ title: args.join(" "), args, src, error: () => error });

const flagCases: readonly FlagCase[] = [
  flag(["--to", "native", "--ep-rank", "3", "--ep-size", "3"], "--ep-rank must be in \\[0, 3\\), got 3"),
  flag(["--to", "native", "--ep-rank", "0", "--ep-size", "0"], "--ep-size must be a positive integer, got 0"),
  flag(["--to", "native", "--num-layers", "-1"], "--num-layers must be a positive integer, got -1"),
  flag(["--to", "native", "--dtype", "int4"], 'unsupported expert dtype "int4": use bf16, f16 or f32'),
  flag(["--to", "hf", "--exclude", "("], 'invalid regex "\\(": .+', native),
  {
    title: "DST equal to SRC",
    args: ["--to", "native"],
    src: flagSrc,
    dst: (src) => src,
    error: (dst) => `destination ${esc(dst)} is the source itself; choose another`,
  },
  {
    title: "DST inside SRC",
    args: ["--to", "native"],
    src: flagSrc,
    dst: (src) => path.join(src, "converted"),
    error: (dst) => `destination ${esc(dst)} is inside the source folder; choose another`,
  },
];

describe.concurrent("bad flags: convert exits 2 with one line naming the flag, writes nothing", () => {
  it.for(flagCases.map((c): [string, FlagCase] => [c.title, c]))("convert %s", async ([, c]) => {
    const dst = c.dst?.(c.src) ?? path.join(outDir, `flag-${slug(c.title)}`);
    const r = await runCliAsync(["convert", ...c.args, c.src, dst]);
    expectRefusal(r, c.error(dst));
    if (dst !== c.src) expect(fs.existsSync(dst)).toBe(false);
    expect(leftovers(dst)).toEqual([]);
    expect(snapshot(c.src)).toEqual(before.get(c.src));
  });
});

describe.concurrent("odd but valid files: convert both ways, diff identical, verify exact", () => {
  it.for(oddInputs.map((o): [string, OddInput] => [o.name, o]))("%s", async ([, odd]) => {
    const dir = oddDir(odd);
    const nat = path.join(outDir, `${path.basename(dir)}-native`);
    const back = path.join(outDir, `${path.basename(dir)}-back`);
    const [toNative, verify, inspect] = await Promise.all([
      runCliAsync(["convert", "--to", "native", dir, nat]),
      runCliAsync(["verify", dir]),
      runCliAsync(["inspect", dir]),
    ]);
    expect({ code: toNative.code, stderr: toNative.stderr }).toEqual({ code: 0, stderr: odd.warnings ? expect.stringMatching(odd.warnings) : "" });
    expect({ code: verify.code, stderr: verify.stderr }).toEqual({ code: 0, stderr: "" });
    // Counted from the index with JSON.parse, not by the tool: a tensor that every reader dropped alike (say
    // `__proto__` kept in a plain object) would otherwise leave diff "identical".
    const count = Object.keys((JSON.parse(fs.readFileSync(path.join(dir, INDEX), "utf8")) as { weight_map: object }).weight_map).length;
    expect(verify.stdout).toMatch(new RegExp(`round trip HF → native → HF, ${count} tensors,`));
    expect(verify.stdout).toMatch(/^bit-exact round trip/m);
    expect({ code: inspect.code, stderr: inspect.stderr }).toEqual({ code: 0, stderr: "" });
    const toHf = await runCliAsync(["convert", "--to", "hf", nat, back]);
    expect({ code: toHf.code, stderr: toHf.stderr }).toEqual({ code: 0, stderr: "" });
    const [diff, diffBack] = await Promise.all([runCliAsync(["diff", dir, back]), runCliAsync(["diff", back, dir])]);
    expect({ code: diff.code, stderr: diff.stderr }).toEqual({ code: 0, stderr: "" });
    expect(diff.stdout).toMatch(new RegExp(`^identical: ${count} tensors`, "m"));
    expect(diffBack.code).toBe(0);
    expect(snapshot(dir)).toEqual(before.get(dir));
  });
});
