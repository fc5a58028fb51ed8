/** Element types a safetensors file may hold (SPEC §5), named as the format names them. */
export const DTYPES = [
  "BOOL",
  "U8",
  "I8",
  "F8_E5M2",
  "F8_E4M3",
  "I16",
  "U16",
  "F16",
  "BF16",
  "I32",
  "U32",
  "F32",
  "F64",
  "I64",
  "U64",
] as const;

export type DType = (typeof DTYPES)[number];

const ITEM_SIZES: Readonly<Record<DType, number>> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
};

const FLOATS: ReadonlySet<DType> = new Set<DType>(["F8_E5M2", "F8_E4M3", "F16", "BF16", "F32", "F64"]);

export function isDType(name: unknown): name is DType {
  return typeof name === "string" && Object.prototype.hasOwnProperty.call(ITEM_SIZES, name);
}

export function itemSize(dtype: DType): number {
  return ITEM_SIZES[dtype];
}

/** Floating point dtypes are the only ones a rule may cast; integers and bools never change (SPEC §4). */
export function isFloat(dtype: DType): boolean {
  return FLOATS.has(dtype);
}

/**
 * Rank used by the reference `safetensors` serializer to order tensors in a file: larger rank first, then by
 * name. Following it lets a single-shard output be byte-identical to what PyTorch would have written.
 */
export function serializationRank(dtype: DType): number {
  return DTYPES.indexOf(dtype);
}

/** User-facing spellings accepted on the command line, mapped to format names. */
const ALIASES: Readonly<Record<string, DType>> = {
  bf16: "BF16",
  bfloat16: "BF16",
  f16: "F16",
  fp16: "F16",
  float16: "F16",
  half: "F16",
  f32: "F32",
  fp32: "F32",
  float32: "F32",
  float: "F32",
};

export function parseDTypeAlias(name: string): DType | undefined {
  const key = name.toLowerCase();
  return Object.prototype.hasOwnProperty.call(ALIASES, key) ? ALIASES[key] : undefined;
}
