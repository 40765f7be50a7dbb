/** medic as a library: the compiler (for build steps) and the diagnostics formatter. */
export {
  type CompileOptions,
  type CompileResult,
  compileSpec,
  type GeneratedFile,
} from "./generator/compile.ts";
export type { DeviceModel } from "./generator/model.ts";
export { type Diagnostic, formatDiagnostics, hasErrors } from "./grammar/diagnostics.ts";
