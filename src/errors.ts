/**
 * Every failure omni-ckpt reports on purpose is one of these. `InputError`s are the user's to fix (a bad
 * file, a bad flag) and exit with 2; anything else that escapes is our bug and exits with 1.
 */
export class OmniCkptError extends Error {
  override name = "OmniCkptError";
}

export class InputError extends OmniCkptError {
  override name = "InputError";
}

/** A malformed or hostile safetensors file, index or config: names the file and, where known, the tensor. */
export class FormatError extends InputError {
  override name = "FormatError";
  constructor(
    readonly file: string,
    readonly detail: string,
    readonly tensor?: string,
  ) {
    super(`${file}: ${tensor !== undefined ? `tensor ${JSON.stringify(tensor)}: ` : ""}${detail}`);
  }
}

/** The checkpoint is well-formed but its content cannot be converted as asked (missing experts, …). */
export class ConversionError extends InputError {
  override name = "ConversionError";
}

/** A bad command-line flag or argument. */
export class UsageError extends InputError {
  override name = "UsageError";
}

export const EXIT_INTERNAL = 1;
export const EXIT_INPUT = 2;
/** `verify` and `diff`: the checkpoints differ. */
export const EXIT_DIFFERENT = 3;
