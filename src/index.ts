/**
 * `omni-ckpt`: the Node.js entry. The browser-safe core (`omni-ckpt/core`), plus what needs a local disk
 * and Node's threads: local files and folders with their safety rules, the Hugging Face cache, output
 * folders that appear only when complete, the writer thread, and the whole-checkpoint operations by path
 * that the command line runs.
 */
export * from "./core.js";

export { Checkpoint } from "./node/checkpoint.js";
export { FileSource } from "./node/file-source.js";
export { LocalFolder, type LocalFolderOptions } from "./node/local-folder.js";
export { LocalOutput, LocalFile } from "./node/local-output.js";
export { OutputFolder, abortOutputs } from "./node/output-folder.js";
export { resolveSource, openSource, type SourceOptions, type ResolvedSource } from "./node/sources.js";
export { hubCacheDir, parseRepoId, cachedSnapshot, type RepoRef } from "./node/hf-cache.js";
export { convertCheckpoint, type ConvertRequest, type ConvertSummary } from "./node/convert.js";
export { inspectCheckpoint, verifyCheckpoint, diffCheckpoints, sha256, type DiffOptions } from "./node/checks.js";
export { synthesize, type SynthRequest } from "./node/synth.js";
export { exportLoraAdapter, mergeLoraAdapter, type LoraExportRequest, type LoraExportSummary, type LoraMergeRequest, type LoraMergeSummary } from "./node/lora.js";
export { consolidateCheckpoint, type ConsolidateRequest, type ConsolidateSummary } from "./node/consolidate.js";
export { synthesizeSave, type SaveRequest } from "./node/synth-save.js";
