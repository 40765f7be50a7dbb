/** A problem found in a spec: data, never thrown (the TypeScript compiler's model). */
export interface Diagnostic {
  readonly file: string;
  /** 1-based line and column of the first offending character. */
  readonly line: number;
  readonly column: number;
  /** Characters to underline (at least 1). */
  readonly length: number;
  readonly severity: "error" | "warning";
  readonly message: string;
}

/** A place in a spec file, kept on every AST node and model element that came from source. */
export interface SourceSpan {
  readonly line: number;
  readonly column: number;
  readonly length: number;
}

/**
 * Formats diagnostics the way compilers do:
 *   FILE:LINE:COL: error: MESSAGE
 *     source line
 *     ^^^^
 */
export function formatDiagnostics(
  diagnostics: readonly Diagnostic[],
  sources: ReadonlyMap<string, string>,
): string {
  const out: string[] = [];
  for (const d of diagnostics) {
    out.push(`${d.file}:${d.line}:${d.column}: ${d.severity}: ${d.message}`);
    const text = sources.get(d.file);
    const line = text?.split(/\r?\n/)[d.line - 1];
    if (line !== undefined) {
      const shown = printable(line);
      out.push(`  ${shown}`);
      const caretWidth = Math.max(1, Math.min(d.length, shown.length - (d.column - 1)));
      out.push(`  ${" ".repeat(Math.max(0, d.column - 1))}${"^".repeat(caretWidth)}`);
    }
  }
  return out.length > 0 ? `${out.join("\n")}\n` : "";
}

/** Tabs become spaces (so the caret lines up) and control bytes become '?' (binary input). */
function printable(line: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: replacing control characters is the point
  return line.replace(/\t/g, " ").replace(/[\u0000-\u001f\u007f]/g, "?");
}

export function hasErrors(diagnostics: readonly Diagnostic[]): boolean {
  return diagnostics.some((d) => d.severity === "error");
}
