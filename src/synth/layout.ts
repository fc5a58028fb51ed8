import { UsageError, throwIfAborted } from "../errors.js";
import type { OutputStore } from "../io/output.js";
import { referenceOrder } from "../safetensors/encode.js";
import { CONFIG_FILE, type ShardPlan, planShards } from "../safetensors/shard-plan.js";
import { DEFAULT_MAX_SHARD_SIZE } from "../safetensors/shard-size.js";
import { ShardedWriter } from "../safetensors/sharded-writer.js";
import type { DType } from "../tensor/dtype.js";
import { byteLength } from "../tensor/tensor.js";
import { MTP_LAYERS, PRESETS, type SynthPreset } from "./presets.js";

export interface SynthOptions {
  readonly preset?: string;
  readonly signal?: AbortSignal;
  readonly seed?: number;
  /**
   * dtype of the weights; what the release keeps in float32 (the input conditioner, the featurizer's
   * buffers, Mamba A_log/D/dt_bias, the routing bias) stays float32.
   */
  readonly dtype?: "BF16" | "F32";
  /** Repeat the layer pattern this many times: same tensor sizes, N× the checkpoint. */
  readonly scale?: number;
  /** Largest shard; by default the preset's own (the release's 4 GB cut) or 5 GB. */
  readonly maxShardSize?: number;
  /** Add multi-token-prediction layers, which other NemotronH checkpoints have (the release has none). */
  readonly mtp?: boolean;
}

type Kind = "weight" | "fp32" | "count" | "ones" | "zeros";

export interface SynthTensor {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly kind: Kind;
}

/** A float as Python's `json` writes it (`0.0`, `1e-05`, `Infinity`), for configs that read like the release's. */
export class PyFloat {
  constructor(readonly text: string) {}
}

/**
 * JSON text as transformers' `save_pretrained` writes a config: `json.dumps(indent=2, sort_keys=True)`
 * plus a newline, floats spelled as Python spells them, non-ASCII escaped.
 */
export function pythonJson(value: unknown, indent = ""): string {
  const inner = `${indent}  `;
  if (value instanceof PyFloat) return value.text;
  if (Array.isArray(value)) {
    if (value.length === 0) return "[]";
    return `[\n${value.map((v) => inner + pythonJson(v, inner)).join(",\n")}\n${indent}]`;
  }
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value).sort();
    if (keys.length === 0) return "{}";
    return `{\n${keys.map((k) => `${inner}${pythonJson(k)}: ${pythonJson((value as Record<string, unknown>)[k], inner)}`).join(",\n")}\n${indent}}`;
  }
  if (typeof value === "string") return JSON.stringify(value).replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  return JSON.stringify(value);
}

const py = (text: string): PyFloat => new PyFloat(text);

export interface LayoutOptions {
  readonly dtype?: "BF16" | "F32";
  /** Repeat the layer pattern this many times. */
  readonly scale?: number;
  /** Add multi-token-prediction layers (other NemotronH checkpoints have them; the release does not). */
  readonly mtp?: boolean;
}

/**
 * The tensors and config.json of a synthetic HF-layout Omni checkpoint, tensors in the model's state-dict
 * order (vision encoder, vision projector, sound encoder, sound projection, language model), which is
 * the order `save_pretrained` cuts shards in.
 */
export function synthLayout(preset: SynthPreset, options: LayoutOptions = {}): {
  tensors: SynthTensor[];
  config: Record<string, unknown>;
} {
  const wt = options.dtype ?? "BF16";
  const scale = options.scale ?? 1;
  const out: SynthTensor[] = [];
  const add = (name: string, shape: number[], kind: Kind = "weight", dtype?: DType): void => {
    out.push({ name, shape, kind, dtype: dtype ?? (kind === "count" ? "I64" : kind === "fp32" ? "F32" : wt) });
  };
  const linear = (p: string, rows: number, cols: number, bias = false): void => {
    add(`${p}.weight`, [rows, cols]);
    if (bias) add(`${p}.bias`, [rows]);
  };
  const norm = (p: string, width: number, bias = true): void => {
    add(`${p}.weight`, [width], "ones");
    if (bias) add(`${p}.bias`, [width], "zeros");
  };

  // RADIO (c-radio_v4-h): the input conditioner's float32 buffers, patch generator, biased ViT blocks.
  const v = preset.vision;
  const vm = "vision_model.radio_model.";
  add(`${vm}input_conditioner.norm_mean`, [3, 1, 1], "fp32");
  add(`${vm}input_conditioner.norm_std`, [3, 1, 1], "fp32");
  const pg = `${vm}model.patch_generator.`;
  add(`${pg}cls_token.token`, [v.clsTokens, v.hidden]);
  add(`${pg}embedder.weight`, [v.hidden, 3 * v.patch * v.patch]);
  // Video frames are embedded two at a time.
  add(`${pg}video_embedder.weight`, [v.hidden, 2 * 3 * v.patch * v.patch]);
  add(`${pg}pos_embed`, [1, v.tokens, v.hidden]);
  for (let b = 0; b < v.blocks; b++) {
    const p = `${vm}model.blocks.${b}.`;
    norm(`${p}norm1`, v.hidden);
    linear(`${p}attn.qkv`, 3 * v.hidden, v.hidden, true);
    linear(`${p}attn.proj`, v.hidden, v.hidden, true);
    norm(`${p}norm2`, v.hidden);
    linear(`${p}mlp.fc1`, 4 * v.hidden, v.hidden, true);
    linear(`${p}mlp.fc2`, v.hidden, 4 * v.hidden, true);
  }
  const l = preset.llm;
  // Pixel shuffle with downsample ratio 0.5 concatenates 4 patches.
  add("mlp1.0.weight", [4 * v.hidden], "ones");
  add("mlp1.1.weight", [preset.projector, 4 * v.hidden]);
  add("mlp1.3.weight", [l.hidden, preset.projector]);

  // Parakeet: float32 featurizer buffers, an 8× convolutional subsampling, conformer layers of 29 tensors
  // (no biases on their linear and conv layers), BatchNorm with its int64 0-d counter.
  const s = preset.sound;
  const se = "sound_encoder.encoder.";
  add(`${se}feature_extractor.featurizer.fb`, [1, s.mels, s.nFft / 2 + 1], "fp32");
  add(`${se}feature_extractor.featurizer.window`, [s.window], "fp32");
  const C = s.subsamplingChannels;
  const conv = (i: number, shape: number[]): void => {
    add(`${se}subsampling.layers.${i}.weight`, shape);
    add(`${se}subsampling.layers.${i}.bias`, [shape[0]!]);
  };
  conv(0, [C, 1, 3, 3]);
  conv(2, [C, 1, 3, 3]);
  conv(3, [C, C, 1, 1]);
  conv(5, [C, 1, 3, 3]);
  conv(6, [C, C, 1, 1]);
  linear(`${se}subsampling.linear`, s.hidden, C * (s.mels / 8), true);
  for (let i = 0; i < s.layers; i++) {
    const p = `${se}layers.${i}.`;
    norm(`${p}norm_feed_forward1`, s.hidden);
    linear(`${p}feed_forward1.linear1`, 4 * s.hidden, s.hidden);
    linear(`${p}feed_forward1.linear2`, s.hidden, 4 * s.hidden);
    norm(`${p}norm_self_att`, s.hidden);
    for (const proj of ["q_proj", "k_proj", "v_proj", "o_proj", "relative_k_proj"]) linear(`${p}self_attn.${proj}`, s.hidden, s.hidden);
    add(`${p}self_attn.bias_u`, [s.heads, s.hidden / s.heads]);
    add(`${p}self_attn.bias_v`, [s.heads, s.hidden / s.heads]);
    norm(`${p}norm_conv`, s.hidden);
    add(`${p}conv.pointwise_conv1.weight`, [2 * s.hidden, s.hidden, 1]);
    add(`${p}conv.depthwise_conv.weight`, [s.hidden, 1, s.convKernel]);
    norm(`${p}conv.norm`, s.hidden);
    add(`${p}conv.norm.running_mean`, [s.hidden]);
    add(`${p}conv.norm.running_var`, [s.hidden]);
    add(`${p}conv.norm.num_batches_tracked`, [], "count");
    add(`${p}conv.pointwise_conv2.weight`, [s.hidden, s.hidden, 1]);
    norm(`${p}norm_feed_forward2`, s.hidden);
    linear(`${p}feed_forward2.linear1`, 4 * s.hidden, s.hidden);
    linear(`${p}feed_forward2.linear2`, s.hidden, 4 * s.hidden);
    norm(`${p}norm_out`, s.hidden);
  }
  add("sound_projection.norm.weight", [s.hidden], "ones");
  add("sound_projection.linear1.weight", [s.projection, s.hidden]);
  add("sound_projection.linear2.weight", [l.hidden, s.projection]);

  // NemotronH: Mamba with float32 A_log/D/dt_bias, MoE with a float32 routing bias, per-expert up/down
  // (ReLU², no gate) and a shared expert, attention without biases.
  const H = l.hidden;
  const dInner = l.mambaHeads * l.mambaHeadDim;
  const convDim = dInner + 2 * l.mambaGroups * l.ssmState;
  const moe = (p: string): void => {
    add(`${p}mixer.gate.weight`, [l.experts, H]);
    add(`${p}mixer.gate.e_score_correction_bias`, [l.experts], "fp32");
    for (let e = 0; e < l.experts; e++) {
      add(`${p}mixer.experts.${e}.up_proj.weight`, [l.moeInter, H]);
      add(`${p}mixer.experts.${e}.down_proj.weight`, [H, l.moeInter]);
    }
    add(`${p}mixer.shared_experts.up_proj.weight`, [l.sharedInter, H]);
    add(`${p}mixer.shared_experts.down_proj.weight`, [H, l.sharedInter]);
  };
  const attention = (p: string): void => {
    add(`${p}mixer.q_proj.weight`, [l.attnHeads * l.headDim, H]);
    add(`${p}mixer.k_proj.weight`, [l.kvHeads * l.headDim, H]);
    add(`${p}mixer.v_proj.weight`, [l.kvHeads * l.headDim, H]);
    add(`${p}mixer.o_proj.weight`, [H, l.attnHeads * l.headDim]);
  };
  const pattern = l.pattern.repeat(scale);
  const lm = "language_model.";
  add(`${lm}backbone.embeddings.weight`, [l.vocab, H]);
  for (let i = 0; i < pattern.length; i++) {
    const p = `${lm}backbone.layers.${i}.`;
    add(`${p}norm.weight`, [H], "ones");
    switch (pattern[i]) {
      case "M":
        add(`${p}mixer.A_log`, [l.mambaHeads], "fp32");
        add(`${p}mixer.D`, [l.mambaHeads], "fp32");
        add(`${p}mixer.dt_bias`, [l.mambaHeads], "fp32");
        add(`${p}mixer.in_proj.weight`, [2 * dInner + 2 * l.mambaGroups * l.ssmState + l.mambaHeads, H]);
        add(`${p}mixer.conv1d.weight`, [convDim, 1, l.convKernel]);
        add(`${p}mixer.conv1d.bias`, [convDim]);
        add(`${p}mixer.norm.weight`, [dInner], "ones");
        add(`${p}mixer.out_proj.weight`, [H, dInner]);
        break;
      case "E":
        moe(p);
        break;
      case "*":
        attention(p);
        break;
      default:
        add(`${p}mixer.up_proj.weight`, [l.mlpInter, H]);
        add(`${p}mixer.down_proj.weight`, [H, l.mlpInter]);
    }
  }
  add(`${lm}backbone.norm_f.weight`, [H], "ones");
  add(`${lm}lm_head.weight`, [l.vocab, H]);
  const mtp = options.mtp ? MTP_LAYERS : [];
  mtp.forEach((kind, j) => {
    const p = `${lm}mtp.layers.${j}.`;
    add(`${p}norm.weight`, [H], "ones");
    if (j === 0) {
      add(`${p}eh_proj.weight`, [H, 2 * H]);
      add(`${p}enorm.weight`, [H], "ones");
      add(`${p}hnorm.weight`, [H], "ones");
    }
    if (j === mtp.length - 1) add(`${p}final_layernorm.weight`, [H], "ones");
    if (kind === "moe") moe(p);
    else attention(p);
  });

  const blockType = (c: string): string => (c === "M" ? "mamba" : c === "E" ? "moe" : c === "*" ? "attention" : "mlp");
  const torchDtype = wt === "F32" ? "float32" : "bfloat16";
  const llmConfig: Record<string, unknown> = {
    architectures: ["NemotronHForCausalLM"],
    attention_bias: false,
    chunk_size: 128,
    conv_kernel: l.convKernel,
    head_dim: l.headDim,
    hidden_size: H,
    hybrid_override_pattern: pattern,
    initializer_range: py("0.02"),
    intermediate_size: l.mlpInter,
    layer_norm_epsilon: py("1e-05"),
    mamba_head_dim: l.mambaHeadDim,
    mamba_hidden_act: "silu",
    mamba_num_heads: l.mambaHeads,
    mlp_bias: false,
    mlp_hidden_act: "relu2",
    model_type: "nemotron_h",
    moe_intermediate_size: l.moeInter,
    moe_shared_expert_intermediate_size: l.sharedInter,
    n_group: 1,
    n_groups: l.mambaGroups,
    n_routed_experts: l.experts,
    n_shared_experts: 1,
    norm_topk_prob: true,
    num_attention_heads: l.attnHeads,
    num_experts_per_tok: l.topK,
    num_hidden_layers: pattern.length,
    num_key_value_heads: l.kvHeads,
    rms_norm_eps: py("1e-05"),
    routed_scaling_factor: py("2.5"),
    ssm_state_size: l.ssmState,
    tie_word_embeddings: false,
    // NemotronH's default: no upper limit on the time step, which Python's json writes as Infinity.
    time_step_limit: [py("0.0"), py("Infinity")],
    time_step_max: py("0.1"),
    time_step_min: py("0.001"),
    topk_group: 1,
    torch_dtype: torchDtype,
    use_bias: false,
    use_conv_bias: true,
    vocab_size: l.vocab,
  };
  if (options.mtp) {
    llmConfig["num_nextn_predict_layers"] = 1;
    llmConfig["mtp_layers_block_type"] = [...mtp];
  }
  llmConfig["layers_block_type"] = [...pattern].map(blockType);
  const config = {
    architectures: ["NemotronH_Nano_Omni_Reasoning_V3"],
    auto_map: {
      AutoConfig: "configuration.NemotronH_Nano_Omni_Reasoning_V3_Config",
      AutoModel: "modeling.NemotronH_Nano_Omni_Reasoning_V3",
      AutoModelForCausalLM: "modeling.NemotronH_Nano_Omni_Reasoning_V3",
    },
    downsample_ratio: py("0.5"),
    force_image_size: 512,
    llm_config: llmConfig,
    model_type: "NemotronH_Nano_Omni_Reasoning_V3",
    patch_size: v.patch,
    projector_hidden_size: preset.projector,
    sound_config: {
      conv_kernel_size: s.convKernel,
      hidden_size: s.hidden,
      intermediate_size: 4 * s.hidden,
      model_type: "parakeet_encoder",
      num_attention_heads: s.heads,
      num_hidden_layers: s.layers,
      num_mel_bins: s.mels,
      projection_hidden_size: s.projection,
      subsampling_conv_channels: C,
      subsampling_factor: 8,
    },
    torch_dtype: torchDtype,
    vision_config: {
      hidden_size: v.hidden,
      model_type: "radio",
      num_cls_tokens: v.clsTokens,
      num_hidden_layers: v.blocks,
      patch_size: v.patch,
      version: "c-radio_v4-h",
    },
    vit_hidden_size: v.hidden,
  };
  return { tensors: out, config };
}

/** FNV-1a of the name mixed with the seed: each tensor's content is independent of generation order. */
function tensorSeed(seed: number, name: string): number {
  let h = 0x811c9dc5 ^ seed;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0 || 1;
}

/** Deterministic values: small finite floats of random sign and mantissa, so every bit pattern is used. */
export function synthBytes(t: SynthTensor, seed: number): Uint8Array {
  const n = t.shape.reduce((a, b) => a * b, 1);
  const bytes = new Uint8Array(new ArrayBuffer(byteLength(t)));
  let x = tensorSeed(seed, t.name);
  const next = (): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  if (t.dtype === "I64") {
    const v = new DataView(bytes.buffer);
    for (let i = 0; i < n; i++) v.setBigInt64(i * 8, BigInt(next() % 100000), true);
    return bytes;
  }
  if (t.kind === "ones" || t.kind === "zeros") {
    const one = t.dtype === "F32" ? 0x3f800000 : 0x3f80;
    if (t.kind === "ones") {
      if (t.dtype === "F32") new Uint32Array(bytes.buffer).fill(one);
      else new Uint16Array(bytes.buffer).fill(one);
    }
    return bytes;
  }
  if (t.dtype === "F32") {
    const u = new Uint32Array(bytes.buffer);
    // Exponents 118..126: magnitudes in [2^-9, 1).
    for (let i = 0; i < n; i++) {
      const r = next();
      u[i] = (r & 0x807fffff) | ((118 + (r % 9)) << 23);
    }
    return bytes;
  }
  const u = new Uint16Array(bytes.buffer);
  for (let i = 0; i + 1 < n; i += 2) {
    const r = next();
    u[i] = (r & 0x807f) | ((118 + ((r >>> 8) & 7)) << 7);
    u[i + 1] = ((r >>> 16) & 0x807f) | ((118 + ((r >>> 24) & 7)) << 7);
  }
  if (n % 2 === 1) {
    const r = next();
    u[n - 1] = (r & 0x807f) | (120 << 7);
  }
  return bytes;
}

export interface SynthSummary {
  readonly dir: string;
  readonly preset: string;
  readonly tensors: number;
  readonly bytes: number;
  readonly files: readonly string[];
}

/** A synthetic checkpoint's plan: its preset, tensors, shards and config. */
export interface SynthPlan {
  readonly preset: SynthPreset;
  /** In state-dict order. */
  readonly tensors: readonly SynthTensor[];
  /** Cut as `save_pretrained` cuts them: greedily in state-dict order, each shard in the serializer's order. */
  readonly shards: readonly ShardPlan[];
  readonly config: Record<string, unknown>;
  readonly seed: number;
}

/** Layers synth lays out at most (`--scale` × the preset's): ~200 times the real model's 52. */
const MAX_SYNTH_LAYERS = 10_000;

/** Validate synth's options and lay the checkpoint out. */
export function planSynth(options: SynthOptions): SynthPlan {
  const preset = PRESETS[options.preset ?? "tiny"];
  if (!preset) throw new UsageError(`unknown preset ${JSON.stringify(options.preset)}: use ${Object.keys(PRESETS).join(", ")}`);
  const scale = options.scale ?? 1;
  if (!Number.isSafeInteger(scale) || scale < 1) throw new UsageError(`--scale must be a positive integer, got ${scale}`);
  // Every layer is a dozen or more tensors in the headers and the index, which are held as text.
  const layers = preset.llm.pattern.length * scale;
  if (layers > MAX_SYNTH_LAYERS) {
    throw new UsageError(`--scale ${scale} would give the ${options.preset ?? "tiny"} preset ${layers} language-model layers; at most ${MAX_SYNTH_LAYERS} are synthesized`);
  }
  const seed = options.seed ?? 0;
  if (!Number.isSafeInteger(seed)) throw new UsageError(`--seed must be an integer, got ${seed}`);
  const dtype = options.dtype ?? "BF16";
  if (dtype !== "BF16" && dtype !== "F32") throw new UsageError(`dtype must be BF16 or F32, got ${JSON.stringify(dtype)}`);
  const { tensors, config } = synthLayout(preset, { dtype, scale, ...(options.mtp ? { mtp: true } : {}) });
  const cut = planShards(tensors, options.maxShardSize ?? preset.shardSize ?? DEFAULT_MAX_SHARD_SIZE);
  const shards = cut.map((shard) => ({ ...shard, tensors: referenceOrder(shard.tensors) }));
  return { preset, tensors, shards, config, seed };
}

/** The release's other files (SPEC §6), as small stand-ins: custom code, processor, tokenizer, chat template. */
const CODE_FILES = [
  "configuration.py",
  "configuration_nemotron_h.py",
  "configuration_radio.py",
  "modeling.py",
  "modeling_nemotron_h.py",
  "audio_model.py",
  "processing.py",
  "processing_utils.py",
  "image_processing.py",
  "video_processing.py",
  "video_io.py",
  "evs.py",
];

const encoder = new TextEncoder();

/**
 * The files a synthetic checkpoint carries besides its weights: config.json as Python writes it, and
 * stand-ins for the release's other files.
 */
export function synthOtherFiles(plan: SynthPlan): [string, Uint8Array][] {
  const json = (v: unknown): Uint8Array => encoder.encode(`${pythonJson(v)}\n`);
  const note = "synthetic stand-in written by omni-ckpt synth";
  return [
    [CONFIG_FILE, json(plan.config)],
    ...CODE_FILES.map((f): [string, Uint8Array] => [f, encoder.encode(`# ${f}: ${note}\n`)]),
    ["preprocessor_config.json", json({ image_processor_type: "NemotronNanoImageProcessor", note })],
    ["generation_config.json", json({ _from_model_config: true, do_sample: false, max_new_tokens: 16 })],
    ["chat_template.jinja", encoder.encode(`{# ${note} #}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}`)],
    ["tokenizer.json", json({ version: "1.0", note, model: { type: "BPE", vocab: {}, merges: [] } })],
    ["tokenizer_config.json", json({ tokenizer_class: "PreTrainedTokenizerFast", model_max_length: 131072, note })],
    ["special_tokens_map.json", json({ bos_token: "<s>", eos_token: "</s>" })],
  ];
}

/** Bytes and tensors written so far, of how many in all. */
export type SynthProgress = (bytesDone: number, tensorsDone: number, totalBytes: number, totalTensors: number) => void;

/** Write a synthetic HF-layout checkpoint's files into an output, tensor by tensor. Returns the files written. */
export async function writeSynth(plan: SynthPlan, out: OutputStore, signal?: AbortSignal, onProgress?: SynthProgress): Promise<string[]> {
  return writeSynthWith(plan, (t) => synthBytes(t, plan.seed), synthOtherFiles(plan), out, signal, onProgress);
}

/**
 * Write the tensors of `plan` into its shards, each tensor's bytes made by `bytesOf` only when its turn
 * comes (so no more than one tensor is in memory), then `otherFiles`. Returns the files written.
 */
export async function writeSynthWith(
  plan: SynthPlan,
  bytesOf: (t: SynthTensor) => Uint8Array,
  otherFiles: readonly (readonly [string, Uint8Array])[],
  out: OutputStore,
  signal?: AbortSignal,
  onProgress?: SynthProgress,
): Promise<string[]> {
  const writer = await ShardedWriter.fromPlans(out, plan.shards);
  const totalBytes = plan.tensors.reduce((n, t) => n + byteLength(t), 0);
  let bytesDone = 0;
  let tensorsDone = 0;
  let files: string[];
  try {
    for (const t of plan.tensors) {
      throwIfAborted(signal);
      const bytes = bytesOf(t);
      await writer.write(t.name, 0, bytes);
      bytesDone += bytes.byteLength;
      onProgress?.(bytesDone, ++tensorsDone, totalBytes, plan.tensors.length);
    }
    files = await writer.finish();
  } catch (e) {
    writer.abandon();
    throw e;
  }
  for (const [rel, bytes] of otherFiles) await out.writeFile(rel, bytes);
  return [...files, ...otherFiles.map(([rel]) => rel)];
}

/** The summary of a synthetic checkpoint written to `dir`. */
export function synthSummary(plan: SynthPlan, dir: string, files: readonly string[]): SynthSummary {
  return { dir, preset: plan.preset.name, tensors: plan.tensors.length, bytes: plan.tensors.reduce((n, t) => n + byteLength(t), 0), files };
}
