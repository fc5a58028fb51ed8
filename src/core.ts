/**
 * `omni-ckpt/core`: everything that needs no Node.js, for browsers and other hosts. Formats, the conversion
 * rules and their plans, streaming over abstract byte sources and folders, and whole-checkpoint operations
 * into any output store. Nothing here imports `node:` or touches `Buffer` or `process` (README, Layout).
 */
export { NemotronOmniStateDictAdapter } from "./adapters/nemotron-omni.js";
export { NemotronV3StateDictAdapter, type AdapterOptions, type FromHfOptions, type ToHfOptions } from "./adapters/nemotron-v3.js";
export { parseModelConfig, parseLlmConfig, truncationEdits, type LlmConfig, type ModelConfig } from "./adapters/config.js";
export { expertRange, type ExpertParallel, type ExpertActivation } from "./adapters/experts.js";
export type { Plan, PlannedTensor, Piece, PieceScale, Diagnostic, Logger, HeaderMap } from "./adapters/plan.js";
export type { StateDict } from "./adapters/execute.js";

export { type ByteSource, MemorySource } from "./io/byte-source.js";
export { type Folder, type FolderEntry, type EntryStat, MemoryFolder, readText, checkRelative } from "./io/folder.js";
export { type OutputStore, type WritableFile, MemoryOutput } from "./io/output.js";
export { HttpFolder, HubFolder, remoteSource, isRemoteSpec, type RemoteSpec } from "./io/http-folder.js";
export { HttpSource, type RemoteOptions } from "./io/http-source.js";
export { DEFAULT_ENDPOINT, type HttpOptions, type RetryOptions, type Fetch } from "./io/http-client.js";

export { Checkpoint, type StoredTensor, type ConfigFile, parseConfigText, readIndex } from "./safetensors/checkpoint.js";
export { SafetensorsFile } from "./safetensors/file.js";
export { parseHeader, MAX_HEADER_LENGTH, type SafetensorsHeader, type TensorEntry } from "./safetensors/header.js";
export { parseJson, type JsonValue, type ParseOptions } from "./safetensors/json.js";
export { editJson, type JsonEdit } from "./safetensors/json-edit.js";
export { serialize, encodeHeader, referenceOrder, type DeclaredTensor } from "./safetensors/encode.js";
export { SafetensorsFileWriter } from "./safetensors/file-writer.js";
export { ShardedWriter } from "./safetensors/sharded-writer.js";
export { planShards, shardFileName, indexJson, CONFIG_FILE, INDEX_FILE, SINGLE_FILE, type ShardPlan } from "./safetensors/shard-plan.js";
export { DEFAULT_MAX_SHARD_SIZE } from "./safetensors/shard-size.js";

export { type DType, DTYPES, itemSize, isFloat } from "./tensor/dtype.js";
export { type Tensor, type TensorInfo, makeTensor } from "./tensor/tensor.js";
export { castInto } from "./tensor/cast.js";
export { transposeLast2, stack, concatLast, selectRows, cast } from "./tensor/ops.js";

export { convertFolder, prepareConversion, writeConversion, type BaseOptions, type FolderConversion, type PreparedConversion, type WriteOptions } from "./convert/convert.js";
export { planConversion, planInput, loadPlanInput, type ConvertOptions, type ConversionPlan, type Dequantization } from "./convert/planner.js";
export { describeCheckpoint, type InspectReport } from "./convert/inspect.js";
export { verifyRoundTrip, type VerifyReport, type VerifyOptions } from "./convert/verify.js";
export { compareCheckpoints, type DiffReport, type CompareOptions, type Hasher } from "./convert/diff.js";
export { detectLayout, type Layout } from "./convert/layout.js";
export { streamTensors, type TensorSource, type TensorSink } from "./convert/stream.js";
export { planSynth, writeSynth, type SynthOptions, type SynthPlan, type SynthSummary } from "./synth/layout.js";
export { quantizeSynthPlan, writeQuantSynth, type QuantSynthPlan } from "./synth/quantize.js";
export { SYNTH_QUANTS, type SynthQuant } from "./synth/quant-kinds.js";
export { detectQuantization, summarizeQuantization, SCHEME_NAMES, type Quantization, type QuantScheme, type QuantSummary } from "./quant/detect.js";
export { dequantizeToBf16 } from "./quant/dequantize.js";
export { RELEASE_BUFFERS, type BaseAudit } from "./convert/base.js";
export { openAdapter, type AdapterFolder, ADAPTER_WEIGHTS, ADAPTER_CONFIG, AUTOMODEL_CONFIG } from "./lora/files.js";
export { readLora, type LoraSet, type LoraModule, type BaseModel } from "./lora/read.js";
export { planExport, type ExportOptions, type ExportPlan, type ExpertExport } from "./lora/export.js";
export { exportAdapterFolder, prepareExport, writeExport, type PreparedExport } from "./lora/export-files.js";
export { mergeFolders, prepareMerge, writeMerge, type MergeOptions, type MergeSummary, type PreparedMerge } from "./lora/merge.js";
export { baseModel, quantizationOf } from "./lora/base.js";
export { writeAutomodelSave, type AutomodelSaveOptions, type AutomodelSaveSummary } from "./synth/automodel-save.js";

export { ShardedSave, locateShardedSave, openShardedSave, type Violation, type SavedTensor, type SavedPiece } from "./consolidate/save.js";
export { planConsolidation, restoredDType, IncompleteSaveError, type ConsolidateOptions, type ConsolidationPlan, type OutputFile } from "./consolidate/plan.js";
export { writeConsolidation, writeConsolidatedFiles, completeConsolidation, listMetadataFiles, type MetadataFiles } from "./consolidate/write.js";
export { prepareSavedConversion, writeSavedConversion, convertSavedFolder, shardedSaveIn } from "./consolidate/convert.js";
export { describeShardedSave, type ShardedSaveReport } from "./consolidate/describe.js";
export { assignFiles, fingerprintRun, type PartSpec } from "./consolidate/parts.js";

export {
  OmniCkptError,
  InputError,
  FormatError,
  ConversionError,
  UsageError,
  ReadError,
  WriteError,
  AbortError,
  LockHeldError,
  exitCodeOf,
} from "./errors.js";
