import { FormatError, InputError } from "../errors.js";
import { type Folder, readText } from "../io/folder.js";
import { SafetensorsFile } from "../safetensors/file.js";
import { type JsonObject, JsonSyntaxError, describeJson, isJsonObject, parseJson } from "../safetensors/json.js";
import { type LoraSettings, parseLoraSettings } from "./settings.js";

/** The files of a PEFT adapter folder, as PEFT and NeMo Automodel name them (SPEC §8). */
export const ADAPTER_WEIGHTS = "adapter_model.safetensors";
export const ADAPTER_CONFIG = "adapter_config.json";
export const AUTOMODEL_CONFIG = "automodel_peft_config.json";

/** Every key of an adapter file starts with this: PeftModel's `base_model` and the LoraModel's `model`. */
export const PEFT_PREFIX = "base_model.model.";

/** A PEFT config is a few hundred bytes; even an explicit list of every expert module stays far below this. */
const MAX_CONFIG_BYTES = 16_000_000;

/** `adapter_config.json` as read: its values (numbers keep their literal text) and LoRA settings. */
export interface AdapterConfig {
  readonly file: string;
  readonly json: JsonObject;
  readonly settings: LoraSettings;
}

/** An adapter folder opened: its weights (headers only so far) and configs. */
export interface AdapterFolder {
  readonly folder: Folder;
  readonly where: string;
  readonly weights: SafetensorsFile;
  readonly config: AdapterConfig;
  /** Whether `automodel_peft_config.json` is there (NeMo Automodel writes it beside its adapters). */
  readonly automodelConfig: boolean;
  close(): void;
}

/** Read a small JSON file of a folder with the strict parser (duplicates, big integers, `__proto__`). */
export async function readJsonObject(folder: Folder, rel: string, signal?: AbortSignal): Promise<JsonObject> {
  const file = folder.describe(rel);
  const text = await readText(folder, rel, MAX_CONFIG_BYTES, signal);
  let value;
  try {
    value = parseJson(text, { nonFinite: true });
  } catch (e) {
    if (e instanceof JsonSyntaxError) throw new FormatError(file, `is not valid JSON: ${e.message}`);
    throw e;
  }
  if (!isJsonObject(value)) throw new FormatError(file, `is ${describeJson(value)}, not a JSON object`);
  return value;
}

/** Open a PEFT LoRA adapter folder: `adapter_model.safetensors` (header only) and `adapter_config.json`. */
export async function openAdapter(folder: Folder, signal?: AbortSignal): Promise<AdapterFolder> {
  const weightsStat = await folder.stat(ADAPTER_WEIGHTS, signal);
  if (!weightsStat) {
    const bin = await folder.stat("adapter_model.bin", signal);
    throw new InputError(
      `${folder.name}: no ${ADAPTER_WEIGHTS} in this folder` +
        (bin ? " (adapter_model.bin is a pickle, which omni-ckpt does not read: save the adapter with safe_serialization=True)" : "; is it a PEFT adapter folder?"),
    );
  }
  if (weightsStat.kind !== "file") throw new FormatError(folder.describe(ADAPTER_WEIGHTS), "is not a regular file");
  if (!(await folder.stat(ADAPTER_CONFIG, signal))) throw new InputError(`${folder.name}: no ${ADAPTER_CONFIG} in this folder; a PEFT adapter needs one`);
  const file = folder.describe(ADAPTER_CONFIG);
  const json = await readJsonObject(folder, ADAPTER_CONFIG, signal);
  const settings = parseLoraSettings(json, file);
  const automodelConfig = (await folder.stat(AUTOMODEL_CONFIG, signal))?.kind === "file";
  const weights = await SafetensorsFile.open(await folder.open(ADAPTER_WEIGHTS, signal), signal);
  return { folder, where: folder.name, weights, config: { file, json, settings }, automodelConfig, close: () => weights.close() };
}
