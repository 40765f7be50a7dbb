import { BlockError, SECTOR_SIZE } from "./types.ts";

/** Rejects write payloads that are not whole sectors, before any byte reaches the device. */
export function checkSectorData(description: string, data: Uint8Array): number {
  if (data.length % SECTOR_SIZE !== 0) {
    throw new BlockError(
      `${description}: write of ${data.length} bytes is not a whole number of ${SECTOR_SIZE}-byte sectors`,
      "range",
    );
  }
  return data.length / SECTOR_SIZE;
}

/** Validates a device size given in sectors (constructors take it from callers and configs). */
export function checkSectorCount(description: string, sectors: number): void {
  if (!Number.isSafeInteger(sectors) || sectors < 0) {
    throw new BlockError(`${description}: invalid size of ${sectors} sectors`, "config");
  }
}

/** The error every backend raises once closed, so callers can tell shutdown from failure. */
export function closedError(description: string): BlockError {
  return new BlockError(`${description}: device is closed`, "closed");
}
