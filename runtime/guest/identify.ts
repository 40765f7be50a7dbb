/** What a driver learns from IDENTIFY DEVICE data (ATA8-ACS 7.16), as libata reads it. */
export interface DiskIdentity {
  /** User-addressable sectors: LBA48 capacity (words 100-103), or LBA28 (words 60-61) without LBA48. */
  readonly sectors: number;
  readonly model: string;
  readonly serial: string;
  readonly firmware: string;
  readonly lba48: boolean;
  /** Native command queuing supported (word 76 bit 8). */
  readonly ncq: boolean;
  /** Queue depth the device offers (word 75 bits 4:0, plus one); 1 without NCQ. */
  readonly ncqDepth: number;
  readonly writeCacheSupported: boolean;
  readonly writeCacheEnabled: boolean;
  /** FLUSH CACHE EXT supported (word 83 bit 13). */
  readonly flushExt: boolean;
  /** DATA SET MANAGEMENT with TRIM (word 169 bit 0). */
  readonly trim: boolean;
  /** Highest UDMA mode supported (word 88), or -1. */
  readonly udmaMax: number;
  /** Word 255 carried the 0xA5 signature and a good checksum (or no signature at all). */
  readonly checksumOk: boolean;
}

function word(data: Uint8Array, index: number): number {
  return data[index * 2]! | (data[index * 2 + 1]! << 8);
}

/** ATA strings: two characters per word, the first in the high byte; trailing spaces trimmed. */
export function ataString(data: Uint8Array, firstWord: number, words: number): string {
  let text = "";
  for (let i = 0; i < words; i++) {
    const w = word(data, firstWord + i);
    text += String.fromCharCode(w >>> 8, w & 0xff);
  }
  return text.replace(/[\s\0]+$/, "").replace(/^\s+/, "");
}

export function parseIdentify(data: Uint8Array): DiskIdentity {
  if (data.length < 512) throw new RangeError(`IDENTIFY data is ${data.length} bytes, not 512`);
  const lba48 = (word(data, 83) & 0x0400) !== 0 && (word(data, 86) & 0x0400) !== 0;
  let sectors = 0;
  if (lba48) {
    for (let i = 3; i >= 0; i--) sectors = sectors * 0x10000 + word(data, 100 + i);
  } else {
    sectors = word(data, 60) + word(data, 61) * 0x10000;
  }
  const ncq = (word(data, 76) & 0x0100) !== 0;
  const udma = word(data, 88) & 0x7f;
  let checksumOk = true;
  if (data[510] === 0xa5) {
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += data[i]!;
    checksumOk = sum % 256 === 0;
  }
  return {
    sectors,
    model: ataString(data, 27, 20),
    serial: ataString(data, 10, 10),
    firmware: ataString(data, 23, 4),
    lba48,
    ncq,
    ncqDepth: ncq ? (word(data, 75) & 0x1f) + 1 : 1,
    writeCacheSupported: (word(data, 82) & 0x0020) !== 0,
    writeCacheEnabled: (word(data, 85) & 0x0020) !== 0,
    flushExt: (word(data, 83) & 0x2000) !== 0,
    trim: (word(data, 169) & 0x0001) !== 0,
    udmaMax: udma === 0 ? -1 : 31 - Math.clz32(udma),
    checksumOk,
  };
}
