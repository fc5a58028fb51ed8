import { parseExpertKey } from "../adapters/expert-keys.js";

/**
 * The shapes config.json fixes for a tensor of the HF layout, axis by axis (undefined where the config
 * says nothing). A sharded save stores no tensor's full shape: consolidation takes the box its pieces
 * span, so a lost rank file shows only as tensors that come out short. Wherever the config defines a
 * shape, it is the check that catches that.
 *
 * Covered: the language model (embeddings, lm_head, norms, Mamba, attention, MLP and MoE layers, MTP
 * layers), both projectors, and the encoders as far as their configs give sizes (RADIO's `vision_config`
 * and Parakeet's `sound_config` as the release writes them; the configs Automodel's own fixtures carry
 * give none). Never covered: what no config field sizes (RADIO's input normalisation, its position
 * embedding's length, its MLP width; Parakeet's featurizer buffers).
 */

export type ExpectedShape = readonly (number | undefined)[];

export interface ShapeRule {
  readonly shape: ExpectedShape;
  /** The config fields the shape comes from, for messages: "hidden_size 16, vocab_size 64". */
  readonly from: string;
}

type Raw = Record<string, unknown>;

function obj(v: unknown): Raw | undefined {
  return v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Raw) : undefined;
}

function int(raw: Raw | undefined, key: string): number | undefined {
  const v = raw?.[key];
  return typeof v === "number" && Number.isSafeInteger(v) && v > 0 ? v : undefined;
}

interface Dim {
  readonly n: number | undefined;
  /** How the config gives it. */
  readonly from: string;
}

const dim = (n: number | undefined, from: string): Dim => ({ n, from });

function product(a: Dim, b: Dim): Dim {
  return { n: a.n !== undefined && b.n !== undefined ? a.n * b.n : undefined, from: `${a.from} × ${b.from}` };
}

const VISION = "vision_model.radio_model.model.";
const SOUND = "sound_encoder.encoder.";

interface VisionDims {
  readonly V: Dim;
  readonly qkv: Dim;
  readonly cls: Dim;
}

interface SoundDims {
  readonly Hs: Dim;
  readonly twice: Dim;
  readonly inter: Dim;
  readonly heads: Dim;
  readonly headDim: Dim;
  readonly kernel: Dim;
  readonly channels: Dim;
  readonly flat: Dim;
  readonly mels: Dim;
  readonly one: Dim;
}

/** What the config says about sizes, read once. */
export class ConfigShapes {
  private readonly lm: string;
  private readonly H: Dim;
  private readonly vocab: Dim;
  private readonly experts: Dim;
  private readonly moeInter: Dim;
  private readonly sharedInter: Dim;
  private readonly mlpInter: Dim;
  private readonly mambaHeads: Dim;
  private readonly dInner: Dim;
  private readonly convDim: Dim;
  private readonly inProj: Dim;
  private readonly convKernel: Dim;
  private readonly q: Dim;
  private readonly kv: Dim;
  private readonly visionIn: Dim;
  private readonly projector: Dim;
  private readonly sound: Dim;
  private readonly soundProjection: Dim;
  private readonly vision: VisionDims;
  private readonly parakeet: SoundDims;
  readonly omni: boolean;

  constructor(config: Raw) {
    const llmRaw = obj(config["llm_config"]) ?? obj(config["text_config"]);
    this.omni = llmRaw !== undefined;
    const llm = llmRaw ?? config;
    this.lm = this.omni ? "language_model." : "";
    const field = (key: string): Dim => dim(int(llm, key), key);
    this.H = field("hidden_size");
    this.vocab = field("vocab_size");
    this.experts = field("n_routed_experts");
    this.moeInter = field("moe_intermediate_size");
    const shared = int(llm, "n_shared_experts");
    this.sharedInter = shared === undefined || shared === 1 ? field("moe_shared_expert_intermediate_size") : dim(undefined, "n_shared_experts");
    this.mlpInter = field("intermediate_size");
    this.mambaHeads = field("mamba_num_heads");
    this.dInner = product(this.mambaHeads, field("mamba_head_dim"));
    const g = int(llm, "n_groups");
    const s = int(llm, "ssm_state_size");
    const bc = dim(g !== undefined && s !== undefined ? 2 * g * s : undefined, "2 × n_groups × ssm_state_size");
    this.convDim = { n: this.dInner.n !== undefined && bc.n !== undefined ? this.dInner.n + bc.n : undefined, from: `${this.dInner.from} + ${bc.from}` };
    this.inProj = {
      n: this.dInner.n !== undefined && bc.n !== undefined && this.mambaHeads.n !== undefined ? 2 * this.dInner.n + bc.n + this.mambaHeads.n : undefined,
      from: `2 × ${this.dInner.from} + ${bc.from} + mamba_num_heads`,
    };
    this.convKernel = field("conv_kernel");
    // Without head_dim the modeling code derives it; a check must not guess how.
    const headDim = field("head_dim");
    this.q = product(field("num_attention_heads"), headDim);
    this.kv = product(field("num_key_value_heads"), headDim);

    const vit = int(config, "vit_hidden_size");
    const ratio = config["downsample_ratio"];
    const inv = typeof ratio === "number" && ratio > 0 ? 1 / ratio : undefined;
    const shuffle = inv !== undefined && Number.isInteger(inv) ? inv * inv : undefined;
    this.visionIn = dim(vit !== undefined && shuffle !== undefined ? vit * shuffle : undefined, "vit_hidden_size / downsample_ratio²");
    this.projector = dim(int(config, "projector_hidden_size"), "projector_hidden_size");
    const sound = obj(config["sound_config"]);
    this.sound = dim(int(sound, "hidden_size"), "sound_config.hidden_size");
    this.soundProjection = dim(int(sound, "projection_hidden_size"), "sound_config.projection_hidden_size");

    const vision = obj(config["vision_config"]);
    const V = int(vision, "hidden_size") !== undefined ? dim(int(vision, "hidden_size"), "vision_config.hidden_size") : dim(vit, "vit_hidden_size");
    // The patch embedding's input width is left alone: the Omni config's own `patch_size` is the image
    // processor's, not RADIO's (Automodel's fixtures: 16, with 4-pixel RADIO patches).
    this.vision = {
      V,
      qkv: { n: V.n !== undefined ? 3 * V.n : undefined, from: `3 × ${V.from}` },
      cls: dim(int(vision, "num_cls_tokens"), "vision_config.num_cls_tokens"),
    };
    const Hs = this.sound;
    const heads = int(sound, "num_attention_heads");
    const C = int(sound, "subsampling_conv_channels");
    const mels = int(sound, "num_mel_bins");
    const factor = int(sound, "subsampling_factor");
    this.parakeet = {
      Hs,
      twice: { n: Hs.n !== undefined ? 2 * Hs.n : undefined, from: `2 × ${Hs.from}` },
      inter: dim(int(sound, "intermediate_size"), "sound_config.intermediate_size"),
      heads: dim(heads, "sound_config.num_attention_heads"),
      headDim: dim(Hs.n !== undefined && heads !== undefined && Hs.n % heads === 0 ? Hs.n / heads : undefined, "hidden_size / num_attention_heads"),
      kernel: dim(int(sound, "conv_kernel_size"), "sound_config.conv_kernel_size"),
      channels: dim(C, "sound_config.subsampling_conv_channels"),
      // The subsampling flattens C channels of num_mel_bins / subsampling_factor frequencies.
      flat: dim(C !== undefined && mels !== undefined && factor !== undefined && mels % factor === 0 ? (C * mels) / factor : undefined, "subsampling_conv_channels × num_mel_bins / subsampling_factor"),
      mels: dim(mels, "sound_config.num_mel_bins"),
      one: dim(1, "pointwise kernel"),
    };
  }

  /** Whether config.json fixes the first axis of `name`: where a lost last rank file makes a tensor short. */
  fixesFirstAxis(name: string): boolean {
    return this.shapeOf(name)?.shape[0] !== undefined;
  }

  /** The shape config.json fixes for `name`, or undefined when it fixes none of its axes. */
  shapeOf(name: string): ShapeRule | undefined {
    const dims = this.dims(name);
    if (!dims || dims.every((d) => d.n === undefined)) return undefined;
    const from = [...new Set(dims.filter((d) => d.n !== undefined).map((d) => `${d.from} ${d.n}`))].join(", ");
    return { shape: dims.map((d) => d.n), from };
  }

  private dims(name: string): Dim[] | undefined {
    if (this.omni) {
      const projector = this.projectorDims(name);
      if (projector) return projector;
      if (name.startsWith(VISION)) return this.visionDims(name.slice(VISION.length));
      if (name.startsWith(SOUND)) return this.soundDims(name.slice(SOUND.length));
      if (!name.startsWith(this.lm)) return undefined;
    }
    return this.languageModelDims(name.slice(this.lm.length));
  }

  /** RADIO, keys after `vision_model.radio_model.model.`. */
  private visionDims(key: string): Dim[] | undefined {
    const { V, qkv, cls } = this.vision;
    const none = dim(undefined, "");
    switch (key) {
      case "patch_generator.cls_token.token":
        return [cls, V];
      case "patch_generator.embedder.weight":
      case "patch_generator.video_embedder.weight":
        return [V, none];
      case "patch_generator.pos_embed":
        return [none, none, V];
    }
    const m = /^blocks\.[0-9]+\.(.+)$/s.exec(key);
    switch (m?.[1]) {
      case "norm1.weight":
      case "norm1.bias":
      case "norm2.weight":
      case "norm2.bias":
      case "attn.proj.bias":
      case "mlp.fc2.bias":
        return [V];
      case "attn.qkv.weight":
        return [qkv, V];
      case "attn.qkv.bias":
        return [qkv];
      case "attn.proj.weight":
        return [V, V];
      case "mlp.fc1.weight":
        return [none, V];
      case "mlp.fc2.weight":
        return [V, none];
      default:
        return undefined;
    }
  }

  /** Parakeet, keys after `sound_encoder.encoder.`. */
  private soundDims(key: string): Dim[] | undefined {
    const { Hs, twice, inter, heads, headDim, kernel, channels, flat, mels, one } = this.parakeet;
    const none = dim(undefined, "");
    switch (key) {
      case "subsampling.linear.weight":
        return [Hs, flat];
      case "subsampling.linear.bias":
        return [Hs];
      case "feature_extractor.featurizer.fb":
        return [none, mels, none];
    }
    const sub = /^subsampling\.layers\.[0-9]+\.(weight|bias)$/.exec(key);
    if (sub) return sub[1] === "bias" ? [channels] : [channels, none, none, none];
    const m = /^layers\.[0-9]+\.(.+)$/s.exec(key);
    const rest = m?.[1];
    if (rest === undefined) return undefined;
    if (/^norm_(?:feed_forward1|self_att|conv|feed_forward2|out)\.(?:weight|bias)$/.test(rest)) return [Hs];
    if (/^conv\.norm\.(?:weight|bias|running_mean|running_var)$/.test(rest)) return [Hs];
    if (/^self_attn\.(?:q|k|v|o|relative_k)_proj\.weight$/.test(rest)) return [Hs, Hs];
    if (/^self_attn\.(?:q|k|v|o|relative_k)_proj\.bias$/.test(rest)) return [Hs];
    switch (rest) {
      case "feed_forward1.linear1.weight":
      case "feed_forward2.linear1.weight":
        return [inter, Hs];
      case "feed_forward1.linear1.bias":
      case "feed_forward2.linear1.bias":
        return [inter];
      case "feed_forward1.linear2.weight":
      case "feed_forward2.linear2.weight":
        return [Hs, inter];
      case "feed_forward1.linear2.bias":
      case "feed_forward2.linear2.bias":
        return [Hs];
      case "self_attn.bias_u":
      case "self_attn.bias_v":
        return [heads, headDim];
      case "conv.pointwise_conv1.weight":
        return [twice, Hs, one];
      case "conv.depthwise_conv.weight":
        return [Hs, none, kernel];
      case "conv.pointwise_conv2.weight":
        return [Hs, Hs, one];
      default:
        return undefined;
    }
  }

  private projectorDims(name: string): Dim[] | undefined {
    const { H, visionIn, projector, sound, soundProjection } = this;
    switch (name) {
      case "mlp1.0.weight":
      case "mlp1.0.bias":
        return [visionIn];
      case "mlp1.1.weight":
        return [projector, visionIn];
      case "mlp1.1.bias":
        return [projector];
      case "mlp1.3.weight":
        return [H, projector];
      case "mlp1.3.bias":
        return [H];
      case "sound_projection.norm.weight":
      case "sound_projection.norm.bias":
        return [sound];
      case "sound_projection.linear1.weight":
        return [soundProjection, sound];
      case "sound_projection.linear1.bias":
        return [soundProjection];
      case "sound_projection.linear2.weight":
        return [H, soundProjection];
      case "sound_projection.linear2.bias":
        return [H];
      default:
        return undefined;
    }
  }

  /** Keys after `language_model.`: `backbone.…`, `lm_head.weight`, `mtp.…`. */
  private languageModelDims(key: string): Dim[] | undefined {
    const { H, vocab } = this;
    if (key === "backbone.embeddings.weight" || key === "lm_head.weight") return [vocab, H];
    if (key === "backbone.norm_f.weight") return [H];
    const m = /^(?:backbone|mtp)\.layers\.[0-9]+\.(.+)$/s.exec(key);
    if (!m) return undefined;
    const rest = m[1]!;
    switch (rest) {
      case "norm.weight":
      case "enorm.weight":
      case "hnorm.weight":
      case "final_layernorm.weight":
        return [H];
      case "eh_proj.weight":
        return [H, { n: H.n !== undefined ? 2 * H.n : undefined, from: "2 × hidden_size" }];
    }
    const expert = parseExpertKey(key);
    if (expert?.kind === "expert-weight" && expert.rest === "") {
      return expert.proj === "down_proj" ? [H, this.moeInter] : [this.moeInter, H];
    }
    if (expert) return undefined;
    return this.mixerDims(rest);
  }

  private mixerDims(rest: string): Dim[] | undefined {
    const { H, experts, mambaHeads, dInner, convDim, q, kv } = this;
    switch (rest) {
      case "mixer.A_log":
      case "mixer.D":
      case "mixer.dt_bias":
        return [mambaHeads];
      case "mixer.in_proj.weight":
        return [this.inProj, H];
      case "mixer.conv1d.weight":
        return [convDim, dim(undefined, "groups"), this.convKernel];
      case "mixer.conv1d.bias":
        return [convDim];
      case "mixer.norm.weight":
        return [dInner];
      case "mixer.out_proj.weight":
        return [H, dInner];
      case "mixer.q_proj.weight":
        return [q, H];
      case "mixer.k_proj.weight":
      case "mixer.v_proj.weight":
        return [kv, H];
      case "mixer.o_proj.weight":
        return [H, q];
      case "mixer.gate.weight":
        return [experts, H];
      case "mixer.gate.e_score_correction_bias":
        return [experts];
      case "mixer.shared_experts.up_proj.weight":
        return [this.sharedInter, H];
      case "mixer.shared_experts.down_proj.weight":
        return [H, this.sharedInter];
      case "mixer.up_proj.weight":
        return [this.mlpInter, H];
      case "mixer.down_proj.weight":
        return [H, this.mlpInter];
      default:
        return undefined;
    }
  }
}

/** Names with their layer and block numbers as `N`: how unchecked tensors are listed. */
export function namePattern(name: string): string {
  return name.replace(/\.[0-9]+\./g, ".N.");
}
