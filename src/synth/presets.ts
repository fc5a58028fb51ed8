/**
 * Sizes of synthetic Omni checkpoints. `tiny` mirrors the oracle fixtures, `small` is a quick but
 * non-trivial model, `bench` keeps the real model's proportions (experts are ~90% of the bytes, 128 of
 * them per MoE layer) at about 1 GB, and `nano-omni-30b` has the real model's shapes (SPEC §6; the vision
 * and sound encoders at plausible RADIO / Parakeet sizes), about 68 GB: write it with `--sparse`.
 */
export interface SynthPreset {
  readonly name: string;
  readonly vision: { readonly hidden: number; readonly blocks: number; readonly patch: number; readonly tokens: number };
  /** Width of the vision projector's hidden layer. */
  readonly projector: number;
  readonly sound: { readonly hidden: number; readonly layers: number; readonly heads: number; readonly projection: number };
  readonly llm: {
    readonly hidden: number;
    readonly pattern: string;
    readonly vocab: number;
    readonly experts: number;
    readonly topK: number;
    readonly moeInter: number;
    readonly sharedInter: number;
    readonly mlpInter: number;
    readonly mambaHeads: number;
    readonly mambaHeadDim: number;
    readonly mambaGroups: number;
    readonly ssmState: number;
    readonly convKernel: number;
    readonly attnHeads: number;
    readonly kvHeads: number;
    readonly headDim: number;
    /** Block types of the multi-token-prediction layers. */
    readonly mtp: readonly ("attention" | "moe")[];
  };
}

export const PRESETS: Readonly<Record<string, SynthPreset>> = {
  tiny: {
    name: "tiny",
    vision: { hidden: 8, blocks: 1, patch: 4, tokens: 16 },
    projector: 24,
    sound: { hidden: 12, layers: 1, heads: 2, projection: 24 },
    llm: {
      hidden: 16,
      pattern: "ME*ME",
      vocab: 64,
      experts: 4,
      topK: 2,
      moeInter: 12,
      sharedInter: 20,
      mlpInter: 20,
      mambaHeads: 4,
      mambaHeadDim: 4,
      mambaGroups: 1,
      ssmState: 16,
      convKernel: 4,
      attnHeads: 2,
      kvHeads: 1,
      headDim: 4,
      mtp: ["attention", "moe"],
    },
  },
  small: {
    name: "small",
    vision: { hidden: 32, blocks: 2, patch: 4, tokens: 64 },
    projector: 96,
    sound: { hidden: 32, layers: 2, heads: 4, projection: 64 },
    llm: {
      hidden: 64,
      pattern: "MEM*EME-E",
      vocab: 512,
      experts: 8,
      topK: 2,
      moeInter: 48,
      sharedInter: 96,
      mlpInter: 128,
      mambaHeads: 8,
      mambaHeadDim: 8,
      mambaGroups: 2,
      ssmState: 16,
      convKernel: 4,
      attnHeads: 4,
      kvHeads: 2,
      headDim: 16,
      mtp: ["attention", "moe"],
    },
  },
  bench: {
    name: "bench",
    vision: { hidden: 256, blocks: 4, patch: 16, tokens: 256 },
    projector: 1024,
    sound: { hidden: 256, layers: 4, heads: 8, projection: 1024 },
    llm: {
      hidden: 512,
      pattern: "MEMEM*EMEMEM*EMEMEM*E",
      vocab: 32768,
      experts: 128,
      topK: 6,
      moeInter: 384,
      sharedInter: 768,
      mlpInter: 1536,
      mambaHeads: 16,
      mambaHeadDim: 64,
      mambaGroups: 8,
      ssmState: 128,
      convKernel: 4,
      attnHeads: 8,
      kvHeads: 2,
      headDim: 64,
      mtp: ["attention", "moe"],
    },
  },
  "nano-omni-30b": {
    name: "nano-omni-30b",
    vision: { hidden: 1280, blocks: 32, patch: 16, tokens: 1024 },
    projector: 20480,
    sound: { hidden: 1024, layers: 24, heads: 8, projection: 4096 },
    llm: {
      hidden: 2688,
      pattern: "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME",
      vocab: 131072,
      experts: 128,
      topK: 6,
      moeInter: 1856,
      sharedInter: 3712,
      mlpInter: 1856,
      mambaHeads: 64,
      mambaHeadDim: 64,
      mambaGroups: 8,
      ssmState: 128,
      convKernel: 4,
      attnHeads: 32,
      kvHeads: 2,
      headDim: 128,
      mtp: ["attention", "moe"],
    },
  },
};
