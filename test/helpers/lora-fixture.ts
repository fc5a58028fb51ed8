import * as fs from "node:fs";
import * as path from "node:path";
import { expect } from "vitest";
import type { Folder } from "../../src/io/folder.js";
import { MemoryFolder } from "../../src/io/folder.js";
import { MemoryOutput } from "../../src/io/output.js";
import { baseModel } from "../../src/lora/base.js";
import { exportAdapterFolder } from "../../src/lora/export-files.js";
import { mergeFolders } from "../../src/lora/merge.js";
import { LocalFolder } from "../../src/node/local-folder.js";
import { Checkpoint } from "../../src/safetensors/checkpoint.js";
import { serialize } from "../../src/safetensors/encode.js";
import { SafetensorsFile } from "../../src/safetensors/file.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { loraDir } from "./fixtures.js";
import { PEFT } from "./lora.js";

/* The LoRA fixture's adapter and base, variants of them, and what the LoRA tests ask of a refusal. */

export const fixture = path.join(loraDir, "tiny-experts-rank2");
export const LM = `${PEFT}language_model.model.layers`;

export function files(dir: string): Map<string, Uint8Array> {
  return new Map(fs.readdirSync(dir).map((f) => [f, new Uint8Array(fs.readFileSync(path.join(dir, f)))]));
}

export function tensorsOf(bytes: Uint8Array): Map<string, Tensor> {
  const f = SafetensorsFile.fromBytes(bytes);
  return new Map([...f.tensors.keys()].map((n) => [n, f.readTensorSync(n)]));
}

/** The fixture's adapter (or another folder's files) with its tensors and config changed. */
export function variant(
  change: { tensors?: (t: Map<string, Tensor>) => void; config?: (c: Record<string, unknown>) => void },
  from: Map<string, Uint8Array> = files(path.join(fixture, "adapter")),
): MemoryFolder {
  const out = new Map(from);
  if (change.tensors) {
    const t = tensorsOf(out.get("adapter_model.safetensors")!);
    change.tensors(t);
    out.set("adapter_model.safetensors", serialize(t));
  }
  if (change.config) {
    const c = JSON.parse(new TextDecoder().decode(out.get("adapter_config.json")!)) as Record<string, unknown>;
    change.config(c);
    out.set("adapter_config.json", new TextEncoder().encode(JSON.stringify(c, null, 2)));
  }
  return new MemoryFolder(out, "adapter");
}

export function baseVariant(change: { config?: (c: Record<string, unknown>) => void; tensors?: (t: Map<string, Tensor>) => void }): MemoryFolder {
  const out = files(path.join(fixture, "base"));
  if (change.config) {
    const c = JSON.parse(new TextDecoder().decode(out.get("config.json")!)) as Record<string, unknown>;
    change.config(c);
    out.set("config.json", new TextEncoder().encode(JSON.stringify(c, null, 2)));
  }
  if (change.tensors) {
    const t = tensorsOf(out.get("model.safetensors")!);
    change.tensors(t);
    out.set("model.safetensors", serialize(t));
  }
  return new MemoryFolder(out, "base");
}

export const base = (): Folder => new LocalFolder(path.join(fixture, "base"));

export async function exportError(adapter: Folder, options: Parameters<typeof exportAdapterFolder>[2] = {}): Promise<Error> {
  return exportAdapterFolder(adapter, new MemoryOutput(), options).then(
    () => {
      throw new Error("expected a refusal");
    },
    (e: unknown) => e as Error,
  );
}

export async function mergeError(adapter: Folder, from: Folder = base(), options: Parameters<typeof mergeFolders>[3] = {}): Promise<Error> {
  return mergeFolders(from, adapter, new MemoryOutput(), options).then(
    () => {
      throw new Error("expected a refusal");
    },
    (e: unknown) => e as Error,
  );
}

export async function hfExport(options: Parameters<typeof exportAdapterFolder>[2] = {}): Promise<Map<string, Uint8Array>> {
  const out = new MemoryOutput();
  await exportAdapterFolder(new LocalFolder(path.join(fixture, "adapter")), out, options);
  return out.files;
}

export async function withBase(folder: Folder = base()): Promise<{ base: ReturnType<typeof baseModel> }> {
  const ckpt = await Checkpoint.open(folder);
  const b = baseModel(ckpt, await ckpt.readConfig());
  ckpt.close();
  return { base: b };
}

export const W = "adapter/adapter_model.safetensors";
export const C = "adapter/adapter_config.json";

export const T = (key: string): string => `${W}: tensor ${JSON.stringify(key)}: `;
export const BASE = path.join(fixture, "base");
export const adapterDir = (): Folder => new LocalFolder(path.join(fixture, "adapter"));
export const zeros = (shape: number[]): Tensor => ({ dtype: "BF16", shape, data: new Uint8Array(shape.reduce((a, b) => a * b, 1) * 2) });

export async function refused(p: Promise<Error>, kind: new (...args: never[]) => Error, message: string): Promise<void> {
  const e = await p;
  expect(e).toBeInstanceOf(kind);
  expect(e.message).toBe(message);
}
