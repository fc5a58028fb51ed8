/**
 * Every failure omni-ckpt reports on purpose is one of these, and the class says whose it is to fix:
 * `InputError`s are the user's (a bad file, a bad flag: exit 2); `ReadError`s and `WriteError`s are the
 * storage's (a disk or a server failing: exit 1); `AbortError` is the caller's own cancellation. Anything
 * else that escapes is our bug (exit 1).
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

/**
 * What the output is to go into is locked by another process that may still be running (a conversion
 * into the same DST, a part of a consolidation): wait for it, or clear its lock if it is known to be gone.
 */
export class LockHeldError extends InputError {
  override name = "LockHeldError";
}

/**
 * Reading failed although the input is not at fault as far as we can tell: an I/O error of the disk
 * (EIO), a server that kept failing after retries. Running again may succeed.
 */
export class ReadError extends OmniCkptError {
  override name = "ReadError";
}

/** A write to the output failed (disk full, I/O error): never the user's input, but not our bug either. */
export class WriteError extends OmniCkptError {
  override name = "WriteError";
}

/** The operation was cancelled through its `AbortSignal`; whatever it had begun to write is removed. */
export class AbortError extends OmniCkptError {
  override name = "AbortError";
  constructor(readonly reason?: unknown) {
    super(reason instanceof Error ? reason.message : reason !== undefined ? String(reason) : "the operation was aborted");
  }
}

/** Throw the signal's cancellation, if it was given one. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new AbortError(signal.reason);
}

export const EXIT_OK = 0;
export const EXIT_INTERNAL = 1;
export const EXIT_INPUT = 2;
/** `verify` and `diff`: the checkpoints differ. */
export const EXIT_DIFFERENT = 3;

/** The exit code a command line reports for a failure. */
export function exitCodeOf(e: unknown): number {
  return e instanceof InputError ? EXIT_INPUT : EXIT_INTERNAL;
}
