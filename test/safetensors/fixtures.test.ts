import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { SafetensorsFile } from "../../src/safetensors/file.js";
import { serialize } from "../../src/safetensors/encode.js";
import type { Tensor } from "../../src/tensor/tensor.js";
import { fixturesDir, oracleDir, safetensorsFilesUnder, openSafetensors } from "../helpers/fixtures.js";

/**
 * Every `.safetensors` file under the fixtures is read twice, by the library and by a deliberately naive
 * parse below, and the two must agree on every name, dtype, shape and byte. The oracle's files were written
 * by PyTorch's `safetensors`, whose layout our serializer reproduces, so re-serializing them must give back
 * the file byte for byte; the consolidation fixtures were written by DCP's and Automodel's writers, which
 * order tensors and metadata their own way, so for them only the reading is checked.
 */



interface NaiveEntry {
  readonly name: string;
  readonly dtype: string;
  readonly shape: number[];
  readonly data: Uint8Array;
}

interface NaiveFile {
  readonly headerText: string;
  readonly metadata: Record<string, string> | undefined;
  /** In the order the header lists them. */
  readonly entries: NaiveEntry[];
}

/** The simplest possible reading: fine for trusted files, which is what the fixtures are. */
function naiveParse(bytes: Uint8Array): NaiveFile {
  const n = Number(Buffer.from(bytes.buffer, bytes.byteOffset, 8).readBigUInt64LE(0));
  const headerText = Buffer.from(bytes.buffer, bytes.byteOffset + 8, n).toString("utf8");
  const header = JSON.parse(headerText) as Record<string, unknown>;
  const dataStart = 8 + n;
  let metadata: Record<string, string> | undefined;
  const entries: NaiveEntry[] = [];
  for (const [name, v] of Object.entries(header)) {
    if (name === "__metadata__") {
      metadata = v as Record<string, string>;
      continue;
    }
    const e = v as { dtype: string; shape: number[]; data_offsets: [number, number] };
    entries.push({
      name,
      dtype: e.dtype,
      shape: e.shape,
      data: bytes.subarray(dataStart + e.data_offsets[0], dataStart + e.data_offsets[1]),
    });
  }
  return { headerText, metadata, entries };
}

const ITEM: Record<string, number> = { F64: 8, I64: 8, U64: 8, F32: 4, I32: 4, U32: 4, F16: 2, BF16: 2, I16: 2, U16: 2 };

const files = safetensorsFilesUnder(fixturesDir);

describe("fixture files", () => {
  it("finds the fixture tree", () => {
    // 57 files at the time of writing (32 of the oracle); a vanished tree must not make the suite pass vacuously.
    expect(files.length).toBeGreaterThanOrEqual(20);
    expect(files.some((f) => f.endsWith(`${path.sep}model.safetensors`))).toBe(true);
    expect(files.some((f) => /model-0000\d-of-0000\d\.safetensors$/.test(f))).toBe(true);
  });

  for (const file of files) {
    const rel = path.relative(fixturesDir, file);
    describe(rel, () => {
      const bytes = new Uint8Array(fs.readFileSync(file));
      const naive = naiveParse(bytes);

      it("reads the same names, dtypes, shapes and bytes as a naive parse", () => {
        const st = openSafetensors(file);
        try {
          expect(st.name).toBe(file);
          expect(st.header.dataStart).toBe(8 + Buffer.byteLength(naive.headerText));
          expect(st.header.metadata === null ? undefined : Object.fromEntries(st.header.metadata)).toEqual(naive.metadata);
          expect(st.header.entries.map((e) => e.name)).toEqual(naive.entries.map((e) => e.name));
          expect(st.tensors.size).toBe(naive.entries.length);
          expect(naive.entries.length).toBeGreaterThan(0);
          for (const n of naive.entries) {
            const t = st.readTensorSync(n.name);
            expect(t.dtype, n.name).toBe(n.dtype);
            expect(t.shape, n.name).toEqual(n.shape);
            expect(t.data.byteLength, n.name).toBe(n.shape.reduce((a, b) => a * b, 1) * (ITEM[n.dtype] ?? 1));
            expect(Buffer.compare(Buffer.from(t.data), Buffer.from(n.data)), n.name).toBe(0);
          }
        } finally {
          st.close();
        }
      });

      it("reads the same through an in-memory source", () => {
        const st = SafetensorsFile.fromBytes(bytes, rel);
        for (const n of naive.entries) {
          const t = st.readTensorSync(n.name);
          expect(Buffer.compare(Buffer.from(t.data), Buffer.from(n.data)), n.name).toBe(0);
        }
      });

      const writtenByPyTorch = !path.relative(oracleDir, file).startsWith("..");
      if (writtenByPyTorch) it("re-serializes byte for byte", () => {
        const st = SafetensorsFile.fromBytes(bytes, rel);
        // Handed over in reverse file order, so the order on disk has to come from referenceOrder.
        const tensors: [string, Tensor][] = st.header.entries.map((e): [string, Tensor] => [e.name, st.readTensorSync(e.name)]).reverse();
        const metadata = st.header.metadata === null ? null : Object.fromEntries(st.header.metadata);
        const again = serialize(tensors, metadata);
        // Compare the header text first: a mismatch there is far easier to read than a byte offset.
        const againHeader = naiveParse(again).headerText;
        expect(againHeader).toBe(naive.headerText);
        expect(again.byteLength).toBe(bytes.byteLength);
        expect(Buffer.compare(Buffer.from(again), Buffer.from(bytes))).toBe(0);
      });
    });
  }
});
