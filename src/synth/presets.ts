/**
 * Sizes of synthetic Omni checkpoints. Every preset has the key families of the real release (SPEC §6):
 * RADIO's input conditioner, class tokens, image and video embedders and biased blocks; Parakeet's
 * feature extractor, subsampling stack and 29-tensor conformer layers; the two projectors; NemotronH's
 * Mamba, MoE and attention layers. `tiny` mirrors the oracle fixtures' scale, `small` is quick but
 * non-trivial, `bench` keeps the real model's proportions (experts ~90% of the bytes, 128 per MoE layer) at
 * about 1 GB, and `nano-omni-30b` is the release itself: 7,349 tensors, 33.02 B parameters, 66.0 GB in 17
 * shards (write it with `--sparse`).
 */
export interface SynthPreset {
  readonly name: string;
  readonly vision: {
    readonly hidden: number;
    readonly blocks: number;
    readonly patch: number;
    /** Positions of the position embedding table. */
    readonly tokens: number;
    /** Class (and register) tokens. */
    readonly clsTokens: number;
  };
  /** Width of the vision projector's hidden layer. */
  readonly projector: number;
  readonly sound: {
    readonly hidden: number;
    readonly layers: number;
    readonly heads: number;
    readonly projection: number;
    /** Mel bins of the featurizer's filter bank, and its FFT and window sizes. */
    readonly mels: number;
    readonly nFft: number;
    readonly window: number;
    /** Channels of the convolutional subsampling (8× in time and frequency). */
    readonly subsamplingChannels: number;
    readonly convKernel: number;
  };
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
  };
  /** How the release cut its shards (`save_pretrained(max_shard_size=…)`), when `--max-shard-size` is not given. */
  readonly shardSize?: number;
}

/** Block types of the multi-token-prediction layers `synth --mtp` adds (the release has none). */
export const MTP_LAYERS: readonly ("attention" | "moe")[] = ["attention", "moe"];

export const PRESETS: Readonly<Record<string, SynthPreset>> = {
  tiny: {
    name: "tiny",
    vision: { hidden: 8, blocks: 1, patch: 4, tokens: 16, clsTokens: 2 },
    projector: 24,
    sound: { hidden: 12, layers: 1, heads: 2, projection: 24, mels: 16, nFft: 16, window: 12, subsamplingChannels: 4, convKernel: 3 },
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
    },
  },
  small: {
    name: "small",
    vision: { hidden: 32, blocks: 2, patch: 4, tokens: 64, clsTokens: 2 },
    projector: 96,
    sound: { hidden: 32, layers: 2, heads: 4, projection: 64, mels: 32, nFft: 32, window: 24, subsamplingChannels: 8, convKernel: 5 },
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
    },
  },
  bench: {
    name: "bench",
    vision: { hidden: 256, blocks: 4, patch: 16, tokens: 256, clsTokens: 10 },
    projector: 1024,
    sound: { hidden: 256, layers: 4, heads: 8, projection: 1024, mels: 64, nFft: 128, window: 100, subsamplingChannels: 64, convKernel: 9 },
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
    },
  },
  "nano-omni-30b": {
    name: "nano-omni-30b",
    // c-radio_v4-h: ViT-H/16, 1280 wide, 32 blocks, 10 class/register tokens, a 128×128 position grid.
    vision: { hidden: 1280, blocks: 32, patch: 16, tokens: 16384, clsTokens: 10 },
    projector: 20480,
    // Parakeet: 1024 wide, 24 layers, 8 heads; 128 mel bins from a 512-point FFT over 400-sample windows.
    sound: { hidden: 1024, layers: 24, heads: 8, projection: 4096, mels: 128, nFft: 512, window: 400, subsamplingChannels: 256, convKernel: 9 },
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
    },
    // 66.0 GB in 17 shards of about 3.9 GB each: save_pretrained's greedy cut in state-dict order, with a
    // limit of 3.9 GB (4 GB would leave a last shard of 2.1 GB; 3.9 GB gives 16 of 3.85–3.90 GB and one of 3.7).
    shardSize: 3_900_000_000,
  },
};
