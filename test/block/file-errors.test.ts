import { describe, expect, it, vi } from "vitest";

// Permission errors cannot be produced for real when the tests run as root, so the open call
// is made to fail the way the kernel would.
vi.mock("node:fs/promises", async (importOriginal) => {
  const actual = await importOriginal<typeof import("node:fs/promises")>();
  return {
    ...actual,
    open: vi.fn(async (path: string) => {
      const code = path.endsWith("eacces.img") ? "EACCES" : path.endsWith("erofs.img") ? "EROFS" : "EIO";
      throw Object.assign(new Error(`${code}: simulated, open '${path}'`), { code });
    }),
  };
});

const { FileBackend } = await import("../../runtime/block/file.ts");
const { expectBlockError } = await import("./contract.ts");

describe("FileBackend open errors", () => {
  it("reports a permission problem as not writable, naming the path", async () => {
    const error = await expectBlockError(
      FileBackend.open("/images/eacces.img", { writable: true }),
      "config",
    );
    expect(error.message).toContain("/images/eacces.img");
    expect(error.message).toMatch(/not writable/);
  });

  it("reports a read-only file system as not writable", async () => {
    const error = await expectBlockError(FileBackend.open("/ro/erofs.img", { writable: true }), "config");
    expect(error.message).toContain("/ro/erofs.img");
    expect(error.message).toMatch(/not writable/);
  });

  it("reports other failures as I/O errors", async () => {
    const error = await expectBlockError(FileBackend.open("/dev/eio.img", { writable: false }), "io");
    expect(error.message).toContain("/dev/eio.img");
  });
});
