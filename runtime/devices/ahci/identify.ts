/**
 * IDENTIFY DEVICE data (ATA8-ACS 7.16): 256 little-endian words describing the disk. What a
 * Linux-like driver looks at: model and serial, LBA48 capacity, NCQ with depth 32, DMA modes,
 * FLUSH CACHE (EXT), write cache, DATA SET MANAGEMENT (TRIM), and a valid integrity word.
 */
export interface IdentifyOptions {
  readonly sectors: number;
  readonly model?: string;
  readonly serial?: string;
  readonly firmware?: string;
  /** Queue depth the device offers for NCQ (1..32). */
  readonly queueDepth?: number;
}

export function identifyData(options: IdentifyOptions): Uint8Array {
  const words = new Uint16Array(256);
  const { sectors } = options;
  words[0] = 0x0040; // fixed device, not removable; bit 15 = 0: ATA device
  putString(words, 10, 20, options.serial ?? "MEDIC0000000001");
  putString(words, 23, 8, options.firmware ?? "1.0");
  putString(words, 27, 40, options.model ?? "medic emulated SATA disk");
  words[47] = 0x8010; // READ/WRITE MULTIPLE: up to 16 sectors per DRQ block
  words[49] = 0x0300; // LBA and DMA supported
  words[53] = 0x0006; // words 64-70 and 88 are valid
  const lba28 = Math.min(sectors, 0x0fffffff);
  words[60] = lba28 & 0xffff;
  words[61] = (lba28 >>> 16) & 0xffff;
  words[63] = 0x0007; // multiword DMA modes 0-2 supported
  words[64] = 0x0003; // PIO modes 3 and 4
  words[65] = words[66] = words[67] = words[68] = 120;
  words[75] = ((options.queueDepth ?? 32) - 1) & 0x1f; // NCQ queue depth minus one
  words[76] = 0x010e; // SATA Gen1/2/3 and native command queuing
  words[80] = 0x01f0; // ATA/ATAPI-4 to ATA8-ACS
  words[82] = 0x4020; // NOP and write cache supported
  words[83] = 0x7400; // FLUSH CACHE EXT, FLUSH CACHE, 48-bit address feature set
  words[84] = 0x4000;
  words[85] = 0x4020; // write cache enabled
  words[86] = 0x3400; // FLUSH CACHE EXT, FLUSH CACHE, 48-bit enabled
  words[87] = 0x4000;
  words[88] = 0x207f; // UDMA modes 0-6 supported, mode 5 selected
  words[93] = 0x0000;
  // Words 100-103: the LBA48 capacity, four 16-bit words, least significant first.
  let rest = sectors;
  for (let i = 0; i < 4; i++) {
    words[100 + i] = rest % 0x10000;
    rest = Math.floor(rest / 0x10000);
  }
  words[106] = 0x4000; // one logical sector per physical sector, 512 bytes
  words[169] = 0x0001; // DATA SET MANAGEMENT: TRIM supported
  words[217] = 0x0001; // non-rotating medium
  const bytes = new Uint8Array(512);
  for (let i = 0; i < 255; i++) {
    bytes[i * 2] = words[i]! & 0xff;
    bytes[i * 2 + 1] = words[i]! >>> 8;
  }
  // Word 255: signature 0xA5 and a checksum making the sum of all 512 bytes 0 (mod 256).
  bytes[510] = 0xa5;
  let sum = 0;
  for (let i = 0; i < 511; i++) sum += bytes[i]!;
  bytes[511] = (256 - (sum % 256)) % 256;
  return bytes;
}

/** ATA strings: space padded, two characters per word, first character in the high byte. */
function putString(words: Uint16Array, first: number, length: number, text: string): void {
  const padded = text.padEnd(length, " ").slice(0, length);
  for (let i = 0; i < length; i += 2) {
    words[first + i / 2] = (padded.charCodeAt(i) << 8) | padded.charCodeAt(i + 1);
  }
}
