import { UsageError, throwIfAborted } from "../errors.js";
import type { OutputStore } from "../io/output.js";
import { referenceOrder } from "../safetensors/encode.js";
import { CONFIG_FILE } from "../safetensors/shard-plan.js";
import { DEFAULT_MAX_SHARD_SIZE } from "../safetensors/shard-size.js";
import { ShardedWriter } from "../safetensors/sharded-writer.js";
import type { DType } from "../tensor/dtype.js";
import { byteLength } from "../tensor/tensor.js";
import { PRESETS, type SynthPreset } from "./presets.js";

export interface SynthOptions {
  readonly preset?: string;
  readonly signal?: AbortSignal;
  readonly seed?: number;
  /** dtype of the weights; Mamba A_log/D/dt_bias, norms' running stats and the routing bias stay float32. */
  readonly dtype?: "BF16" | "F32";
  /** Repeat the layer pattern this many times: same tensor sizes, N× the checkpoint. */
  readonly scale?: number;
  readonly maxShardSize?: number;
  readonly force?: boolean;
  /**
   * Write the headers but leave the data as holes (zeros): a checkpoint of the full size and shape that
   * takes no disk space and is written instantly. For planning, `inspect` and pipeline tests at real scale.
   */
  readonly sparse?: boolean;
}

type Kind = "weight" | "fp32" | "count" | "ones" | "zeros";

export interface SynthTensor {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly kind: Kind;
}

/** The tensors and config.json of a synthetic HF-layout Omni checkpoint. */
export function synthLayout(preset: SynthPreset, options: { dtype?: "BF16" | "F32"; scale?: number } = {}): {
  tensors: SynthTensor[];
  config: Record<string, unknown>;
} {
  const wt = options.dtype ?? "BF16";
  const scale = options.scale ?? 1;
  const out: SynthTensor[] = [];
  const add = (name: string, shape: number[], kind: Kind = "weight", dtype?: DType): void => {
    out.push({ name, shape, kind, dtype: dtype ?? (kind === "count" ? "I64" : kind === "fp32" ? "F32" : wt) });
  };

  const v = preset.vision;
  const vm = "vision_model.radio_model.";
  add(`${vm}input_conditioner.norm_mean`, [3, 1, 1], "fp32");
  add(`${vm}input_conditioner.norm_std`, [3, 1, 1], "fp32");
  add(`${vm}model.patch_generator.cls_token.token`, [2, v.hidden]);
  add(`${vm}model.patch_generator.embedder.weight`, [v.hidden, 3 * v.patch * v.patch]);
  add(`${vm}model.patch_generator.pos_embed`, [1, v.tokens, v.hidden]);
  for (let b = 0; b < v.blocks; b++) {
    const p = `${vm}model.blocks.${b}.`;
    add(`${p}attn.qkv.weight`, [3 * v.hidden, v.hidden]);
    add(`${p}attn.qkv.bias`, [3 * v.hidden]);
    add(`${p}attn.proj.weight`, [v.hidden, v.hidden]);
    add(`${p}attn.proj.bias`, [v.hidden]);
    add(`${p}mlp.fc1.weight`, [4 * v.hidden, v.hidden]);
    add(`${p}mlp.fc2.weight`, [v.hidden, 4 * v.hidden]);
    for (const n of ["norm1", "norm2"]) {
      add(`${p}${n}.weight`, [v.hidden], "ones");
      add(`${p}${n}.bias`, [v.hidden], "zeros");
    }
  }
  const l = preset.llm;
  // Pixel shuffle with downsample ratio 0.5 concatenates 4 patches.
  add("mlp1.0.weight", [4 * v.hidden], "ones");
  add("mlp1.1.weight", [preset.projector, 4 * v.hidden]);
  add("mlp1.3.weight", [l.hidden, preset.projector]);

  const s = preset.sound;
  const se = "sound_encoder.encoder.";
  add(`${se}subsampling.layers.0.weight`, [s.hidden / 2, 1, 3, 3]);
  add(`${se}subsampling.layers.0.bias`, [s.hidden / 2]);
  add(`${se}subsampling.linear.weight`, [s.hidden, s.hidden]);
  add(`${se}subsampling.linear.bias`, [s.hidden]);
  for (let i = 0; i < s.layers; i++) {
    const p = `${se}layers.${i}.`;
    add(`${p}conv.depthwise_conv.weight`, [s.hidden, 1, 9]);
    add(`${p}conv.norm.weight`, [s.hidden], "ones");
    add(`${p}conv.norm.running_mean`, [s.hidden], "fp32");
    add(`${p}conv.norm.running_var`, [s.hidden], "fp32");
    add(`${p}conv.norm.num_batches_tracked`, [], "count");
    add(`${p}conv.pointwise_conv1.weight`, [2 * s.hidden, s.hidden, 1]);
    add(`${p}feed_forward1.linear1.weight`, [4 * s.hidden, s.hidden]);
    add(`${p}feed_forward1.linear2.weight`, [s.hidden, 4 * s.hidden]);
    for (const proj of ["q_proj", "k_proj", "v_proj", "o_proj", "relative_k_proj"]) add(`${p}self_attn.${proj}.weight`, [s.hidden, s.hidden]);
    add(`${p}self_attn.bias_u`, [s.heads, s.hidden / s.heads]);
    add(`${p}self_attn.bias_v`, [s.heads, s.hidden / s.heads]);
  }
  add("sound_projection.norm.weight", [s.hidden], "ones");
  add("sound_projection.linear1.weight", [s.projection, s.hidden]);
  add("sound_projection.linear2.weight", [l.hidden, s.projection]);

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
        add(`${p}mixer.conv1d.weight`, [convDim, 1, l.convKernel]);
        add(`${p}mixer.conv1d.bias`, [convDim]);
        add(`${p}mixer.in_proj.weight`, [2 * dInner + 2 * l.mambaGroups * l.ssmState + l.mambaHeads, H]);
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
  l.mtp.forEach((kind, j) => {
    const p = `${lm}mtp.layers.${j}.`;
    add(`${p}norm.weight`, [H], "ones");
    if (j === 0) {
      add(`${p}eh_proj.weight`, [H, 2 * H]);
      add(`${p}enorm.weight`, [H], "ones");
      add(`${p}hnorm.weight`, [H], "ones");
    }
    if (j === l.mtp.length - 1) add(`${p}final_layernorm.weight`, [H], "ones");
    if (kind === "moe") moe(p);
    else attention(p);
  });

  const blockType = (c: string): string => (c === "M" ? "mamba" : c === "E" ? "moe" : c === "*" ? "attention" : "mlp");
  const torchDtype = wt === "F32" ? "float32" : "bfloat16";
  const config = {
    architectures: ["NemotronH_Nano_Omni_Reasoning_V3"],
    model_type: "NemotronH_Nano_Omni_Reasoning_V3",
    llm_config: {
      model_type: "nemotron_h",
      architectures: ["NemotronHForCausalLM"],
      hidden_size: H,
      num_hidden_layers: pattern.length,
      hybrid_override_pattern: pattern,
      layers_block_type: [...pattern].map(blockType),
      vocab_size: l.vocab,
      intermediate_size: l.mlpInter,
      mamba_num_heads: l.mambaHeads,
      mamba_head_dim: l.mambaHeadDim,
      n_groups: l.mambaGroups,
      ssm_state_size: l.ssmState,
      conv_kernel: l.convKernel,
      num_attention_heads: l.attnHeads,
      num_key_value_heads: l.kvHeads,
      head_dim: l.headDim,
      mlp_bias: false,
      mlp_hidden_act: "relu2",
      norm_topk_prob: true,
      n_group: 1,
      topk_group: 1,
      routed_scaling_factor: 2.5,
      torch_dtype: torchDtype,
      tie_word_embeddings: false,
      n_routed_experts: l.experts,
      num_experts_per_tok: l.topK,
      moe_intermediate_size: l.moeInter,
      moe_shared_expert_intermediate_size: l.sharedInter,
      n_shared_experts: 1,
      num_nextn_predict_layers: l.mtp.length > 0 ? 1 : 0,
      mtp_layers_block_type: [...l.mtp],
    },
    vision_config: { model_type: "radio" },
    vit_hidden_size: v.hidden,
    projector_hidden_size: preset.projector,
    downsample_ratio: 0.5,
    force_image_size: 512,
    patch_size: v.patch,
    torch_dtype: torchDtype,
    sound_config: { model_type: "parakeet", hidden_size: s.hidden, projection_hidden_size: s.projection },
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

/** A synthetic checkpoint's plan: its preset, tensors in the order they are stored, and config. */
export interface SynthPlan {
  readonly preset: SynthPreset;
  readonly tensors: readonly SynthTensor[];
  readonly config: Record<string, unknown>;
  readonly seed: number;
  readonly maxShardSize: number;
}

/** Validate synth's options and lay the checkpoint out. */
export function planSynth(options: SynthOptions): SynthPlan {
  const preset = PRESETS[options.preset ?? "tiny"];
  if (!preset) throw new UsageError(`unknown preset ${JSON.stringify(options.preset)}: use ${Object.keys(PRESETS).join(", ")}`);
  const scale = options.scale ?? 1;
  if (!Number.isSafeInteger(scale) || scale < 1) throw new UsageError(`--scale must be a positive integer, got ${scale}`);
  const seed = options.seed ?? 0;
  if (!Number.isSafeInteger(seed)) throw new UsageError(`--seed must be an integer, got ${seed}`);
  const dtype = options.dtype ?? "BF16";
  if (dtype !== "BF16" && dtype !== "F32") throw new UsageError(`dtype must be BF16 or F32, got ${JSON.stringify(dtype)}`);
  const { tensors, config } = synthLayout(preset, { dtype, scale });
  return { preset, tensors: referenceOrder(tensors), config, seed, maxShardSize: options.maxShardSize ?? DEFAULT_MAX_SHARD_SIZE };
}

const encoder = new TextEncoder();

/** The small files a synthetic checkpoint carries besides its weights: config.json and stand-ins for the rest. */
export function synthOtherFiles(plan: SynthPlan): [string, Uint8Array][] {
  const json = (v: unknown): Uint8Array => encoder.encode(`${JSON.stringify(v, null, 2)}\n`);
  return [
    [CONFIG_FILE, json(plan.config)],
    ["tokenizer_config.json", json({ tokenizer_class: "PreTrainedTokenizerFast", model_max_length: 131072, note: "synthetic checkpoint made by omni-ckpt synth" })],
    ["generation_config.json", json({ do_sample: false, max_new_tokens: 16 })],
  ];
}

/** Write a synthetic HF-layout checkpoint's files into an output, tensor by tensor. Returns the files written. */
export async function writeSynth(plan: SynthPlan, out: OutputStore, signal?: AbortSignal): Promise<string[]> {
  const writer = await ShardedWriter.create(out, plan.tensors, plan.maxShardSize);
  let files: string[];
  try {
    for (const t of plan.tensors) {
      throwIfAborted(signal);
      await writer.write(t.name, 0, synthBytes(t, plan.seed));
    }
    files = await writer.finish();
  } catch (e) {
    writer.abandon();
    throw e;
  }
  for (const [rel, bytes] of synthOtherFiles(plan)) await out.writeFile(rel, bytes);
  return [...files, ...synthOtherFiles(plan).map(([rel]) => rel)];
}

/** The summary of a synthetic checkpoint written to `dir`. */
export function synthSummary(plan: SynthPlan, dir: string, files: readonly string[]): SynthSummary {
  return { dir, preset: plan.preset.name, tensors: plan.tensors.length, bytes: plan.tensors.reduce((n, t) => n + byteLength(t), 0), files };
}
