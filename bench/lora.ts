import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { encodeHeader } from "../src/safetensors/encode.js";
import { FileSource } from "../src/node/file-source.js";
import { SafetensorsFile } from "../src/safetensors/file.js";
import { type Sample, RSS_HOOK, cacheRoot, checkpoint, clear, cli, convert, fmt, mb, median, rounds, settle, table, warm, work } from "./lib.js";

/**
 * `lora merge` against `convert --to native` of the same bench checkpoint, alternating in one run: a
 * rank-16 Automodel-style adapter on every linear layer and every routed expert (grouped, as Automodel
 * saves them). Target: merge ≤ 2.5× the conversion's time, peak RSS ≤ 300 MB.
 */

const RANK = 16;
const ALPHA = 32;

/** Native (Automodel) name of an HF module, by SPEC §1–§2, written out here so the bench needs no library rule. */
function nativeModule(hf: string): string {
  if (hf === "mlp1.1") return "vision_projector.linear1";
  if (hf === "mlp1.3") return "vision_projector.linear2";
  if (hf.startsWith("sound_encoder.encoder.")) return `sound_encoder.${hf.slice("sound_encoder.encoder.".length)}`;
  if (hf.startsWith("language_model.backbone.")) return `language_model.model.${hf.slice("language_model.backbone.".length)}`;
  return hf;
}

interface Planned {
  readonly name: string;
  readonly shape: number[];
}

/** Small random bfloat16 values (magnitudes 2^-9 .. 2^-2), fast: a xorshift over 16-bit words. */
function fill(bytes: Uint8Array, seed: number): void {
  const u = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
  let x = seed | 1;
  for (let i = 0; i < u.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    u[i] = (x & 0x807f) | ((118 + ((x >>> 8) & 7)) << 7);
  }
}

/** Write the bench adapter for the checkpoint in `base` (once; cached beside it). */
export function benchAdapter(base: string): string {
  // Keyed by the checkpoint it is for (its name carries the synth version).
  const dir = path.join(cacheRoot, `${path.basename(base)}-lora-r${RANK}`);
  if (fs.existsSync(path.join(dir, "adapter_config.json"))) return dir;
  process.stderr.write(`making the rank-${RANK} bench adapter in ${dir} (once; cached)…\n`);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const weights: { name: string; shape: readonly number[] }[] = [];
  for (const f of fs.readdirSync(base).filter((n) => n.endsWith(".safetensors"))) {
    const file = SafetensorsFile.openSync(new FileSource(path.join(base, f)));
    for (const [name, e] of file.tensors) weights.push({ name, shape: e.shape });
    file.close();
  }
  const tensors: Planned[] = [];
  const modules = new Set<string>();
  const experts = new Map<string, { E: number; H: number; I: number }>();
  for (const w of weights) {
    const m = /^(.*)\.mixer\.experts\.(\d+)\.(up_proj|down_proj)\.weight$/.exec(w.name);
    if (m) {
      const g = experts.get(m[1]!) ?? { E: 0, H: 0, I: 0 };
      g.E = Math.max(g.E, Number(m[2]) + 1);
      if (m[3] === "up_proj") [g.I, g.H] = w.shape as [number, number];
      experts.set(m[1]!, g);
      continue;
    }
    // Every other linear layer: 2-d weights but embeddings and the MoE routers.
    if (w.shape.length !== 2 || !w.name.endsWith(".weight") || /embeddings\.weight$|\.mixer\.gate\.weight$|embedder\.weight$/.test(w.name)) continue;
    const native = nativeModule(w.name.slice(0, -".weight".length));
    const [out, inn] = w.shape as [number, number];
    tensors.push({ name: `base_model.model.${native}.lora_A.weight`, shape: [RANK, inn] });
    tensors.push({ name: `base_model.model.${native}.lora_B.weight`, shape: [out, RANK] });
    modules.add(native);
  }
  for (const [layer, g] of experts) {
    const p = `base_model.model.${nativeModule(layer)}.mixer.experts`;
    tensors.push({ name: `${p}.lora_gate_and_up_A`, shape: [g.E, g.H, RANK] });
    tensors.push({ name: `${p}.lora_gate_and_up_B`, shape: [g.E, RANK, g.I] });
    tensors.push({ name: `${p}.lora_down_A`, shape: [g.E, g.I, RANK] });
    tensors.push({ name: `${p}.lora_down_B`, shape: [g.E, RANK, g.H] });
    modules.add(`${nativeModule(layer)}.mixer.experts`);
  }
  tensors.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const declared = tensors.map((t) => ({ name: t.name, dtype: "BF16" as const, shape: t.shape }));
  const header = encodeHeader(declared);
  const fd = fs.openSync(path.join(dir, "adapter_model.safetensors"), "w");
  fs.writeSync(fd, header.bytes);
  declared.forEach((t, i) => {
    const bytes = new Uint8Array(t.shape.reduce((a, b) => a * b, 1) * 2);
    fill(bytes, i * 2654435761);
    fs.writeSync(fd, bytes);
  });
  fs.closeSync(fd);
  const config = {
    base_model_name_or_path: "omni-ckpt bench",
    bias: "none",
    lora_alpha: ALPHA,
    peft_type: "LORA",
    r: RANK,
    target_modules: [...modules].sort(),
    task_type: "CAUSAL_LM",
    use_dora: false,
  };
  fs.writeFileSync(path.join(dir, "adapter_config.json"), JSON.stringify(config, null, 2));
  fs.writeFileSync(path.join(dir, "automodel_peft_config.json"), JSON.stringify({ target_modules: ["*_proj", "*.experts", "*.linear*", "*.fc*", "*.qkv", "*.proj"], moe_rank_scaling: false }, null, 2));
  return dir;
}

/** `lora merge` timed from the same state as the conversions: base settled and warm, adapter warm. */
function merge(base: string, adapter: string, dst: string): Sample {
  settle(base);
  warm(adapter);
  const t0 = performance.now();
  const r = spawnSync(process.execPath, ["--import", RSS_HOOK, cli, "lora", "merge", "--quiet", base, adapter, dst], { encoding: "utf8", stdio: ["ignore", "ignore", "pipe"] });
  const seconds = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`lora merge failed (${r.status}): ${r.stderr}`);
  const m = /maxrss_kb=(\d+)/.exec(r.stderr ?? "");
  return m ? { seconds, maxRssBytes: Number(m[1]) * 1024 } : { seconds };
}

export async function loraSection(): Promise<string> {
  const base = await checkpoint(1);
  const adapter = benchAdapter(base);
  const dir = path.join(work, "lora");
  const merged = path.join(dir, "merged");
  const native = path.join(dir, "native");
  fs.mkdirSync(dir, { recursive: true });
  const round = (): { convert: Sample; merge: Sample } => {
    clear(native);
    clear(merged);
    const c = convert("native", base, native);
    clear(native);
    const m = merge(base, adapter, merged);
    clear(merged);
    return { convert: c, merge: m };
  };
  round(); // warm-up, not counted
  const samples = Array.from({ length: rounds }, round);
  clear(dir);
  const conv = median(samples.map((s) => s.convert.seconds));
  const rows = (["convert", "merge"] as const).map((k) => {
    const xs = samples.map((s) => s[k].seconds);
    const t = median(xs);
    const rss = Math.max(...samples.map((s) => s[k].maxRssBytes ?? 0));
    return [
      k === "convert" ? "convert --to native" : `lora merge (rank ${RANK}, every linear and expert)`,
      fmt(t),
      `${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)} s`,
      `${(t / conv).toFixed(2)}×`,
      rss ? mb(rss) : "-",
    ];
  });
  const adapterBytes = fs.statSync(path.join(adapter, "adapter_model.safetensors")).size;
  return (
    `LoRA merge: bench checkpoint with a rank-${RANK} adapter of ${mb(adapterBytes)} (grouped expert LoRA, as Automodel saves it), median of ${rounds} alternating runs\n\n` +
    `${table(["", "median", "range", "vs convert --to native", "peak RSS"], rows)}\n`
  );
}
