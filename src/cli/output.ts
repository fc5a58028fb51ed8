/** Where command output goes: results on stdout, warnings and errors on stderr, one line each. */
export function say(line = ""): void {
  process.stdout.write(`${line}\n`);
}

export function warn(line: string): void {
  process.stderr.write(`omni-ckpt: ${line}\n`);
}

/** Print at most `limit` lines of a list, then how many more there were. */
export function warnList(lines: readonly string[], limit = 10): void {
  for (const l of lines.slice(0, limit)) warn(l);
  if (lines.length > limit) warn(`… and ${lines.length - limit} more`);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, (_k, v: unknown) => (v instanceof Map ? Object.fromEntries(v) : v), 2)}\n`);
}
