import { parseExpertKey } from "../adapters/expert-keys.js";

/**
 * The shapes config.json fixes for a tensor of the HF layout, axis by axis (undefined where the config
 * says nothing). A sharded save stores no tensor's full shape: consolidation takes the box its pieces
 * span, so a lost rank file shows only as tensors that come out short. Wherever the config defines a
 * shape, it is the check that catches that.
 *
 * Covered: the language model (embeddings, lm_head, norms, Mamba, attention, MLP and MoE layers, MTP
 * layers) and both projectors. Not covered: the vision encoder (`vision_model.*`; RADIO's config holds no
 * sizes) and the sound encoder (`sound_encoder.*`; Parakeet's sizes are not all in the config).
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
      if (!name.startsWith(this.lm)) return undefined;
    }
    return this.languageModelDims(name.slice(this.lm.length));
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

/** The parts of a model no config field sizes, named as the README names them. */
export const UNCHECKED_COMPONENTS = ["vision_model.*", "sound_encoder.*"] as const;
