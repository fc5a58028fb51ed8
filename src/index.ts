// The library surface: the adapters (same shape as NeMo Automodel's), the safetensors reader and writer,
// the tensor type and kernels, and the whole-checkpoint operations behind the command line.
export { NemotronOmniStateDictAdapter } from "./adapters/nemotron-omni.js";
export { NemotronV3StateDictAdapter, type AdapterOptions, type FromHfOptions, type ToHfOptions } from "./adapters/nemotron-v3.js";
export { parseModelConfig, parseLlmConfig, type LlmConfig, type ModelConfig } from "./adapters/config.js";
export { expertRange, type ExpertParallel, type ExpertActivation } from "./adapters/moe-experts.js";
export type { Plan, PlannedTensor, Piece, Diagnostic, Logger, HeaderMap } from "./adapters/plan.js";
export type { StateDict } from "./adapters/execute.js";

export { Checkpoint, type StoredTensor, type OpenOptions } from "./safetensors/checkpoint.js";
export { SafetensorsFile } from "./safetensors/file.js";
export { parseHeader, MAX_HEADER_LENGTH, type SafetensorsHeader, type TensorEntry } from "./safetensors/header.js";
export { type ByteSource, FileSource, MemorySource } from "./safetensors/source.js";
export { serialize, encodeHeader, referenceOrder, SafetensorsFileWriter, type DeclaredTensor } from "./safetensors/writer.js";
export { ShardedWriter, planShards, shardFileName, DEFAULT_MAX_SHARD_SIZE } from "./safetensors/sharded-writer.js";

export { type DType, DTYPES, itemSize, isFloat } from "./tensor/dtype.js";
export { type Tensor, type TensorInfo, makeTensor } from "./tensor/tensor.js";
export { castInto } from "./tensor/cast.js";
export { transposeLast2, stack, concatLast, selectRows, cast } from "./tensor/ops.js";

export { convertCheckpoint, type ConvertRequest, type ConvertSummary } from "./convert/convert.js";
export { planConversion, planInput, type ConvertOptions, type ConversionPlan } from "./convert/planner.js";
export { inspectCheckpoint, type InspectReport } from "./convert/inspect.js";
export { verifyCheckpoint, type VerifyReport } from "./convert/verify.js";
export { diffCheckpoints, type DiffReport } from "./convert/diff.js";
export { detectLayout, type Layout } from "./convert/layout.js";
export { synthesize, type SynthOptions } from "./synth/synth.js";

export { OmniCkptError, InputError, FormatError, ConversionError, UsageError } from "./errors.js";
