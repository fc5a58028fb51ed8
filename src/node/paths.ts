import * as path from "node:path";

/** Whether `child` is `parent` or lies inside it (both absolute and resolved alike). */
export function within(child: string, parent: string): boolean {
  return child === parent || child.startsWith(parent.endsWith(path.sep) ? parent : parent + path.sep);
}
